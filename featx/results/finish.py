"""The end of every command that fits runs (`featx classify`, the demo): runs to disk, leaderboard, report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featx.errors import FeatxError
from featx.results import leaderboard, records


@dataclass(frozen=True)
class FinishedResults:
    """Where the results of a command went, and the run that ranks first."""

    runs: list[dict]
    leaderboard_csv: Path
    leaderboard_md: Path
    report: Path | None
    best_run_id: str  # the top run of the first dataset (the one with most runs); datasets are never ranked together
    n_datasets: int = 1


def finish_results(results_dir, console, *, manifest=None, data_root=None, announce: bool = True) -> FinishedResults:
    """Write and print the leaderboard, then write the report; a failing report is said, never fatal.

    Parameters
    ----------
    results_dir : path-like
        A results folder holding runs/*.json.
    console : rich.console.Console
    manifest, data_root : path-like, optional
        When given, `featx manifest check`'s findings join the report's dataset section.
    announce : bool
        Print where the leaderboard and report went (the demo prints its own summary instead).

    Returns
    -------
    FinishedResults
    """
    from featx.results.report import print_subgroups, write_report

    results_dir = Path(results_dir)
    runs = records.load_runs(results_dir)
    csv_path, md_path = leaderboard.write_leaderboard(results_dir, runs)
    leaderboard.print_leaderboard(runs, console, results_dir)  # warns when the folder holds several datasets
    if announce:
        console.print(f"Leaderboard written to {csv_path} and {md_path}.")
    report = None
    try:
        report = write_report(results_dir, manifest=manifest, data_root=data_root)
    except FeatxError as error:
        console.print(f"[yellow]The report was not written: {error} The results above are saved.[/yellow]")
    except Exception as error:  # the runs are already on disk; a plotting failure must not hide them
        console.print(
            f"[yellow]The report was not written ({type(error).__name__}: {error}); the results above are saved; "
            f"retry with `featx report --results {results_dir}`.[/yellow]"
        )
    else:
        if announce:
            console.print(f"Report written to {report}.")
    rows = leaderboard.leaderboard_rows(runs)
    best = rows[0]["run_id"]  # the top run of the first dataset
    print_subgroups(next(run for run in runs if run["run_id"] == best), console)
    return FinishedResults(runs, csv_path, md_path, report, best, len(leaderboard.datasets(rows)))


def classify_runs(config, console=None) -> list[Path]:
    """Stage two into config.out_dir: every planned run fitted and written as a run JSON and a model bundle."""
    from featx.classify.stage import run_classify

    return run_classify(config, records.RunWriter(config.out_dir), console)


def classify_command(config, console) -> None:
    """`featx classify`: the runs, then the leaderboard, then the report."""
    written = classify_runs(config, console)
    out_dir = Path(config.out_dir)
    console.print(
        f"Wrote {len(written)} run(s) to {out_dir / records.RUNS_DIR} and their models to {out_dir / records.MODELS_DIR}."
    )
    finish_results(out_dir, console)
