"""Stage one end to end with the tiny backbone: the cache it writes, hits, staleness, shared decode, bad input."""

from __future__ import annotations

import dataclasses
import io
import shlex
from pathlib import Path

import cachedamage
import h5py
import numpy as np
import pytest
from imagetree import make_tree
from rich.console import Console
from tinyextract import tiny_args, tiny_config

from featx.cli import main
from featx.data import images
from featx.errors import StaleCacheError
from featx.extract import backbones, forward, store
from featx.extract import stage as extract
from featx.extract.stage import ExtractConfig, run_extract


def config_for(tmp_path, manifest, **overrides) -> ExtractConfig:
    return tiny_config(manifest, tmp_path / "features", **{"poolings": ("avg",), "batch_size": 4, **overrides})


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "data", n=14, bad=True)


def test_extract_writes_every_row_in_manifest_order_and_records_failures(tmp_path, tree):
    summary = run_extract(config_for(tmp_path, tree, poolings=("avg", "max")), quiet())[0]
    assert summary.status == "built" and summary.rows == 18 and summary.failures == 4
    assert summary.path == tmp_path / "features" / "tiny.h5" and summary.random_weights
    features = store.load(summary.path, "avg")
    manifest_paths = [line.split(",")[0] for line in tree.read_text().splitlines()[1:]]
    assert list(features.ids) == manifest_paths
    bad = [i for i, p in enumerate(manifest_paths) if p.startswith("bad/")]
    assert np.flatnonzero(~features.ok).tolist() == bad
    assert not features.X[bad].any() and (np.abs(features.X[features.ok]).sum(axis=1) > 0).all()
    reasons = dict(line.split("\t") for line in features.errors)
    assert set(reasons) == {manifest_paths[i] for i in bad}
    assert "decompression bomb" in reasons["bad/bomb.png"] and "0 bytes" in reasons["bad/zero_byte.png"]
    attrs = features.attrs
    assert attrs["complete"] and attrs["n_done"] == 18 and attrs["weights"] == "random" and attrs["weights_seed"] == 0
    assert attrs["image_size"] == [32, 32] and attrs["poolings"] == ["avg", "max"] and attrs["resize_mode"] == "stretch"
    assert attrs["manifest_sha256"] == store.file_sha256(tree)
    assert attrs["data_root"] == str(tree.parent.resolve()) and attrs["preprocess"] == "tf"
    for key in ("featx_version", "tensorflow_version", "keras_version", "created_utc", "weights_sha256"):
        assert key in attrs
    assert features.split.tolist().count("test") == 4
    assert not list((tmp_path / "features").glob("*.partial")) and not list((tmp_path / "features").glob("*.lock"))


