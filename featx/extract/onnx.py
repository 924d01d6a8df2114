"""ONNX Runtime as a backbone source: `--backbone onnx:FILE` for any network exported to ONNX.

PyTorch models (torchxrayvision, BiomedCLIP, MedSigLIP ...) exported with `torch.onnx.export`
run here without their framework. What featx needs to know beside the file goes in a sidecar
JSON next to it (`FILE.json` or `FILE.onnx.json`; every key optional):

    {"input": "pixel_values",       # input name (default: the model's first input)
     "output": "last_hidden_state", # output name (default: the model's first output)
     "layout": "NCHW",              # NCHW (PyTorch, the default) or NHWC
     "size": 224,                   # native input side (default: the input's static size, else 224)
     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],   # on 0..1 values (default: 0 and 1)
     "rescale": 0.00392156863,      # 0..255 -> the model's range before mean/std (default 1/255)
     "kind": "tokens",              # vector (b, D) | tokens (b, T, D) | map (b, C, h, w) or (b, h, w, C)
     "prefix_tokens": 1}            # tokens before the patch tokens (class + registers)

The weights identity is the file's sha256; preprocessing is recorded like a keras-hub
preset's (affine per channel). Nothing imports onnxruntime until an ONNX backbone is built.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from featx.errors import BackboneError, FeatxError, WeightsError

ONNX_EXTRA = "pip install 'featx[onnx]'"
PREFIX = "onnx:"
KINDS = ("vector", "tokens", "map")
LAYOUTS = ("NCHW", "NHWC")
SIDECAR_KEYS = ("input", "output", "layout", "size", "mean", "std", "rescale", "kind", "prefix_tokens")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise FeatxError(
            f"ONNX backbones need ONNX Runtime, which is not installed; install it with {ONNX_EXTRA}."
        ) from None
    return onnxruntime


def onnx_path(name: str) -> Path:
    path = Path(name.removeprefix(PREFIX)).expanduser()
    if not path.is_file():
        raise BackboneError(
            f"The ONNX file '{path}' of --backbone {name} does not exist; pass onnx:PATH of a .onnx file."
        )
    return path.resolve()


def sidecar_path(path: Path) -> Path | None:
    for candidate in (path.with_suffix(".json"), path.with_name(path.name + ".json")):
        if candidate.is_file():
            return candidate
    return None


def read_sidecar(path: Path) -> dict:
    """The sidecar's settings ({} without one); BackboneError for unreadable JSON or an unknown key or value."""
    side = sidecar_path(path)
    if side is None:
        return {}
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BackboneError(f"The ONNX sidecar '{side}' is not readable JSON ({error}).") from None
    if not isinstance(data, dict):
        raise BackboneError(f"The ONNX sidecar '{side}' must hold a JSON object with keys from {list(SIDECAR_KEYS)}.")
    unknown = sorted(set(data) - set(SIDECAR_KEYS))
    if unknown:
        raise BackboneError(f"The ONNX sidecar '{side}' has unknown key(s) {unknown}; allowed: {list(SIDECAR_KEYS)}.")
    if data.get("layout", "NCHW") not in LAYOUTS:
        raise BackboneError(f"The ONNX sidecar '{side}': 'layout' must be one of {list(LAYOUTS)}.")
    if data.get("kind") is not None and data["kind"] not in KINDS:
        raise BackboneError(f"The ONNX sidecar '{side}': 'kind' must be one of {list(KINDS)}.")
    return data


def _session(path: Path):
    onnxruntime = import_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    providers = [
        p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in onnxruntime.get_available_providers()
    ]
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph errors
        raise BackboneError(f"ONNX Runtime cannot load '{path}' ({' '.join(str(error).split())[:200]}).") from None


def _settings(path: Path):
    """(sidecar, input name, output name, input shape, output shape) from the sidecar and the model's own signature."""
    side = read_sidecar(path)
    session = _session(path)
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    input_name = side.get("input") or next(iter(inputs))
    output_name = side.get("output") or next(iter(outputs))
    for what, name, known in (("input", input_name, inputs), ("output", output_name, outputs)):
        if name not in known:
            raise BackboneError(f"The ONNX file '{path}' has no {what} {name!r}; it has {sorted(known)}.")
    return side, session, input_name, output_name, list(inputs[input_name].shape), list(outputs[output_name].shape)


def _static(value) -> int | None:
    return int(value) if isinstance(value, int) and value > 0 else None


