"""keras-hub backbones: local presets and hf:// checkpoints (network faked), token poolings, registry entries.

Everything runs offline on tiny random networks written by tests/hubfactory.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from rich.console import Console

pytest.importorskip("keras_hub", reason="the featx[hub] extra is not installed")

import hubfactory

from featx.cli import main
from featx.data.synthetic import generate_phantoms
from featx.errors import WeightsError
from featx.extract import backbones, hub, store
from featx.extract.stage import ExtractConfig, run_extract

TOKENS = ("cls", "mean", "cls+mean", "gem")


@pytest.fixture(autouse=True)
def _fresh_presets():
    hub._RESOLVED.clear()
    backbones._preset_spec.cache_clear()
    yield
    hub._RESOLVED.clear()
    backbones._preset_spec.cache_clear()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return generate_phantoms(tmp_path_factory.mktemp("hub") / "data", n_patients=12, image_size=32, seed=1)


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def extract(manifest: Path, out: Path, backbone: str, weights="pretrained", **settings):
    config = ExtractConfig(
        backbones=(backbone,),
        manifest=manifest,
        data_root=manifest.parent,
        out_dir=out,
        weights=weights,
        poolings=TOKENS,
        batch_size=4,
        workers=1,
        **settings,
    )
    return run_extract(config, quiet())[0]


def read(path: Path) -> tuple[dict, dict]:
    with h5py.File(path, "r") as handle:
        data = {name: handle["embeddings"][name][()] for name in handle["embeddings"]}
        attrs = {key: store.read_attrs(handle)[key] for key in handle.attrs}
    return data, attrs


def decoded(manifest: Path) -> np.ndarray:
    from featx.data.images import iter_batches
    from featx.data.manifest import read_manifest

    paths = [manifest.parent / p for p in read_manifest(manifest).paths]
    return np.concatenate([b.images for b in iter_batches(paths, (32, 32), batch_size=64, workers=1)])


def assert_token_poolings(data: dict, tokens: np.ndarray, prefix: int = 1) -> None:
    patches = tokens[:, prefix:]
    np.testing.assert_allclose(data["cls"], tokens[:, 0], atol=1e-5)
    np.testing.assert_allclose(data["mean"], patches.mean(axis=1), atol=1e-5)
    np.testing.assert_array_equal(data["cls+mean"], np.concatenate([data["cls"], data["mean"]], axis=1))
    gem = (np.maximum(patches, 1e-6) ** 3).mean(axis=1) ** (1 / 3)
    np.testing.assert_allclose(data["gem"], gem, rtol=1e-4, atol=1e-5)


def test_a_local_keras_preset_gives_every_token_pooling_with_its_converter_s_preprocessing(phantoms, tmp_path):
    preset = hubfactory.keras_preset(tmp_path / "tiny-dino")
    summary = extract(phantoms, tmp_path / "features", str(preset))
    assert summary.status == "built" and summary.path.name == "preset-tiny-dino.h5"
    data, attrs = read(summary.path)
    assert attrs["backbone"] == str(preset.resolve()) and attrs["weights"] == "tiny-dino"
    assert attrs["backbone_group"] == "self-supervised ViT"
    assert attrs["preprocess"] == hub.normalise(hubfactory.MEAN, hubfactory.STD)  # from image_converter.json
    reference = hubfactory.reference_tokens(hubfactory.tiny_dinov2(), decoded(phantoms))
    assert_token_poolings(data, reference)
    # the weights identity is the preset plus the sha256 of its files: a changed checkpoint is a stale cache
    assert len(attrs["weights_sha256"]) == 64
    hubfactory.keras_preset(preset, seed=8)
    hub._RESOLVED.clear()
    with pytest.raises(Exception, match="weights_sha256"):
        extract(phantoms, tmp_path / "features", str(preset))


def test_a_transformers_checkpoint_loads_through_the_hf_path_with_the_download_faked(phantoms, tmp_path, monkeypatch):
    folder = tmp_path / "rad-dino"
    keras_backbone = hubfactory.transformers_checkpoint(folder)
    calls = hubfactory.fake_hub(monkeypatch, {"microsoft/rad-dino": folder})
    summary = extract(phantoms, tmp_path / "hf", "hf://microsoft/rad-dino")
    assert ("microsoft/rad-dino", "model.safetensors") in calls
    data, attrs = read(summary.path)
    assert summary.path.name == "hf-microsoft-rad-dino.h5" and attrs["weights"] == "hf://microsoft/rad-dino"
    assert attrs["preprocess"] == hub.normalise(hubfactory.MEAN, hubfactory.STD)  # preprocessor_config.json
    reference = hubfactory.reference_tokens(keras_backbone, decoded(phantoms))
    assert_token_poolings(data, reference)
    # the same files as a local folder: the same code path, the same numbers
    local, _ = read(extract(phantoms, tmp_path / "local", str(folder)).path)
    for pooling in TOKENS:
        np.testing.assert_array_equal(local[pooling], data[pooling])


def test_the_rad_dino_entry_loads_its_checkpoint_and_classify_and_predict_round_trip(phantoms, tmp_path, monkeypatch):
    """rad-dino --weights pretrained reads hf://microsoft/rad-dino (faked: a tiny checkpoint, so the spec's
    architecture is replaced by the preset's own); classify fits on it and predict reproduces its test scores."""
    from featx.classify.stage import ClassifyConfig
    from featx.results.finish import classify_runs
    from featx.results.predict import predict_paths

    folder = tmp_path / "ckpt"
    hubfactory.transformers_checkpoint(folder)
    hubfactory.fake_hub(monkeypatch, {"microsoft/rad-dino": folder})
    summary = extract(phantoms, tmp_path / "features", str(folder), image_size=32)
    classify_runs(
        ClassifyConfig(features_dir=tmp_path / "features", out_dir=tmp_path / "results", classifiers=("logreg",),
                       cv=2, quick=True, poolings=("cls+mean",)),
        quiet(),
    )  # fmt: skip
    stem = summary.path.stem
    run = json.loads((tmp_path / "results" / "runs" / f"{stem}__cls+mean__logreg.json").read_text())
    assert run["backbone_group"] == "self-supervised ViT"
    bundle = tmp_path / "results" / "models" / f"{stem}__cls+mean__logreg.joblib"
    rows = predict_paths(bundle, [phantoms], batch_size=4)  # the batches stage one cut
    by_path = {r["path"]: r for r in rows}
    expected = run["test_predictions"]
    got = [by_path[str(phantoms.parent / rel)]["p_opacity"] for rel in expected["ids"]]
    assert got == expected["score"]


