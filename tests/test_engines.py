"""The engines' shared work unit and the engine switch, without Ray (tests/test_ray_engine.py runs Ray)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from featx.cli import main
from featx.data.images import Batch
from featx.engines import EngineConfig, FitCluster, check_engine, get_engine, range_rows
from featx.engines.local import LocalEngine
from featx.engines.work import Rows, merge_rows, row_ranges
from featx.errors import FeatxError
from featx.extract.work import embed_batches


def test_ranges_lie_on_one_grid_and_a_resume_starts_where_rows_are_missing():
    assert row_ranges(0, 100, 32) == [(0, 32), (32, 64), (64, 96), (96, 100)]
    # a run killed at row 40 submits the rest of its range, then the same ranges as before
    assert row_ranges(40, 100, 32) == [(40, 64), (64, 96), (96, 100)]
    assert row_ranges(64, 100, 32) == [(64, 96), (96, 100)]
    assert row_ranges(100, 100, 32) == []


def test_range_rows_is_a_whole_number_of_batches():
    assert range_rows(EngineConfig("ray"), 32) == 1024
    assert range_rows(EngineConfig("ray", range_rows=48), 16) == 48
    with pytest.raises(FeatxError, match=r"--ray-range-rows must be a positive multiple of the batch size \(16\)"):
        range_rows(EngineConfig("ray", range_rows=40), 16)


def fake_batches(n_rows: int, batch_size: int, failed=()):
    for start in range(0, n_rows, batch_size):
        rows = range(start, min(start + batch_size, n_rows))
        ok = np.array([row not in failed for row in rows])
        images = np.array([np.full((2, 2, 3), row, dtype=np.float32) for row in rows])
        errors = [(f"img{row}", f"reason {row}") for row in rows if row in failed]
        yield Batch(start=start, images=images, ok=ok, errors=errors, sha256=[f"h{row}" for row in rows])


def row_sums(images):
    return {"avg": images.sum(axis=(1, 2, 3))[:, None] / 12}


def test_each_backbone_embeds_from_its_own_first_row_and_errors_keep_their_rows():
    seen = []

    def recording(images):
        seen.append(len(images))
        return row_sums(images)

    rows = list(embed_batches(fake_batches(10, 4, failed={5}), {"a": recording, "b": row_sums}, {"a": 0, "b": 6}))
    assert [(r.start, r.stop) for r in rows] == [(0, 4), (4, 8), (8, 10)]
    assert seen == [4, 4, 2]  # whole batches
    assert "b" not in rows[0].embeddings and rows[1].embeddings["b"][0] == 6  # b resumes mid-batch, as before
    assert rows[1].errors == [(5, "reason 5")]
    merged = merge_rows(rows[1:], worker="w")
    assert (merged.start, merged.stop, merged.worker) == (4, 10, "w")
    first, embeddings, ok, errors, sha256 = merged.part("b")
    assert first == 6 and embeddings["avg"][:, 0].tolist() == [6, 7, 8, 9]
    assert ok.tolist() == [True] * 4 and errors == [] and sha256 == ["h6", "h7", "h8", "h9"]
    assert merged.part("a")[3] == [(5, "reason 5")]
    assert Rows(0, np.ones(2, bool), [], {}).part("a") is None


def test_an_unknown_engine_is_refused_in_one_sentence():
    with pytest.raises(FeatxError, match=r"The 'engine' parameter must be one of \['local', 'ray'\]. Got 'rya'"):
        check_engine(EngineConfig("rya"))
    assert isinstance(get_engine(EngineConfig()), LocalEngine)


@pytest.fixture
def without_ray(monkeypatch):
    """Ray not installed: importing it fails the way a missing package does."""
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)


def test_the_ray_engine_without_the_extra_names_the_install_command(without_ray):
    with pytest.raises(FeatxError, match=r"^The Ray engine needs Ray, which is not installed; install it with "):
        check_engine(EngineConfig("ray"))


def test_featx_extract_engine_ray_without_the_extra_exits_2_with_one_sentence(tmp_path, without_ray, capsys):
    from imagetree import make_tree

    manifest = make_tree(tmp_path / "data", n=8)
    code = main(
        ["extract", "--backbone", "tiny", "--weights", "random", "--manifest", str(manifest)]
        + ["--data-root", str(manifest.parent), "--out", str(tmp_path / "f"), "--engine", "ray"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "featx: error: The Ray engine needs Ray, which is not installed; install it with "
        "pip install 'featx[ray]' or use --engine local."
    ]
    assert not (tmp_path / "f" / "tiny.h5").exists()


def test_gpu_actors_take_their_node_s_cores_per_gpu_and_cpu_actors_one_core():
    from featx.engines.ray_engine import actor_layout

    head, gpu_node = {"CPU": 16.0}, {"CPU": 96.0, "GPU": 8.0}
    layout = actor_layout([head, gpu_node, gpu_node], EngineConfig("ray"))
    assert (layout.actors, layout.cpus, layout.gpus) == (16, 11.0, 1.0)  # (96 - 1 spare) // 8 on each GPU node
    assert layout.describe() == "16 Ray actor(s) of 11 CPU + 1 GPU each (cluster: 208 CPUs, 16 GPUs)"
    assert actor_layout([gpu_node], EngineConfig("ray", cpus_per_actor=12)).actors == 8
    assert (actor_layout([{"CPU": 2.0}], EngineConfig("ray")).actors, layout.decode_threads) == (2, 11)


def test_actors_that_do_not_fit_the_cluster_are_refused_before_ray_waits_for_them():
    from featx.engines.ray_engine import actor_layout

    with pytest.raises(FeatxError, match=r"^3 Ray actor\(s\) of 1 CPU each .* do not fit: the cluster's nodes hold 2"):
        actor_layout([{"CPU": 2.0}], EngineConfig("ray", actors=3))
    with pytest.raises(FeatxError, match="hold 14 such actor"):  # 7 actors of 13 cores per 96-core node
        actor_layout([{"CPU": 96.0, "GPU": 8.0}] * 2, EngineConfig("ray", cpus_per_actor=13))


# ---------------------------------------------------------------- stage two: what the fits reserve


@pytest.mark.parametrize(("gpus", "fits", "share"), [(1, 5, 0.2), (2, 5, 1 / 3), (4, 4, 1.0), (8, 5, 1.0), (0, 5, 0.0)])
def test_a_round_s_fits_share_the_cluster_s_gpus_and_all_fit_at_once(gpus, fits, share):
    cluster = FitCluster("ray", cpus=16, gpus=gpus)
    assert cluster.gpu_share(True, fits) == pytest.approx(share)
    if share:  # ceil(fits / gpus) fits on a GPU, so every fit of the round is placed at once
        assert math.floor(1 / cluster.gpu_share(True, fits) + 1e-9) * gpus >= fits
        assert cluster.remote_args(True, fits)["num_gpus"] == pytest.approx(share)
    assert cluster.gpu_share(False, fits) == 0.0 and cluster.remote_args(False, fits) is None


def test_the_registry_decides_which_classifiers_take_a_gpu_and_the_cluster_caps_parallel_fits():
    from featx.classify import registry

    assert {name for name, spec in registry.CLASSIFIERS.items() if spec.uses_gpu} == {"xgboost", "dense"}
    gpu_cluster, cpu_cluster, small = FitCluster("ray", 64, 2), FitCluster("ray", 64, 0), FitCluster("ray", 2, 0)
    # the dense head fits one fold at a time on CPUs, and every fold at once where the cluster has GPUs
    assert registry.cpu_split("dense", -1, 5, cpu_cluster).parallel_fits == 1
    assert registry.cpu_split("dense", -1, 5, gpu_cluster).parallel_fits == 5
    assert registry.cpu_split("logreg", -1, 5, gpu_cluster).parallel_fits == 5
    # Ray's pool refuses more actors than the cluster has CPUs
    assert registry.cpu_split("xgboost", -1, 5, small).parallel_fits == 2
    assert registry.cpu_split("logreg", 8, 5, small).parallel_fits == 5  # a core count is this machine's: unchanged


def test_xgboost_s_device_is_decided_where_the_fit_runs(monkeypatch):
    from featx.classify import registry
    from featx.classify.estimators import EarlyStoppingXGB

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(80, 4)).astype(np.float32), np.repeat([0, 1], 40)
    X[y == 1] += 1.0
    candidates = [{"max_depth": 2, "n_estimators": 5}]
    registry.xgboost_device.cache_clear()  # this process has no GPU (tests hide it): the probe says cpu
    try:
        built_on_a_gpu_driver = EarlyStoppingXGB(device="cuda")
        got = registry.CLASSIFIERS["xgboost"].candidate_probabilities(built_on_a_gpu_driver, candidates, X, y, X)
        assert built_on_a_gpu_driver.device == "cpu"
    finally:
        registry.xgboost_device.cache_clear()
    want = registry.own_candidate_probabilities(EarlyStoppingXGB(device="cpu"), candidates, X, y, X)
    assert np.array_equal(got[0], want[0])
    wrapped, _ = registry.build_classifier("xgboost", "multilabel", 3)
    monkeypatch.setattr(registry, "xgboost_device", lambda: "cpu")
    wrapped.set_params(estimator__device="cuda")
    labels = np.stack([y, 1 - y, y], axis=1)
    registry.CLASSIFIERS["xgboost"].candidate_probabilities(wrapped, [{}], X, labels, X)
    assert wrapped.get_params()["estimator__device"] == "cpu"


# ---------------------------------------------------------------- shard files (--ray-shards)


def test_a_shard_reads_back_the_rows_written_and_a_shard_of_another_plan_is_never_used(tmp_path):
    from featx.engines.shards import ShardStore

    rows = merge_rows(
        list(embed_batches(fake_batches(8, 4, failed={5}), {"a": lambda x: {"p": x[:, 0, 0, :]}}, {"a": 2}))
    )
    shards = ShardStore(tmp_path / "a.ray-shards", "plan 1")
    shards.prepare()
    shards.write(rows)
    back = shards.read(0, 8)
    assert (back.start, back.errors, back.sha256) == (rows.start, rows.errors, rows.sha256)
    assert back.ok.tolist() == rows.ok.tolist() and back.embeddings["a"][0] == 2
    assert back.embeddings["a"][1]["p"].tobytes() == rows.embeddings["a"][1]["p"].tobytes()
    assert shards.covers(0, 8, {"a": 2}) and shards.covers(0, 8, {"a": 4}) and not shards.covers(0, 8, {"a": 0})
    assert not list(shards.folder.glob("*.partial"))
    ShardStore(shards.folder, "plan 2").prepare()  # other weights, size or rows: the old shards go
    assert not shards.covers(0, 8, {"a": 2})


def test_a_shard_half_merged_before_a_kill_gives_each_backbone_only_the_rows_its_cache_lacks():
    from featx.engines.shards import trimmed

    forwards = {key: (lambda x: {"p": x[:, 0, 0, :]}) for key in ("a", "b")}
    rows = merge_rows(list(embed_batches(fake_batches(8, 4), forwards, {"a": 0, "b": 0})))
    # the featx process wrote rows 0..8 to a's cache, then was killed before b's: a needs none of them now
    resumed = trimmed(rows, {"a": 8, "b": 0})
    assert resumed.part("a") is None and resumed.part("b")[0] == 0 and len(resumed) == 8
    half = trimmed(rows, {"a": 4, "b": 6})
    assert (half.start, half.part("a")[0], half.part("b")[0], len(half.part("b")[1]["p"])) == (4, 4, 6, 2)


def test_ray_shards_without_the_ray_engine_are_refused_in_one_sentence():
    with pytest.raises(FeatxError, match=r"^--ray-shards needs --engine ray: only Ray actors write range shards\.$"):
        check_engine(EngineConfig("local", shards=True))
