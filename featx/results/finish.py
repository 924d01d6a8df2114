"""The end of every command that fits runs (`featx classify`, the demo): runs to disk, leaderboard, report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featx.errors import FeatxError
from featx.files import atomic_write_bytes
from featx.results import leaderboard, records

LEADERBOARD_NAMES = ("leaderboard.csv", "leaderboard.md")  # as leaderboard.write_leaderboard names them
REPORT_NAME = "report.html"  # report.write_report's default
# results/.finished: the runs fingerprint the leaderboard and report were last written from (this module's file)
FINISHED_NAME = ".finished"


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

    When the leaderboard files and the report were written from exactly the run records there are
    now (results/.finished holds their fingerprint: a second `featx classify` that reused every
    run), the leaderboard is printed and nothing is rewritten.

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
    csv_path, md_path, report_path = (results_dir / name for name in (*LEADERBOARD_NAMES, REPORT_NAME))
    if _up_to_date(results_dir, (csv_path, md_path, report_path)):
        # nothing changed since they were written (every run reused): printing is enough
        leaderboard.print_leaderboard(runs, console)
        if announce:
            console.print(
                f"No run changed: {csv_path}, {md_path.name} and {report_path} are up to date "
                f"(`featx report --results {results_dir}` rewrites the report)."
            )
        best = leaderboard.leaderboard_rows(runs)[0]["run_id"]
        return FinishedResults(runs, csv_path, md_path, report_path, best)
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
        atomic_write_bytes(results_dir / FINISHED_NAME, _runs_fingerprint(results_dir).encode())
        if announce:
            console.print(f"Report written to {report}.")
    rows = leaderboard.leaderboard_rows(runs)
    best = rows[0]["run_id"]  # the top run of the first dataset
    print_subgroups(next(run for run in runs if run["run_id"] == best), console)
    return FinishedResults(runs, csv_path, md_path, report, best, len(leaderboard.datasets(rows)))


def _runs_fingerprint(results_dir: Path) -> str:
    """sha256 of every run record's name, size and mtime: it moves when a run is written, replaced or removed."""
    import hashlib

    entries = sorted(
        f"{path.name}:{info.st_size}:{info.st_mtime_ns}"
        for path in (results_dir / records.RUNS_DIR).glob("*.json")
        for info in (path.stat(),)
    )
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _up_to_date(results_dir: Path, outputs) -> bool:
    """True when the outputs exist and were written from exactly the runs there are now."""
    try:
        written = (results_dir / FINISHED_NAME).read_text(encoding="utf-8").strip()
        return all(Path(output).is_file() for output in outputs) and written == _runs_fingerprint(results_dir)
    except OSError:
        return False


def classify_runs(config, console=None, writer: records.RunWriter | None = None) -> list[Path]:
    """Stage two into config.out_dir: every planned run as a run JSON and a model bundle, fitted unless a run
    with the same inputs is already there (records.RunWriter.reusable)."""
    from featx.classify.stage import run_classify
    from featx.results.validation import score_externals

    paths = run_classify(config, writer or records.RunWriter(config.out_dir), console)
    score_externals(config, paths, console)  # --external: each saved model on the other datasets' caches
    return paths


def classify_command(config, console) -> None:
    """`featx classify` (and featx.classify): the runs, then the leaderboard and the report from every run in
    the folder; with config.mlflow, this command's runs logged to MLflow (results/tracking.py)."""
    from featx.config import featx_command

    if config.mlflow:
        from featx.results.tracking import import_mlflow

        import_mlflow()  # a missing MLflow is said before the first fit
    out_dir = Path(config.out_dir)
    writer = records.RunWriter(out_dir)
    try:
        paths = classify_runs(config, console, writer)
    except KeyboardInterrupt:
        console.print(
            f"Interrupted: the {len(writer.saved)} run(s) fitted before it are kept in {out_dir / records.RUNS_DIR}; "
            "run the same command to continue (kept runs are not fitted again).",
            soft_wrap=True,
        )
        raise
    console.print(
        f"{len(paths)} run(s) in {out_dir / records.RUNS_DIR}, their models in {out_dir / records.MODELS_DIR}."
    )
    finished = finish_results(out_dir, console)
    if config.mlflow:
        from featx.results.tracking import log_runs

        log_runs(out_dir, paths, config.mlflow, console)
    console.print(
        f"Next: {featx_command()} predict --model {records.bundle_path(out_dir, finished.best_run_id)} IMAGES "
        "(files, folders or a manifest CSV)",
        soft_wrap=True,
        highlight=False,
    )
