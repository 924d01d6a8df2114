"""ONNX Runtime backbones: `--backbone onnx:FILE` gives the embeddings of the same network run in Keras."""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from rich.console import Console

pytest.importorskip("onnxruntime", reason="the featx[onnx] extra is not installed")
pytest.importorskip("onnx", reason="the onnx package builds the test model")

from featx.cli import main
from featx.data.synthetic import generate_phantoms
from featx.extract import backbones
from featx.extract.stage import ExtractConfig, run_extract

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def conv_model(path: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A PyTorch-style NCHW network: Conv 3x3 (8 filters, pad 1) -> ReLU -> GlobalAveragePool -> Flatten."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    kernel = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, 8).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["pixel_values", "W", "B"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["embedding"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 8])],
        initializer=[numpy_helper.from_array(kernel, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    path.with_suffix(".json").write_text(json.dumps({"mean": list(MEAN), "std": list(STD)}))
    return kernel, bias


def keras_twin(kernel: np.ndarray, bias: np.ndarray):
    import keras

    inputs = keras.Input((32, 32, 3))
    conv = keras.layers.Conv2D(8, 3, padding="same", activation="relu")
    x = keras.layers.GlobalAveragePooling2D()(conv(inputs))
    model = keras.Model(inputs, x)
    conv.set_weights([kernel.transpose(2, 3, 1, 0), bias])
    return model


def test_an_onnx_file_embeds_like_the_same_network_in_keras(tmp_path):
    manifest = generate_phantoms(tmp_path / "data", n_patients=8, image_size=32, seed=2)
    kernel, bias = conv_model(tmp_path / "tiny.onnx")
    name = f"onnx:{tmp_path / 'tiny.onnx'}"
    spec = backbones.get_backbone(name)
    assert spec.group == "ONNX" and spec.channels == 8 and spec.native_size == 32 and spec.vector_output
    summary = run_extract(
        ExtractConfig(
            backbones=(name,),
            manifest=manifest,
            data_root=manifest.parent,
            out_dir=tmp_path / "f",
            weights="pretrained",
            batch_size=4,
            workers=1,
        ),
        Console(file=io.StringIO()),
    )[0]
    assert summary.path.name == "onnx-tiny.h5"
    with h5py.File(summary.path) as handle:
        got = handle["embeddings/avg"][()]
        assert handle.attrs["backbone_group"].decode() == "ONNX" and len(handle.attrs["weights_sha256"]) == 64
    from featx.data.images import iter_batches
    from featx.data.manifest import read_manifest

    paths = [manifest.parent / p for p in read_manifest(manifest).paths]
    images = np.concatenate([b.images for b in iter_batches(paths, (32, 32), batch_size=64, workers=1)])
    x = (images / 255.0 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    want = np.asarray(keras_twin(kernel, bias)(x.astype(np.float32)))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_onnx_mistakes_are_one_sentence(tmp_path, capsys):
    conv_model(tmp_path / "m.onnx")
    (tmp_path / "m.json").write_text(json.dumps({"layout": "NCWH"}))
    with pytest.raises(Exception, match=r"'layout' must be one of \['NCHW', 'NHWC'\]"):
        backbones.get_backbone(f"onnx:{tmp_path / 'm.onnx'}")
    (tmp_path / "m.json").write_text(json.dumps({"output": "logits"}))
    with pytest.raises(Exception, match=r"has no output 'logits'; it has \['embedding'\]"):
        backbones.get_backbone(f"onnx:{tmp_path / 'm.onnx'}")
    manifest = generate_phantoms(tmp_path / "data", n_patients=8, image_size=32, seed=2)
    code = main(["extract", "--backbone", f"onnx:{tmp_path / 'missing.onnx'}", "--manifest", str(manifest),
                 "--data-root", str(manifest.parent), "--out", str(tmp_path / "f")])  # fmt: skip
    assert code == 2 and "missing.onnx' of --backbone onnx:" in capsys.readouterr().err


def test_an_onnx_cache_classifies_and_its_bundle_predicts_the_test_scores(tmp_path):
    from featx.classify.stage import ClassifyConfig
    from featx.results.finish import classify_runs
    from featx.results.predict import predict_paths

    manifest = generate_phantoms(tmp_path / "data", n_patients=12, image_size=32, seed=3)
    conv_model(tmp_path / "net.onnx")
    name = f"onnx:{tmp_path / 'net.onnx'}"
    quiet = Console(file=io.StringIO())
    run_extract(
        ExtractConfig(backbones=(name,), manifest=manifest, data_root=manifest.parent, out_dir=tmp_path / "f",
                      weights="pretrained", batch_size=4, workers=1),
        quiet,
    )  # fmt: skip
    classify_runs(
        ClassifyConfig(features_dir=tmp_path / "f", out_dir=tmp_path / "r", classifiers=("logreg",), cv=2, quick=True),
        quiet,
    )
    run = json.loads((tmp_path / "r" / "runs" / "onnx-net__avg__logreg.json").read_text())
    assert run["backbone_group"] == "ONNX" and run["backbone"] == name
    rows = predict_paths(tmp_path / "r" / "models" / "onnx-net__avg__logreg.joblib", [manifest], batch_size=4)
    by_path = {r["path"]: r for r in rows}
    expected = run["test_predictions"]
    assert [by_path[str(manifest.parent / rel)]["p_opacity"] for rel in expected["ids"]] == expected["score"]