def test_hf_without_network_is_one_sentence_naming_what_to_download_and_where(phantoms, tmp_path, monkeypatch, capsys):
    hubfactory.fake_hub(monkeypatch, {}, fail=OSError("[Errno -3] Temporary failure in name resolution"))
    code = main(["extract", "--backbone", "rad-dino", "--weights", "pretrained", "--manifest", str(phantoms),
                 "--data-root", str(phantoms.parent), "--out", str(tmp_path / "f")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    message = " ".join(err.split())
    assert "The preset hf://microsoft/rad-dino could not be fetched (" in message
    assert "huggingface-cli download microsoft/rad-dino --local-dir DIR" in message
    assert "pass --backbone DIR" in message and "HF_HUB_OFFLINE=1" in message
    assert message.count(". ") <= 1  # one sentence


def test_a_killed_extract_of_a_hub_backbone_resumes_bit_identical(phantoms, tmp_path, monkeypatch):
    preset = hubfactory.keras_preset(tmp_path / "p")
    clean = extract(phantoms, tmp_path / "clean", str(preset))
    writes = []
    original = store.CacheWriter.write

    def dying(self, *args, **kwargs):
        if len(writes) == 3:
            raise KeyboardInterrupt
        writes.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(store.CacheWriter, "write", dying)
    with pytest.raises(KeyboardInterrupt):
        extract(phantoms, tmp_path / "killed", str(preset))
    monkeypatch.setattr(store.CacheWriter, "write", original)
    resumed = extract(phantoms, tmp_path / "killed", str(preset))
    assert resumed.status == "resumed"
    want, got = read(clean.path)[0], read(resumed.path)[0]
    for pooling in TOKENS:
        assert want[pooling].tobytes() == got[pooling].tobytes(), pooling


def test_token_poolings_of_a_random_registry_vit_come_from_one_seeded_pass(phantoms, tmp_path):
    summary = extract(phantoms, tmp_path / "f", "tiny-vit", weights="random", seed=3)
    data, attrs = read(summary.path)
    assert sorted(data) == sorted(TOKENS) and data["cls+mean"].shape[1] == 2 * data["cls"].shape[1] == 64
    again = read(extract(phantoms, tmp_path / "g", "tiny-vit", weights="random", seed=3).path)[0]
    assert all(again[p].tobytes() == data[p].tobytes() for p in TOKENS)
    assert attrs["weights"] == "random" and attrs["backbone_group"] == "self-supervised ViT"


def test_a_cnn_asked_for_token_poolings_only_keeps_its_own_and_a_typo_is_one_sentence(phantoms, tmp_path):
    assert backbones.poolings_for("resnet50", ("cls", "mean")) == ("avg",)
    assert backbones.poolings_for("rad-dino", ("avg",)) == ("cls+mean",)
    assert backbones.poolings_for("rad-dino", ("avg", "cls")) == ("cls",)
    with pytest.raises(Exception, match=r"The 'pooling of rad-dino' parameter must be one of"):
        backbones.check_pooling("flatten", "rad-dino")


def test_registry_entries_name_source_size_group_and_licence():
    for name in ("rad-dino", "dinov2-small", "dinov2-base", "dinov2-large", "dinov2-base-reg", "dinov3-vits16",
                 "vit-b16-21k", "timm-resnet50"):  # fmt: skip
        spec = backbones.get_backbone(name)
        assert spec.source == "keras-hub" and spec.preset.startswith("hf://") and spec.licence, name
        assert spec.group in backbones.BACKBONE_GROUPS
    assert backbones.get_backbone("rad-dino").native_size == 518
    assert backbones.get_backbone("rad-dino").group == "medical foundation"
    assert backbones.get_backbone("dinov2-base-reg").prefix_tokens == 5
    assert backbones.get_backbone("pixels").group == "floor"
    assert backbones.backbone_group_of("resnet50", {}) == "ImageNet CNN"
    assert backbones.backbone_group_of("pixels", {}) == "floor" and backbones.backbone_group_of("metadata") == "floor"
    # the affine strings the registry spells out are hub.py's
    assert backbones._IMAGENET_NORM == hub.IMAGENET_AFFINE and backbones._UNIT_RANGE == hub.UNIT_AFFINE


def test_random_weights_build_the_real_architecture_of_an_entry(phantoms, tmp_path):
    summary = extract(phantoms, tmp_path / "f", "dinov2-small", weights="random", image_size=28, limit=4)
    data, _ = read(summary.path)
    assert data["cls"].shape == (4, 384) and data["cls+mean"].shape == (4, 768)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rad-dino", "dinov2-base-reg", "dinov3-vits16", "vit-b16-21k", "timm-resnet50",
                                  "timm-densenet121"])  # fmt: skip
