"""The command surface: every verb has --help, user mistakes exit 2 without a traceback."""

from __future__ import annotations

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