def test_embeddings_equal_a_direct_forward_pass_of_the_same_network(tmp_path, tree):
    config = config_for(tmp_path, tree, poolings=("avg", "max", "gem"), seed=5)
    path = run_extract(config, quiet())[0].path
    spec = backbones.get_backbone("tiny")
    model = backbones.create_backbone(
        spec, backbones.resolve_weights("random", 5, spec), (32, 32), ("avg", "max", "gem")
    )
    features = {p: store.load(path, p) for p in ("avg", "max", "gem")}
    rows = np.flatnonzero(features["avg"].ok)[:6]
    batch = np.stack([images.load_image(tree.parent / features["avg"].ids[i], (32, 32)) for i in rows]).astype(
        np.float32
    )
    expected = model(batch, training=False)
    for pooling, feature_set in features.items():
        np.testing.assert_allclose(feature_set.X[rows], np.asarray(expected[pooling]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(features["avg"].X, features["max"].X)


def test_several_poolings_come_from_one_forward_pass(tmp_path, tree, monkeypatch):
    calls = []
    make_step = forward.forward_step  # the engines build every backbone's step through this module

    def counting_step(model, size, poolings, max_batch=None):
        predict = make_step(model, size, poolings, max_batch=max_batch)

        def counted(batch):
            calls.append(len(batch))
            return predict(batch)

        return counted

    monkeypatch.setattr(forward, "forward_step", counting_step)
    run_extract(config_for(tmp_path, tree, poolings=("avg", "max", "gem", "flatten")), quiet())
    assert calls[0] == 1  # the warm-up trace
    assert calls[1:] == [4, 4, 4, 4, 2]  # 18 rows in batches of 4, each pass feeding all four poolings
    with h5py.File(tmp_path / "features" / "tiny.h5", "r") as handle:
        widths = {name: handle["embeddings"][name].shape[1] for name in handle["embeddings"]}
    spec = backbones.get_backbone("tiny")
    assert widths == {p: spec.embedding_width(p, (32, 32)) for p in ("avg", "max", "gem", "flatten")}


def _second_tiny(monkeypatch, native_size=32) -> None:
    spec = dataclasses.replace(backbones.get_backbone("tiny"), name="tiny2", native_size=native_size)
    monkeypatch.setitem(backbones.BACKBONES, "tiny2", spec)


def _count_decodes(monkeypatch) -> list:
    decoded = []
    read_image = images.read_image

    def counting(path, size, resize_mode="stretch", dicom_window="file"):
        decoded.append(Path(path).name)
        return read_image(path, size, resize_mode, dicom_window)

    monkeypatch.setattr(images, "read_image", counting)
    return decoded


def test_backbones_of_one_image_size_share_one_decode(tmp_path, monkeypatch):
    manifest = make_tree(tmp_path / "data", n=10)
    _second_tiny(monkeypatch)
    decoded = _count_decodes(monkeypatch)
    summaries = run_extract(config_for(tmp_path, manifest, backbones=("tiny", "tiny2"), seed=1), quiet())
    assert [s.status for s in summaries] == ["built", "built"]
    assert len(decoded) == 10 and len(set(decoded)) == 10
    a, b = store.load(summaries[0].path), store.load(summaries[1].path)
    assert a.attrs["backbone"] == "tiny" and b.attrs["backbone"] == "tiny2"
    np.testing.assert_array_equal(a.X, b.X)  # same architecture, same seed: the shared batches fed both


def test_backbones_of_different_sizes_decode_separately(tmp_path, monkeypatch):
    manifest = make_tree(tmp_path / "data", n=6)
    _second_tiny(monkeypatch, native_size=40)
    decoded = _count_decodes(monkeypatch)
    summaries = run_extract(config_for(tmp_path, manifest, backbones=("tiny", "tiny2")), quiet())
    assert len(decoded) == 12
    assert store.load(summaries[1].path).attrs["image_size"] == [40, 40]


def test_matching_cache_is_a_hit_without_building_a_model(tmp_path, tree, monkeypatch):
    config = config_for(tmp_path, tree, poolings=("avg", "max"))
    first = run_extract(config, quiet())[0]
    before = first.path.stat().st_mtime_ns

    def no_model(*args, **kwargs):
        raise AssertionError("a cache hit must not build a model")

    monkeypatch.setattr(backbones, "create_backbone", no_model)
    console = quiet()
    again = run_extract(config, console)[0]
    assert again.status == "hit" and again.rows == 18 and again.failures == 4
    assert "cache hit" in console.file.getvalue()
    assert first.path.stat().st_mtime_ns == before
    subset = run_extract(dataclasses.replace(config, poolings=("max",)), quiet())[0]
    assert subset.status == "hit"


def test_changed_settings_are_stale_and_force_rebuilds(tmp_path, tree):
    config = config_for(tmp_path, tree)
    run_extract(config, quiet())
    with pytest.raises(StaleCacheError) as raised:
        run_extract(dataclasses.replace(config, seed=3, resize_mode="pad"), quiet())
    assert "weights_seed" in str(raised.value) and "resize_mode" in str(raised.value) and "--force" in str(raised.value)
    with pytest.raises(StaleCacheError, match="rows"):
        run_extract(dataclasses.replace(config, limit=5), quiet())
    rebuilt = run_extract(dataclasses.replace(config, seed=3, force=True), quiet())[0]
    assert rebuilt.status == "built" and store.load(rebuilt.path).attrs["weights_seed"] == 3


def test_limit_takes_the_first_rows(tmp_path, tree):
    summary = run_extract(config_for(tmp_path, tree, limit=5), quiet())[0]
    features = store.load(summary.path)
    assert summary.rows == 5 and len(features) == 5
    assert list(features.ids) == [line.split(",")[0] for line in tree.read_text().splitlines()[1:6]]


def test_auto_weights_fall_back_to_random_with_the_banner(tmp_path, tree, capsys):
    code = main(tiny_args(tree, tmp_path / "features", "--batch-size", "8", weights="auto"))
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0
    assert extract.RANDOM_BANNER in out and "random weights were used" in out
    assert store.load(tmp_path / "features" / "tiny.h5").random_weights


def test_a_model_that_cannot_be_built_leaves_nothing_behind(tmp_path, tree, monkeypatch):
    from featx.errors import WeightsError

    def no_weights(*args, **kwargs):
        raise WeightsError("ImageNet weights for 'tiny' could not be had; pass --weights random.")

    monkeypatch.setattr(backbones, "create_backbone", no_weights)
    with pytest.raises(WeightsError):
        run_extract(config_for(tmp_path, tree), quiet())
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == []


# ---------------------------------------------------------------- bad input through the CLI


def _extract_args(tmp_path, manifest, data_root=None, *extra):
    return tiny_args(manifest, tmp_path / "features", *extra, data_root=data_root)


def test_the_cli_adds_the_pixel_floor_unless_told_not_to(tmp_path, capsys, offline):
    manifest = make_tree(tmp_path / "data", n=6)
    assert main(_extract_args(tmp_path, manifest)) == 0
    features = tmp_path / "features"
    assert sorted(p.name for p in features.glob("*.h5")) == ["pixels.h5", "tiny.h5"]
    pixels = store.load(features / "pixels.h5")
    assert pixels.attrs["weights"] == "none" and not pixels.random_weights and pixels.X.shape == (6, 1280)
    assert main(_extract_args(tmp_path, manifest, None, "--no-pixels", "--out", str(tmp_path / "bare"))) == 0
    assert [p.name for p in (tmp_path / "bare").glob("*.h5")] == ["tiny.h5"]
    capsys.readouterr()
    # pixels alone, under --weights imagenet: nothing to download, labelled "none", no random-weights banner
    args = _extract_args(tmp_path, manifest, None, "--out", str(tmp_path / "alone"))
    args[args.index("tiny")], args[args.index("random")] = "pixels", "imagenet"
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "none" in out and "RANDOM-INIT" not in out and offline == []
    assert store.load(tmp_path / "alone" / "pixels.h5").attrs["weights"] == "none"


def _one_sentence_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("featx: error: ") and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def _nothing_complete(tmp_path) -> None:
    out = tmp_path / "features"
    assert not out.exists() or not [p for p in out.iterdir() if p.suffix in (".h5", ".partial", ".lock")]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_manifest", "does not exist"),
        ("missing_data_root", "is not a folder"),
        ("missing_columns", "patient_id"),
        ("empty_manifest", "no rows"),
        ("unknown_backbone", "did you mean 'tiny'"),
        ("unknown_pooling", "'pooling' parameter must be one of"),
        ("unknown_resize_mode", "'resize_mode' parameter must be one of"),
        ("image_size_too_small", "at least 8x8"),
        ("out_is_a_file", "is a file"),
        ("unknown_weights", "did you mean 'random'"),
        ("imagenet_for_tiny", "has no ImageNet weights"),
        ("wrong_data_root", "None of the first"),
        ("path_escapes_root", "escapes the data root"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys, case, expected):
    manifest = make_tree(tmp_path / "data", n=6)
    args = _extract_args(tmp_path, manifest)
    if case == "missing_manifest":
        args = _extract_args(tmp_path, tmp_path / "nope.csv", manifest.parent)
    elif case == "missing_data_root":
        args = _extract_args(tmp_path, manifest, tmp_path / "no_such_folder")
    elif case == "missing_columns":
        manifest.write_text("path,label,split\nimages/img_0000.png,NORMAL,train\n")
    elif case == "empty_manifest":
        manifest.write_text("path,label,split,patient_id\n")
    elif case == "unknown_backbone":
        args[args.index("tiny")] = "tinny"
    elif case == "unknown_pooling":
        args += ["--pooling", "avg,median"]  # mean is a token pooling
    elif case == "unknown_resize_mode":
        args += ["--resize-mode", "squash"]
    elif case == "image_size_too_small":
        args += ["--image-size", "4"]
    elif case == "out_is_a_file":
        (tmp_path / "features").write_text("not a folder")
    elif case == "unknown_weights":
        args[args.index("random")] = "randm"
    elif case == "imagenet_for_tiny":
        args[args.index("random")] = "imagenet"
    elif case == "wrong_data_root":
        args = _extract_args(tmp_path, manifest, tmp_path)
    elif case == "path_escapes_root":
        manifest.write_text("path,label,split,patient_id\n../../etc/passwd,NORMAL,train,p1\n")
    assert main(args) == 2
    assert expected in _one_sentence_error(capsys)
    if case != "out_is_a_file":
        _nothing_complete(tmp_path)


def test_stale_and_truncated_caches_through_the_cli(tmp_path, capsys):
    manifest = make_tree(tmp_path / "data", n=6)
    assert main(_extract_args(tmp_path, manifest)) == 0
    capsys.readouterr()
    assert main(_extract_args(tmp_path, manifest, None, "--seed", "9")) == 2
    err = _one_sentence_error(capsys)
    assert "weights_seed" in err and "--force" in err
    cache = tmp_path / "features" / "tiny.h5"
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) // 2])
    assert main(_extract_args(tmp_path, manifest)) == 2
    assert "unreadable" in _one_sentence_error(capsys)
    assert main(_extract_args(tmp_path, manifest, None, "--force")) == 0
    assert len(store.load(cache)) == 6


def test_unwritable_output_directory(tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root can write to any directory")
    manifest = make_tree(tmp_path / "data", n=4)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    args = _extract_args(tmp_path, manifest)
    args[args.index(str(tmp_path / "features"))] = str(locked / "features")
    assert main(args) == 2
    assert "not writable" in _one_sentence_error(capsys)


def test_lock_held_by_another_process_through_the_cli(tmp_path, capsys):
    import subprocess
    import sys

    manifest = make_tree(tmp_path / "data", n=4)
    (tmp_path / "features").mkdir()
    code = "import sys; from featx.extract import store; store.acquire_lock(sys.argv[1]); print('held', flush=True); sys.stdin.read()"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "features" / "tiny.h5")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(_extract_args(tmp_path, manifest)) == 2
        assert f"pid {holder.pid}" in _one_sentence_error(capsys)
    finally:
        holder.kill()
        holder.wait()
    assert main(_extract_args(tmp_path, manifest)) == 0  # the lock of the dead process is taken over


@pytest.mark.realdata
def test_real_kermany_images_through_two_backbones_sharing_one_decode(tmp_path, kermany_train, monkeypatch):
    picked = (
        sorted((kermany_train / "NORMAL").glob("*.jpeg"))[:16]
        + sorted((kermany_train / "PNEUMONIA").glob("*.jpeg"))[:16]
    )
    manifest = tmp_path / "kermany.csv"
    lines = ["path,label,split,patient_id"]
    for path in picked:
        lines.append(f"{path.relative_to(kermany_train)},{path.parent.name},train,{path.stem.split('-')[0]}")
    manifest.write_text("\n".join(lines) + "\n")
    decoded = _count_decodes(monkeypatch)
    config = ExtractConfig(
        backbones=("tiny", "mobilenetv3small"),
        manifest=manifest,
        data_root=kermany_train,
        out_dir=tmp_path / "features",
        weights="random",
        poolings=("avg", "max"),
        image_size=96,
        batch_size=16,
    )
    summaries = run_extract(config, quiet())
    assert len(decoded) == 32
    for summary, width in zip(summaries, (32, 576)):
        features = store.load(summary.path, "max")
        assert summary.status == "built" and summary.failures == 0 and features.ok.all() and len(features) == 32
        assert features.X.shape == (32, width)
        assert features.classes == ("NORMAL", "PNEUMONIA") and features.y.tolist() == [0] * 16 + [1] * 16
        assert features.attrs["image_size"] == [96, 96] and features.attrs["data_root"] == str(kermany_train.resolve())
        assert np.isfinite(features.X).all() and features.X.std(axis=0).max() > 0
    assert store.load(summaries[1].path).attrs["preprocess"] == "none"


# ---------------------------------------------------------------- trust (issue 8)


def _classify_args(tmp_path):
    return ["classify", "--features", str(tmp_path / "features"), "--out", str(tmp_path / "results")]


@pytest.mark.parametrize(
    "kind",
    [
        "flipped embeddings chunk",
        "flipped /ok",
        "flipped /labels",
        "deleted ok",
        "deleted labels",
        "deleted split",
        "deleted patient_id",
        "deleted errors",
        "deleted embeddings/avg",
        "n_done lowered",
        "complete set false",
    ],
)
def test_a_damaged_cache_gets_one_sentence_and_one_command_from_extract_and_classify(tmp_path, capsys, kind):
    """The same sentence from both commands (no traceback, no "up to date", no "Wrote 0 runs"), and the
    command it names rebuilds the cache."""
    damage = {
        "flipped embeddings chunk": cachedamage.flip_in_chunk("embeddings/avg"),
        "flipped /ok": cachedamage.flip_in_chunk("ok"),
        "flipped /labels": cachedamage.flip_in_chunk("labels"),
        "n_done lowered": cachedamage.set_attr("n_done", np.int64(3)),
        "complete set false": cachedamage.set_attr("complete", np.bool_(False)),
    }.get(kind) or cachedamage.delete(kind.removeprefix("deleted "))
    manifest = make_tree(tmp_path / "data", n=10)
    assert main(_extract_args(tmp_path, manifest, None, "--pooling", "avg,max", "--image-size", "32")) == 0
    cache = tmp_path / "features" / "tiny.h5"
    damage(cache)
    capsys.readouterr()

    assert main(_extract_args(tmp_path, manifest, None, "--pooling", "avg")) == 2
    from_extract = _one_sentence_error(capsys)
    assert main(_classify_args(tmp_path)) == 2
    from_classify = _one_sentence_error(capsys)
    assert from_extract == from_classify
    assert from_extract.startswith(f"featx: error: The embedding cache '{cache}' is damaged (")
    command = from_extract.split("rebuild it with `")[1].removesuffix("`.")
    assert command == (
        f"featx extract --backbone tiny --manifest {manifest.resolve()} --data-root {manifest.parent.resolve()} "
        f"--weights random --seed 0 --pooling avg,max --image-size 32 --out {cache.parent} --force"
    )

    assert main(shlex.split(command)[1:]) == 0
    capsys.readouterr()
    assert main(_extract_args(tmp_path, manifest, None, "--pooling", "avg")) == 0
    assert "cache hit" in capsys.readouterr().out
    assert store.read_header(cache, verify=True).n_rows == 10


def test_duplicate_manifest_paths_are_warned_about(tmp_path):
    manifest = make_tree(tmp_path / "data", n=6)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([*lines, lines[2].replace(",train,", ",test,"), lines[2]]) + "\n")
    console = quiet()
    summary = run_extract(config_for(tmp_path, manifest), console)[0]
    said = " ".join(console.file.getvalue().split())
    assert (
        "warning: 1 path(s) are listed more than once in the manifest (e.g. 'images/img_0001.png', 3 times), "
        "so 2 extra row(s) embed the same file again" in said
    )
    assert summary.rows == 8