def test_every_hub_entry_runs_with_random_weights(name):
    spec = backbones.get_backbone(name)
    size = 32 if spec.tokens else 64
    model = backbones.create_backbone(spec, backbones.resolve_weights("random", 0, spec), size, spec.poolings[:1])
    out = model(np.zeros((1, size, size, 3), dtype=np.float32))
    assert out[spec.poolings[0]].shape == (1, spec.embedding_width(spec.poolings[0]))


def test_featx_backbones_lists_the_groups(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    for group in ("ImageNet CNN", "self-supervised ViT", "medical foundation", "floor"):
        assert group in out
    assert "rad-dino" in out and "MSRLA" in " ".join(out.split())


def test_an_unknown_source_is_refused_and_no_hub_module_is_imported_by_the_registry():
    import subprocess
    import sys

    code = "import sys, featx.extract.backbones, featx.cli; print(any(m in sys.modules for m in ('keras_hub', 'onnxruntime', 'tensorflow', 'huggingface_hub')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    with pytest.raises(
        Exception,
        match="a keras-hub preset name \\(dinov2_small\\), an hf://org/repo preset, a preset folder or onnx:FILE. Got",
    ):
        backbones.get_backbone("rad-dinoo")
    with pytest.raises(WeightsError, match="takes --weights pretrained"):
        backbones.resolve_weights("imagenett", 0, "rad-dino")


