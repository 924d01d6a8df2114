"""Tiny keras-hub presets written by tests: a random DINOv2 saved with save_to_preset, the same network as a
transformers-format checkpoint (config.json + model.safetensors with the names keras-hub's converter reads), and a
tiny ONNX network with its Keras twin. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TINY = dict(patch_size=8, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32)
SIZE = 32
MEAN, STD = (0.5307, 0.5307, 0.5307), (0.2583, 0.2583, 0.2583)  # RAD-DINO's preprocessor_config.json values


def tiny_dinov2(seed: int = 7, registers: int = 0):
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.DINOV2Backbone(
        **TINY,
        num_register_tokens=registers,
        image_shape=(SIZE, SIZE, 3),
        position_embedding_shape=(SIZE, SIZE, 3),
    )
    # random-init layer scales are 1 and biases 0: give every variable some signal so a wrong port shows
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        if "interpolated" not in variable.path:
            variable.assign(variable.numpy() + rng.normal(0, 0.05, variable.shape).astype("float32"))
    backbone.embeddings.interpolated_position_embeddings.assign(
        backbone.embeddings._interpolate_position_embeddings(
            backbone.embeddings.position_embeddings,
            patch_size=backbone.patch_size,
            source_shape=backbone.embeddings.position_embedding_shape,
            target_shape=backbone.image_shape,
            antialias=False,
        )
    )
    return backbone


def keras_preset(folder: Path, seed: int = 7) -> Path:
    """A local keras-hub preset: the backbone and an image converter (scale/offset of RAD-DINO's mean/std)."""
    import keras_hub

    backbone = tiny_dinov2(seed)
    backbone.save_to_preset(str(folder))
    scale = [1 / (255 * s) for s in STD]
    offset = [-m / s for m, s in zip(MEAN, STD)]
    converter = keras_hub.layers.DINOV2ImageConverter(image_size=(SIZE, SIZE), scale=scale, offset=offset)
    converter.save_to_preset(str(folder))
    return folder


def transformers_checkpoint(folder: Path, seed: int = 7):
    """The tiny DINOv2 as Hugging Face writes microsoft/rad-dino: config.json, model.safetensors,
    preprocessor_config.json. Returns the Keras backbone the weights came from."""
    from safetensors.numpy import save_file

    backbone = tiny_dinov2(seed)
    hidden, heads = TINY["hidden_dim"], TINY["num_heads"]
    tensors: dict[str, np.ndarray] = {}

    def put(name, value):
        tensors[name] = np.ascontiguousarray(np.asarray(value, dtype=np.float32))

    emb = backbone.embeddings
    put("embeddings.cls_token", emb.cls_token.numpy())
    put("embeddings.mask_token", emb.mask_token.numpy())
    put("embeddings.position_embeddings", emb.position_embeddings.numpy())
    put(
        "embeddings.patch_embeddings.projection.weight",
        emb.patch_embeddings.projection.kernel.numpy().transpose(3, 2, 0, 1),
    )
    put("embeddings.patch_embeddings.projection.bias", emb.patch_embeddings.projection.bias.numpy())
    for i, layer in enumerate(backbone.encoder.layers):
        p = f"encoder.layer.{i}"
        for norm, name in ((layer.norm1, "norm1"), (layer.norm2, "norm2")):
            put(f"{p}.{name}.weight", norm.gamma.numpy())
            put(f"{p}.{name}.bias", norm.beta.numpy())
        mha = layer.attention.attention
        for part, dense in (("query", mha.query_dense), ("key", mha.key_dense), ("value", mha.value_dense)):
            put(f"{p}.attention.attention.{part}.weight", dense.kernel.numpy().reshape(hidden, hidden).T)
            put(f"{p}.attention.attention.{part}.bias", dense.bias.numpy().reshape(hidden))
        put(f"{p}.attention.output.dense.weight", mha.output_dense.kernel.numpy().reshape(hidden, hidden).T)
        put(f"{p}.attention.output.dense.bias", mha.output_dense.bias.numpy())
        put(f"{p}.layer_scale1.lambda1", layer.layer_scale1.lambda1.numpy())
        put(f"{p}.layer_scale2.lambda1", layer.layer_scale2.lambda1.numpy())
        put(f"{p}.mlp.fc1.weight", layer.mlp.fc1.kernel.numpy().T)
        put(f"{p}.mlp.fc1.bias", layer.mlp.fc1.bias.numpy())
        put(f"{p}.mlp.fc2.weight", layer.mlp.fc2.kernel.numpy().T)
        put(f"{p}.mlp.fc2.bias", layer.mlp.fc2.bias.numpy())
    put("layernorm.weight", backbone.layernorm.gamma.numpy())
    put("layernorm.bias", backbone.layernorm.beta.numpy())
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    config = {
        "architectures": ["Dinov2Model"],
        "model_type": "dinov2",
        "hidden_size": hidden,
        "num_hidden_layers": TINY["num_layers"],
        "num_attention_heads": heads,
        "mlp_ratio": TINY["intermediate_dim"] / hidden,
        "patch_size": TINY["patch_size"],
        "image_size": SIZE,
        "layerscale_value": 1.0,
        "use_swiglu_ffn": False,
        "hidden_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": list(MEAN), "image_std": list(STD), "rescale_factor": 1 / 255, "do_normalize": True})
    )
    return backbone


def reference_tokens(backbone, images: np.ndarray) -> np.ndarray:
    """The backbone's tokens for raw 0..255 images under MEAN/STD: what featx must reproduce."""
    x = (images / 255.0 - np.asarray(MEAN, dtype=np.float32)) / np.asarray(STD, dtype=np.float32)
    return np.asarray(backbone(x.astype(np.float32), training=False))


def fake_hub(monkeypatch, repos: dict[str, Path], fail: BaseException | None = None) -> list:
    """huggingface_hub.hf_hub_download served from local folders (repo id -> folder), or failing with `fail`."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    calls = []

    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        if fail is not None:
            raise fail
        path = repos[repo_id] / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return calls