def onnx_spec(name: str):
    """A BackboneSpec for `onnx:FILE`: group ONNX, its output kind and width read off the model."""
    from featx.extract import hub
    from featx.extract.backbones import BackboneSpec, source_stem

    path = onnx_path(name)
    side, _, _, _, in_shape, out_shape = _settings(path)
    layout = side.get("layout", "NCHW")
    spatial = in_shape[2:4] if layout == "NCHW" else in_shape[1:3]
    size = int(side.get("size") or _static(spatial[0] if len(spatial) > 0 else None) or 224)
    kind = side.get("kind") or {2: "vector", 3: "tokens", 4: "map"}.get(len(out_shape))
    if kind is None:
        raise BackboneError(f"The ONNX output of '{path}' has shape {out_shape}; set 'kind' in its sidecar.")
    channel_axis = {"vector": -1, "tokens": -1, "map": 1 if layout == "NCHW" else -1}[kind]
    channels = _static(out_shape[channel_axis])
    if channels is None:
        raise BackboneError(f"The ONNX output of '{path}' has no static width ({out_shape}).")
    preprocess = hub.normalise(side.get("mean", 0.0), side.get("std", 1.0), float(side.get("rescale", 1 / 255)))
    return BackboneSpec(
        name=f"{PREFIX}{path}",
        family="ONNX",
        constructor="onnxruntime.InferenceSession",
        preprocess=preprocess,
        native_size=size,
        min_size=8,
        channels=channels,
        downsample=1,
        description=f"ONNX model {path.name} ({kind} output, {layout}).",
        group="ONNX",
        source="onnx",
        preset=str(path),
        tokens=kind == "tokens",
        prefix_tokens=int(side.get("prefix_tokens", 1)),
        vector_output=kind == "vector",
        stem=source_stem(f"{PREFIX}{path.stem}"),
    )


def onnx_weights(spec, weights: str):
    """An ONNX file is its own weights: pretrained/auto/imagenet; random cannot be drawn for it."""
    from featx.extract.backbones import WeightsInfo
    from featx.files import file_sha256

    if weights not in ("pretrained", "auto", "imagenet"):
        raise WeightsError(
            f"Backbone {spec.name!r} is an ONNX file: its weights are the file's own (--weights pretrained). "
            f"Got {weights!r} instead."
        )
    path = Path(spec.preset)
    return WeightsInfo(kind="onnx", label=path.name, sha256=file_sha256(path), seed=-1, path=str(path),
                       preprocess=spec.preprocess)  # fmt: skip


def onnx_forward(spec, weights, image_size, poolings):
    """(b, h, w, 3) float32 raw RGB -> {pooling: (b, width) float32}, through ONNX Runtime."""
    from featx.extract import hub
    from featx.extract.backbones import GEM_EPS, GEM_P

    path = Path(weights.path or spec.preset)
    side, session, input_name, output_name, _, _ = _settings(path)
    layout = side.get("layout", "NCHW")
    scale, offset = (np.asarray(v, dtype=np.float32) for v in hub.parse_affine(weights.preprocess or spec.preprocess))
    kind = "tokens" if spec.tokens else ("vector" if spec.vector_output else "map")

    def forward(images: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(images, dtype=np.float32) * scale + offset
        if layout == "NCHW":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        out = np.asarray(session.run([output_name], {input_name: x})[0], dtype=np.float32)
        result = {}
        for pooling in poolings:
            result[pooling] = _pool(out, pooling, kind, layout, spec.prefix_tokens, GEM_P, GEM_EPS)
        return result

    return forward


def _pool(out: np.ndarray, pooling: str, kind: str, layout: str, prefix: int, p: float, eps: float) -> np.ndarray:
    if kind == "vector":
        return out.reshape(len(out), -1)
    if kind == "tokens":
        patches = out[:, prefix:, :]
        if pooling == "cls":
            return out[:, 0, :]
        if pooling == "mean":
            return patches.mean(axis=1)
        if pooling == "cls+mean":
            return np.concatenate([out[:, 0, :], patches.mean(axis=1)], axis=-1)
        return (np.maximum(patches, eps) ** p).mean(axis=1) ** (1.0 / p)
    spatial = (2, 3) if layout == "NCHW" else (1, 2)
    if pooling == "avg":
        return out.mean(axis=spatial)
    if pooling == "max":
        return out.max(axis=spatial)
    return (np.maximum(out, eps) ** p).mean(axis=spatial) ** (1.0 / p)
