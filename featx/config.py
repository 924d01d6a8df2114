"""Cache locations, usable cores and how featx was started: the only place featx reads the environment."""

from __future__ import annotations

import os
from pathlib import Path


def keras_home() -> Path:
    """Where Keras keeps downloaded weights (KERAS_HOME, else ~/.keras)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()


def keras_models_dir() -> Path:
    """The folder Keras's get_file(cache_subdir='models') reads and writes."""
    return keras_home() / "models"


def kaggle_credentials_present() -> bool:
    """True when kagglehub can authenticate (env vars or ~/.kaggle/kaggle.json)."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")).expanduser()
    return (config_dir / "kaggle.json").is_file()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS says, else every core), at least one."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """Decode threads: one per usable core, at least one."""
    return usable_cores()


def via_make() -> bool:
    """True when the Makefile started featx (it exports FEATX_VIA_MAKE=1): errors then name make variables."""
    return os.environ.get("FEATX_VIA_MAKE") == "1"


def featx_command() -> str:
    """How to type featx in this shell: `featx` when it is on PATH, else the venv's script (`.venv/bin/featx`,
    relative to the working folder where it can be) or `python -m featx`: printed `Next:` lines must run as shown."""
    import shutil
    import sys

    if shutil.which("featx"):
        return "featx"
    script = Path(sys.executable).parent / "featx"
    if script.is_file():
        try:
            return str(script.relative_to(Path.cwd()))
        except ValueError:
            return str(script)
    return f"{Path(sys.executable).name} -m featx"
