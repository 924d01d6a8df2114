"""The command surface: every verb has --help, user mistakes exit 2 without a traceback."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from featx.cli import build_parser, main

VERBS = [
    ["backbones"],
    ["manifest", "scan"],
    ["manifest", "check"],
    ["manifest", "nih"],
    ["fetch"],
    ["extract"],
    ["classify"],
    ["leaderboard"],
    ["report"],
    ["predict"],
    ["demo"],
    ["bench", "extract"],
    ["bench", "classify"],
    ["bench", "compare"],
]


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v))
def test_every_command_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*verb, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: featx " + " ".join(verb))


def test_predict_help_warns_about_untrusted_bundles(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--help"])
    assert "trusted source" in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: featx" in capsys.readouterr().out


def test_help_does_not_import_tensorflow():
    code = "import sys; from featx.cli import build_parser; build_parser(); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_bad_integer_is_a_usage_error_not_a_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["classify", "--cv", "zero"])
    assert exit_info.value.code == 2
    assert "positive integer" in capsys.readouterr().err


# ---------------------------------------------------------------- issue 8, case 14: make

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _make(*args) -> str:
    """`make -n` (print, never run) in the repository, with the shared venv so nothing is installed."""
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "-C", str(REPO), *args, f"VENV={sys.prefix}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_make_passes_force_n_jobs_and_the_other_options():
    """The Makefile had no force= or n_jobs= variables: `make extract force=1` could not rebuild a cache."""
    extract = _make("extract", "force=1", "image_size=64", "seed=3", "limit=10").splitlines()[-1]
    assert extract.endswith("--image-size 64 --limit 10 --seed 3 --force")
    assert "--force" not in _make("extract", "force=0").splitlines()[-1]
    classify = _make("classify", "n_jobs=2", "poolings=avg,max", "quick=1", "threshold=f1").splitlines()[-1]
    assert "--n-jobs 2" in classify and "--pooling avg,max" in classify and classify.endswith("--quick")
    assert "--threshold-rule f1" in classify
    assert "--model m.joblib imgs --out p.csv" in _make("predict", "model=m.joblib", "images=imgs", "out=p.csv")


def test_make_help_lists_the_variables():
    done = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "help"], capture_output=True, text=True)
    variables = done.stdout.split("Variables")[1]
    for name in ("force=1", "n_jobs=", "backbone=", "backbones=", "pooling=", "poolings=", "cv=", "results="):
        assert f"\n  {name}" in variables, name
    # every variable a recipe uses is listed
    makefile = (REPO / "Makefile").read_text()
    used = set(re.findall(r"\$\((?:if |call yes,)?\$?\(?([a-z_]+)\)", makefile))
    listed = set(re.findall(r"^#: ([a-z_]+)=", makefile, flags=re.M))
    assert used - {"yes", "strip", "filter", "call", "if"} <= listed


@pytest.mark.parametrize("verb", ["extract", "classify", "predict"])
def test_every_option_of_the_make_targets_has_a_make_variable(verb):
    """Each option of `featx extract/classify/predict` maps to a listed Makefile variable that the target passes on."""
    from featx.cli import MAKE_VARIABLES

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    flags = [f for action in sub.choices[verb]._actions for f in action.option_strings if f.startswith("--")]
    table = {**MAKE_VARIABLES[""], **MAKE_VARIABLES.get(verb, {})}
    listed = set(re.findall(r"^#: ([a-z_]+)=", (REPO / "Makefile").read_text(), flags=re.M))
    for flag in flags:
        if flag == "--help" or (verb == "predict" and flag in ("--json", "--data-root")):
            continue  # predict's JSON and manifest-root choices are for scripts: the target writes CSV
        assert flag in table, flag
        name = table[flag].split("=")[0]
        assert name in listed, (flag, name)
        value = "7" if table[flag].endswith("=N") else "1" if table[flag].endswith("=1") else "x"
        command = _make(verb, f"{name}={value}", "model=m", "images=i").splitlines()[-1]
        assert f" {flag}" in command, (flag, name, command)


def test_errors_under_make_name_the_make_variable(tmp_path, capsys, monkeypatch):
    """Under make, "pass --manifest a CSV file" named a flag the user never typed."""
    args = ["extract", "--backbone", "tiny", "--manifest", str(tmp_path / "m.csv"), "--data-root", str(tmp_path)]
    assert main(args) == 2
    assert "(make:" not in capsys.readouterr().err
    monkeypatch.setenv("FEATX_VIA_MAKE", "1")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("(make: manifest=CSV).") and len(err.splitlines()) == 1


def test_make_hint_maps_each_flag_for_its_command():
    from featx.cli import make_hint

    stale = "Feature file 'x.h5' is stale; rebuild it with --force or leave it out with --backbone."
    assert make_hint(stale, "extract").endswith("--backbone (make: force=1, backbone=NAME).")
    assert make_hint(stale, "classify").endswith("--backbone (make: force=1, backbones=...).")
    quoted = "No features in 'f'; make them with `featx extract --backbone NAME --out f` first."
    assert make_hint(quoted, "classify").endswith("first (make: backbone=NAME, features=DIR).")
    assert make_hint("Nothing to change.", "classify") == "Nothing to change."
