"""Run the featx CLI with a pause point, so a test can send Ctrl-C (SIGINT) at a known moment.

    python tests/interrupt_driver.py MARKER POINT featx-args...

The first time the code reaches POINT it writes the file MARKER and waits (up to 60 s) for
the signal: the test polls for MARKER, sends SIGINT to this process, and the signal lands
inside POINT. Under featx.runtime.interrupts_deferred the wait ends as soon as the interrupt
is pending and the code goes on, as it would have without the pause. The exit code is
featx.cli.main's.

POINT is one of:
  xgboost   inside XGBoost's ctypes data-iterator callback (DataIter._next_wrapper)
  logreg    inside LogisticRegression.fit
  dense     inside DenseHead's training (the heads trainer's epoch loop)
  extract   inside the cache writer's write of a chunk
  report    inside the rendering of a report plot
  predict   inside the classifier's scoring of a batch
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path


def _pause(marker: Path) -> None:
    from featx.runtime import interrupt_pending

    marker.write_text("reached\n")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not interrupt_pending():
        time.sleep(0.01)  # a KeyboardInterrupt raised here is Ctrl-C landing inside the point


def _install(point: str, marker: Path) -> None:
    owner, name = _target(point)
    original = getattr(owner, name)
    reached = []

    def paused(*args, **kwargs):
        if not reached:
            reached.append(True)
            _pause(marker)
        return original(*args, **kwargs)

    setattr(owner, name, paused)


# POINT -> (module, class or None for a module-level function, attribute): imported only when asked for
POINTS = {
    "xgboost": ("xgboost.core", "DataIter", "_next_wrapper"),
    "logreg": ("sklearn.linear_model", "LogisticRegression", "fit"),
    "dense": ("featx.classify.estimators", "_HeadsTrainer", "train"),
    "extract": ("featx.extract.store", "CacheWriter", "write"),
    "report": ("featx.results.report", None, "_render"),
    "predict": ("featx.results.predict", None, "class_probabilities"),
}


def _target(point: str):
    if point not in POINTS:
        raise SystemExit(f"unknown pause point {point!r}")
    module_name, class_name, name = POINTS[point]
    owner = importlib.import_module(module_name)
    return (getattr(owner, class_name) if class_name else owner), name


if __name__ == "__main__":
    marker_path, pause_point, *featx_args = sys.argv[1:]
    _install(pause_point, Path(marker_path))
    from featx.cli import main

    sys.exit(main(featx_args))