@pytest.mark.ray
def test_the_ray_engine_embeds_a_hub_preset_bit_identical_to_the_local_engine(ray_cluster, phantoms, tmp_path):
    from featx.engines import EngineConfig

    preset = hubfactory.keras_preset(tmp_path / "p")
    local = extract(phantoms, tmp_path / "local", str(preset))
    ray = extract(phantoms, tmp_path / "ray", str(preset), engine=EngineConfig("ray", range_rows=8))
    want, got = read(local.path), read(ray.path)
    for pooling in TOKENS:
        assert want[0][pooling].tobytes() == got[0][pooling].tobytes(), pooling
    assert want[1]["weights_sha256"] == got[1]["weights_sha256"] and want[1]["preprocess"] == got[1]["preprocess"]


def test_the_model_bench_chooses_a_batch_that_keeps_long_token_sequences_in_memory():
    from featx.bench.models import batch_for, parse_models

    assert parse_models(["rad-dino@518", "resnet50"]) == [("rad-dino", 518), ("resnet50", None)]
    assert batch_for(backbones.get_backbone("resnet50"), 224) == 32
    small = batch_for(backbones.get_backbone("rad-dino"), 518)
    assert 1 <= small < batch_for(backbones.get_backbone("rad-dino"), 224) <= 32 and small <= 4


def test_extract_cuts_a_long_token_batch_into_calls_that_fit_and_gives_the_same_rows():
    """Issue 15.6: a ViT at 518 px is never run on a whole --batch-size batch at once (its attention maps would
    not fit); a CNN's batch goes through whole."""
    import numpy as np

    from featx.extract.forward import forward_step

    assert backbones.forward_batch_limit(backbones.get_backbone("resnet50"), 224) is None
    assert backbones.forward_batch_limit(backbones.get_backbone("rad-dino"), 518) <= 4

    import tensorflow as tf

    class Model:  # each image minus its call's mean: the output says how the batch was cut
        def __call__(self, batch, training=False):
            return {"cls": batch[:, 0, 0, :] - tf.reduce_mean(batch[:, 0, 0, :], axis=0)}

    images = np.random.default_rng(0).random((7, 4, 4, 3), dtype=np.float32)
    pixels = images[:, 0, 0, :]
    whole = forward_step(Model(), (4, 4), ["cls"])(images)["cls"]
    assert np.allclose(whole, pixels - pixels.mean(axis=0), atol=1e-6)
    cut = forward_step(Model(), (4, 4), ["cls"], max_batch=3)(images)["cls"]
    want = np.concatenate([part - part.mean(axis=0) for part in (pixels[:3], pixels[3:6], pixels[6:])])
    assert np.allclose(cut, want, atol=1e-6) and not np.allclose(cut, whole, atol=1e-3)


def test_a_keras_hub_preset_name_is_a_backbone_and_offline_says_what_to_download(monkeypatch):
    """Issue 15.1: keras-hub's own preset names (its Kaggle presets) are accepted like hf:// URIs."""
    from keras_hub.src.utils import preset_utils

    assert hub.builtin_preset_handle("dinov2_small") == "kaggle://keras/dinov2/keras/dinov2_small/1"
    assert hub.builtin_preset_handle("resnet5") is None and hub.builtin_preset_handle("no_such_preset") is None

    def offline(uri, name):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(preset_utils, "get_file", offline)
    with pytest.raises(WeightsError) as error:
        backbones.get_backbone("dinov2_small")
    message = str(error.value)
    assert "kaggle://keras/dinov2/keras/dinov2_small/1 could not be fetched" in message
    assert "pass --backbone that folder" in message and len(message.splitlines()) == 1
