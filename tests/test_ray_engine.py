"""Stage one on the session's local Ray: bit-identical to the local engine, through a killed actor and a killed driver."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from imagetree import make_tree
from raycluster import alive, command_line
from rich.console import Console
from tinyextract import n_done_of, tiny_args, tiny_config

from featx.cli import main
from featx.engines import LOCAL, EngineConfig, ray_engine
from featx.extract import store
from featx.extract.stage import ExtractConfig, run_extract

pytestmark = pytest.mark.ray

BATCH = 8
TIME_DEPENDENT = ("created_utc", "content_sha256")
RAY = EngineConfig("ray", range_rows=2 * BATCH)


def config(manifest: Path, out: Path, engine: EngineConfig = LOCAL, data_root=None) -> ExtractConfig:
    return tiny_config(
        manifest,
        out,
        data_root=manifest.parent if data_root is None else data_root,
        seed=3,
        poolings=("avg", "max"),
        batch_size=BATCH,
        workers=1,
        engine=engine,
    )


def plain(value):
    value = np.asarray(value).tolist()
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value.decode() if isinstance(value, bytes) else value


def contents(path: Path) -> tuple[dict, dict]:
    """Every dataset of a cache (as arrays) and its attributes but the creation time (and the hash sealing it)."""
    found = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        # content_sha256 seals created_utc with the rest, so it differs between any two builds
        attrs = {key: plain(value) for key, value in handle.attrs.items() if key not in TIME_DEPENDENT}
    return found, attrs


def assert_bit_identical(want: Path, got: Path, data_root: str | None = None) -> None:
    """Every dataset and attribute equal (the data root's, when given, is checked against that)."""
    (want_data, want_attrs), (got_data, got_attrs) = contents(want), contents(got)
    if data_root is not None:  # the data root, and the command that rebuilds the cache, name it differently
        assert got_attrs.pop("data_root") == data_root and data_root in got_attrs.pop("extract_args")
        want_attrs.pop("data_root"), want_attrs.pop("extract_args")
    assert sorted(want_data) == sorted(got_data) and "embeddings/max" in want_data
    for name, a in want_data.items():
        b = got_data[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert (a.tolist() == b.tolist()) if a.dtype.kind == "O" else (a.tobytes() == b.tobytes()), name
    assert want_attrs == got_attrs


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """100 32-px PNGs plus four unreadable files (rows 4, 30, 56, 82 or so)."""
    return make_tree(tmp_path_factory.mktemp("ray_tree") / "data", n=100, size=32, bad=True)


@pytest.fixture(scope="module")
def local_cache(tree, tmp_path_factory) -> Path:
    return run_extract(config(tree, tmp_path_factory.mktemp("local")))[0].path


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def test_ray_extract_through_a_file_url_is_bit_identical_to_the_local_engine_and_quiet(
    ray_cluster, tree, local_cache, tmp_path, capfd
):
    console = quiet()
    url = f"file://{tree.parent}"  # the actors read the images through fsspec
    summary = run_extract(config(tree, tmp_path, RAY, data_root=url), console)[0]
    assert summary.status == "built" and summary.failures == 4
    assert_bit_identical(local_cache, summary.path, data_root=url)
    assert "Ray: 7 range(s) of up to 16 rows on 2 Ray actor(s) of 1 CPU each" in console.file.getvalue()
    out, err = capfd.readouterr()
    assert err == "" and "ray" not in out.lower()  # Ray's own lines stay off the terminal


def kill_an_actor_while_it_embeds(cluster, killed: list, done: threading.Event) -> None:
    """SIGKILL the first actor seen running a range (Ray titles the process "...RangeEmbedder)).submit")."""
    actors: list[int] = []
    polls = 0
    while not done.is_set() and not killed:
        if polls % 50 == 0:  # look for actor processes now and then; their titles every 2 ms
            actors = [pid for pid in cluster.started() if "RangeEmbedder" in command_line(pid)]
        polls += 1
        for pid in actors:
            if command_line(pid).endswith(".submit"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
        time.sleep(0.002)


def test_an_actor_killed_mid_range_is_replaced_and_the_cache_is_still_bit_identical(
    ray_cluster, tree, local_cache, tmp_path, monkeypatch
):
    workers, killed, done = [], [], threading.Event()
    ordered_rows = ray_engine._ordered_rows

    def recording(dataset, ranges):
        for rows in ordered_rows(dataset, ranges):
            workers.append(int(rows.worker.split("@")[0]))
            yield rows

    monkeypatch.setattr(ray_engine, "_ordered_rows", recording)
    killer = threading.Thread(target=kill_an_actor_while_it_embeds, args=(ray_cluster, killed, done))
    killer.start()
    try:
        one_actor = EngineConfig("ray", actors=1, range_rows=BATCH)
        summary = run_extract(config(tree, tmp_path, one_actor), quiet())[0]
    finally:
        done.set()
        killer.join()
    assert killed and not alive(killed[0])
    assert set(workers) - set(killed)  # the range it held was redone by the actor Ray started in its place
    assert_bit_identical(local_cache, summary.path)


def test_a_killed_ray_driver_resumes_with_the_same_command(ray_cluster, tree, local_cache, tmp_path):
    out = tmp_path / "features"
    args = tiny_args(
        tree, out, "--seed", "3", "--pooling", "avg,max", "--batch-size", str(BATCH), "--workers", "1",
        "--engine", "ray", "--ray-address", ray_cluster.address, "--ray-range-rows", str(BATCH), "--ray-actors", "1",
    )  # fmt: skip
    partial = store.partial_path(store.cache_path(out, "tiny"))
    driver = subprocess.Popen([sys.executable, "-m", "featx.cli", *args], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.poll() is None and not n_done_of(partial):
            time.sleep(0.01)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait()
    assert driver.returncode == -signal.SIGKILL, "the driver ended before it could be killed"
    left_at = n_done_of(partial)
    assert 0 < left_at < 104

    assert main(args) == 0  # the same command, in this process (which holds the session's Ray)
    assert not partial.exists() and not store.lock_path(store.cache_path(out, "tiny")).exists()
    assert_bit_identical(local_cache, store.cache_path(out, "tiny"))


# ---------------------------------------------------------------- stage two


def test_classify_on_ray_gives_the_local_engine_s_selection_thresholds_and_test_metrics(
    ray_cluster, tmp_path, monkeypatch
):
    from cachefactory import write_signal_cache

    from featx.classify import search
    from featx.classify.stage import ClassifyConfig
    from featx.results.finish import classify_runs

    features = tmp_path / "features"
    write_signal_cache(features / "tiny.h5", backbone="tiny", seed=0, feature_seed=5)
    pids = tmp_path / "fold_pids"
    run_task = search._run_task

    def recording_run_task(*args):  # pickled by value: notes whether a Ray worker fits the fold's grid points
        import ray
        from ray._private.worker import WORKER_MODE

        in_ray_worker = ray.is_initialized() and ray.get_runtime_context().worker.mode == WORKER_MODE
        with open(pids, "a") as log:
            log.write(f"{os.getpid()}:{in_ray_worker}\n")
        return run_task(*args)

    monkeypatch.setattr(search, "_run_task", recording_run_task)
    runs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        pids.unlink(missing_ok=True)
        for classifiers, quick in ((("logreg",), False), (("xgboost",), True)):
            config = ClassifyConfig(
                features_dir=features,
                out_dir=out,
                classifiers=classifiers,
                cv=3,
                n_jobs=2,
                quick=quick,
                engine=EngineConfig(engine),
            )
            classify_runs(config, quiet())
        runs[engine] = {path.name: json.loads(path.read_text()) for path in sorted((out / "runs").glob("*.json"))}
        if engine == "ray":
            fitters = set(pids.read_text().split())
            assert fitters and all(f.endswith(":True") and not f.startswith(f"{os.getpid()}:") for f in fitters)

    assert sorted(runs["local"]) == ["tiny__avg__logreg.json", "tiny__avg__xgboost.json"] == sorted(runs["ray"])
    for name, local in runs["local"].items():
        ray = runs["ray"][name]
        assert (local["config"].pop("engine"), ray["config"].pop("engine")) == ("local", "ray")
        for key in ("config", "best_params", "cv_auc_mean", "cv_auc_std", "threshold", "test", "test_predictions"):
            assert local[key] == ray[key], (name, key)
        for key in ("params", "mean_test_score", "std_test_score", "rank_test_score"):
            assert local["cv_results"][key] == ray["cv_results"][key], (name, key)
    assert len(runs["local"]["tiny__avg__logreg.json"]["cv_results"]["params"]) == 14  # the full logreg grid


# ---------------------------------------------------------------- predict


def test_predict_on_ray_writes_the_local_engine_s_csv(ray_cluster, tree, local_cache, tmp_path):
    from featx.classify.stage import ClassifyConfig
    from featx.results.finish import classify_runs
    from featx.results.predict import predict_command

    config = ClassifyConfig(
        features_dir=local_cache.parent, out_dir=tmp_path, classifiers=("logreg",), poolings=("avg",), cv=2, quick=True
    )
    classify_runs(config, quiet())
    bundle = tmp_path / "models" / "tiny__avg__logreg.joblib"
    written = {}
    for engine in (LOCAL, EngineConfig("ray", actors=1, range_rows=2 * BATCH)):
        written[engine.name] = tmp_path / f"{engine.name}.csv"
        predict_command(bundle, [str(tree)], None, written[engine.name], False, BATCH, quiet(), engine=engine)
    local, ray = written["local"].read_text(), written["ray"].read_text()
    assert local == ray
    assert len(local.splitlines()) == 1 + 104 and local.count("not an image file") == 1  # every row, errors kept
