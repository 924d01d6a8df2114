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
from featx.extract.stage import run_extract

pytestmark = pytest.mark.ray

BATCH = 8
TIME_DEPENDENT = ("created_utc", "content_sha256")
RAY = EngineConfig("ray", range_rows=2 * BATCH)


def config(manifest: Path, out: Path, engine: EngineConfig = LOCAL, data_root=None, poolings=("avg", "max")):
    return tiny_config(
        manifest,
        out,
        data_root=manifest.parent if data_root is None else data_root,
        seed=3,
        poolings=poolings,
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
    assert sorted(want_data) == sorted(got_data) and len([name for name in want_data if "embeddings/" in name]) == 2
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


# ---------------------------------------------------------------- shards (--ray-shards)

WIDE = ("avg", "flatten")
SHARDS = EngineConfig("ray", range_rows=2 * BATCH, shards=True)


@pytest.fixture(scope="module")
def local_wide_cache(tree, tmp_path_factory) -> Path:
    return run_extract(config(tree, tmp_path_factory.mktemp("local_wide"), poolings=WIDE))[0].path


def test_ray_shards_give_the_local_engine_s_cache_and_are_removed_after_the_merge(
    ray_cluster, tree, local_wide_cache, tmp_path
):
    console = quiet()
    summary = run_extract(config(tree, tmp_path, SHARDS, poolings=WIDE), console)[0]
    assert summary.status == "built" and summary.failures == 4
    assert_bit_identical(local_wide_cache, summary.path)
    said = " ".join(console.file.getvalue().split())  # the long path may wrap
    assert f"shards in {tmp_path / 'tiny.ray-shards'} (0 already written)" in said
    assert not (tmp_path / "tiny.ray-shards").exists()


def test_a_resumed_sharded_run_submits_only_the_ranges_without_a_shard(
    ray_cluster, tree, local_wide_cache, tmp_path, monkeypatch
):
    from featx.engines.shards import ShardStore

    folder = tmp_path / "tiny.ray-shards"
    from_shards, submitted = ray_engine._rows_from_shards, []

    def killed_after_the_first_range(dataset, ranges, submit, shards, first_rows):
        rows = from_shards(dataset, ranges, submit, shards, first_rows)
        yield next(rows)  # the first range goes into the cache
        deadline = time.monotonic() + 120  # the actors write the others meanwhile
        while time.monotonic() < deadline and not all(shards.path(*r).exists() for r in ranges[1:]):
            time.sleep(0.05)
        raise KeyboardInterrupt  # the featx process stops here, as if killed: the shards stay

    monkeypatch.setattr(ray_engine, "_rows_from_shards", killed_after_the_first_range)
    with pytest.raises(KeyboardInterrupt):
        run_extract(config(tree, tmp_path, SHARDS, poolings=WIDE), quiet())
    ranges = [(lo, min(lo + 2 * BATCH, 104)) for lo in range(0, 104, 2 * BATCH)]
    store_ = ShardStore(folder, "")
    assert all(store_.path(*r).exists() for r in ranges) and n_done_of(store.partial_path(tmp_path / "tiny.h5")) == 16
    for r in (ranges[2], ranges[4]):  # as if these had not been written when the run stopped
        store_.remove(*r)

    dataset = ray_engine._dataset
    monkeypatch.setattr(ray_engine, "_rows_from_shards", from_shards)
    monkeypatch.setattr(
        ray_engine, "_dataset", lambda request, submit, *a: submitted.extend(submit) or dataset(request, submit, *a)
    )
    console = quiet()
    summary = run_extract(config(tree, tmp_path, SHARDS, poolings=WIDE), console)[0]
    assert submitted == [ranges[2], ranges[4]]  # not range 0 (in the cache), nor the ranges with a shard
    assert "(4 already written)" in " ".join(console.file.getvalue().split())
    assert summary.status == "resumed"
    assert_bit_identical(local_wide_cache, summary.path)
    assert not folder.exists()


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


def test_classify_on_ray_with_the_cli_s_default_n_jobs_runs_on_a_cluster_with_fewer_cpus_than_folds(
    ray_cluster, tmp_path, capsys
):
    from cachefactory import write_signal_cache

    features = tmp_path / "features"
    write_signal_cache(features / "tiny.h5", backbone="tiny", seed=0, feature_seed=5)
    args = ["classify", "--features", str(features), "--out", str(tmp_path / "out"), "--classifier", "logreg"]
    # --engine ray defaults to -1 cores: a fit per fold in flight, capped at the cluster's 2 CPUs (Ray's pool
    # refuses more actors than CPUs: it raised "Tried to start a pool with 3 processes" here)
    assert main([*args, "--cv", "3", "--quick", "--engine", "ray", "--ray-address", ray_cluster.address]) == 0
    out = capsys.readouterr().out
    assert "logreg 2 parallel fits x 1 BLAS thread" in out and "0 GPU(s) in the cluster: logreg no GPU" in out


def test_on_a_cluster_with_gpus_xgboost_fits_reserve_a_share_of_one_and_fall_back_to_cpu_without_cuda(
    ray_cluster, tmp_path, monkeypatch
):
    """The session's Ray has no GPU (tests hide CUDA): it is reported with one, and the GPU request is noted
    and left out when the actors start (nothing here could grant it); the rest of the remote args go through."""
    from cachefactory import write_signal_cache
    from ray.util.joblib.ray_backend import RayBackend

    from featx.classify import search
    from featx.classify.stage import ClassifyConfig
    from featx.results.finish import classify_runs

    features = tmp_path / "features"
    write_signal_cache(features / "tiny.h5", backbone="tiny", seed=0, feature_seed=5)
    alive_nodes, configure, run_task = ray_engine._alive_nodes, RayBackend.configure, search._run_task
    monkeypatch.setattr(ray_engine, "_alive_nodes", lambda ray: [{**node, "GPU": 1.0} for node in alive_nodes(ray)])
    asked, envs = [], tmp_path / "envs"

    def noting_configure(self, n_jobs=1, *args, **kwargs):
        asked.append((n_jobs, self.ray_remote_args))
        self.ray_remote_args = {k: v for k, v in (self.ray_remote_args or {}).items() if k != "num_gpus"} or None
        return configure(self, n_jobs, *args, **kwargs)

    def noting_run_task(*args):  # pickled by value: what the fit's process was started with
        with open(envs, "a") as log:
            log.write(f"{os.environ.get('TF_FORCE_GPU_ALLOW_GROWTH')}\n")
        return run_task(*args)

    monkeypatch.setattr(RayBackend, "configure", noting_configure)
    monkeypatch.setattr(search, "_run_task", noting_run_task)
    runs, console = {}, quiet()
    for engine, n_jobs in (("local", 2), ("ray", -1)):
        out = tmp_path / engine
        envs.unlink(missing_ok=True)
        config = ClassifyConfig(
            features_dir=features, out_dir=out, classifiers=("xgboost",), cv=3, n_jobs=n_jobs, quick=True,
            engine=EngineConfig(engine), image_cv_all=True,  # xgboost's image-fold audit fits, asked for
        )  # fmt: skip
        classify_runs(config, console if engine == "ray" else quiet())
        runs[engine] = json.loads((out / "runs" / "tiny__avg__xgboost.json").read_text())
    # the search's fits: 2 folds in flight on 1 GPU; the audit's image-fold fits then ask for no GPU
    assert [(n_jobs, (args or {}).get("num_gpus")) for n_jobs, args in asked] == [(2, 0.5), (2, None)]
    assert set(envs.read_text().split()) == {"true"}  # every search fit ran in an actor started with the GPU env
    assert "1 GPU(s) in the cluster: xgboost 0.5 GPU per fit (2 in flight on 1 GPU(s))" in console.file.getvalue()
    for key in ("best_params", "cv_auc_mean", "threshold", "test", "test_predictions"):
        assert runs["local"][key] == runs["ray"][key], key  # no CUDA in the actors: XGBoost fell back to cpu


# ---------------------------------------------------------------- predict


def test_predict_on_ray_writes_the_local_engine_s_csv_from_a_folder_or_a_url_data_root(
    ray_cluster, tree, local_cache, tmp_path
):
    from featx.classify.stage import ClassifyConfig
    from featx.results.finish import classify_runs
    from featx.results.predict import predict_command

    config = ClassifyConfig(
        features_dir=local_cache.parent, out_dir=tmp_path, classifiers=("logreg",), poolings=("avg",), cv=2, quick=True
    )
    classify_runs(config, quiet())
    bundle = tmp_path / "models" / "tiny__avg__logreg.joblib"
    written = {}
    ray = EngineConfig("ray", actors=1, range_rows=2 * BATCH)
    url = f"file://{tree.parent}"  # the actors read the manifest's images through fsspec
    for name, engine, data_root in (("local", LOCAL, None), ("ray", ray, None), ("ray_url", ray, url)):
        written[name] = tmp_path / f"{name}.csv"
        predict_command(bundle, [str(tree)], data_root, written[name], False, BATCH, quiet(), engine=engine)
    local = written["local"].read_text()
    assert local == written["ray"].read_text() == written["ray_url"].read_text()
    assert len(local.splitlines()) == 1 + 104 and local.count("not an image file") == 1  # every row, errors kept