def test_extract_records_the_sha256_of_each_image_file(tmp_path, tree):
    from featx.files import file_sha256

    summary = run_extract(config_for(tmp_path, tree), quiet())[0]
    rows = store.read_rows(summary.path)
    for path, digest in zip(rows.ids, rows.image_sha256):
        # undecodable files too (their bytes were read); "" for an empty file (nothing to compare)
        assert digest == ("" if path == "bad/zero_byte.png" else file_sha256(tree.parent / path)), path
    assert len(set(rows.image_sha256)) == len(rows.ids)


def test_failed_images_are_named_with_reasons_and_listed_beside_the_cache(tmp_path, tree, capsys):
    """The summary names the first failures and their reasons and points to <name>.errors.csv (path, reason)."""
    import csv

    args = _extract_args(tmp_path, tree)
    assert main(args) == 0
    out = capsys.readouterr().out
    csv_path = tmp_path / "features" / "tiny.errors.csv"
    with open(csv_path, newline="") as handle:
        listed = list(csv.reader(handle))
    assert listed[0] == ["path", "reason"] and [row[0] for row in listed[1:]] == [
        "bad/zero_byte.png",
        "bad/not_an_image.png",
        "bad/truncated.jpeg",
        "bad/bomb.png",
    ]
    assert "tiny: 4 image(s) could not be read" in out
    for path, reason in listed[1:]:
        assert f"  {path}: {reason[:40]}" in out
    assert f"the full list (path, reason) is in {csv_path}" in " ".join(out.split())
    csv_path.unlink()
    assert main(args) == 0  # a hit names them too, and writes the list again
    out = capsys.readouterr().out
    assert "cache hit" in out and "  bad/bomb.png: decompression bomb" in out
    assert csv_path.exists()


def test_a_full_disk_mid_extract_is_one_sentence_and_the_same_command_resumes(tmp_path, capsys, monkeypatch):
    import errno

    manifest = make_tree(tmp_path / "data", n=12)
    args = _extract_args(tmp_path, manifest, None, "--batch-size", "4", "--no-pixels")  # one cache: one full disk
    cache = tmp_path / "features" / "tiny.h5"
    setitem = h5py.Dataset.__setitem__
    calls = []

    def fills_up(self, key, value):  # the first batch (embeddings, ok, sha256) fits; then the disk is full
        calls.append(key)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return setitem(self, key, value)

    with monkeypatch.context() as patch:
        patch.setattr(h5py.Dataset, "__setitem__", fills_up)
        assert main(args) == 2
    assert _one_sentence_error(capsys) == (
        f"featx: error: No space left on device while writing '{store.partial_path(cache)}'; "
        "free space and run the same command to resume."
    )
    assert not store.lock_path(cache).exists() and store.partial_path(cache).exists()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Resuming tiny.h5.partial at row 4 of 12" in out and "resumed" in out
    assert len(store.load(cache)) == 12


def test_too_little_free_space_is_refused_before_the_model_is_built(tmp_path, capsys, monkeypatch):
    import os

    manifest = make_tree(tmp_path / "data", n=4)
    real = os.statvfs

    def nearly_full(path):
        stats = list(real(path))
        stats[4] = 1  # one free block
        return os.statvfs_result(stats)

    monkeypatch.setattr(os, "statvfs", nearly_full)
    monkeypatch.setattr(backbones, "create_backbone", lambda *a, **k: pytest.fail("no model before the space check"))
    assert main(_extract_args(tmp_path, manifest)) == 2
    err = _one_sentence_error(capsys)
    assert f"Not enough free space for '{tmp_path / 'features' / 'tiny.h5'}': it needs about" in err
    _nothing_complete(tmp_path)
