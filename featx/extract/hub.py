"""keras-hub as a backbone source: presets from Hugging Face (`hf://org/repo`), Kaggle or a local folder.

keras-hub (the `featx[hub]` extra) builds DINOv2, DINOv3, ViT and timm CNN backbones and
converts Hugging Face checkpoints on load: transformers-format (`config.json` with a
`model_type`, `model.safetensors`) and timm-format (`config.json` with an `architecture`).
featx always builds from a local folder: an `hf://` preset's files are fetched first
(`huggingface_hub.hf_hub_download`, through keras-hub's own `get_file`) into the Hugging Face
cache, hashed, and the folder holding them is handed to `Backbone.from_preset`, so an
`hf://` checkpoint and the same files in a folder load through one code path.

Identity: the weights of a preset are its URI plus the sha256 of every file featx read
(`preset_sha256`), so a changed checkpoint invalidates the cache. Preprocessing comes from
the preset: a Keras preset's `image_converter.json` (scale, offset), else a transformers
`preprocessor_config.json` (image_mean, image_std, rescale_factor), else the spec's default;
it is recorded in the cache attr `preprocess` as `affine:scale=...;offset=...` (per channel,
applied to raw 0..255 RGB inside the model). featx's own decode resizes the image (its
--resize-mode), so a converter's resize and interpolation are not used.

Nothing here imports keras-hub, TensorFlow or huggingface_hub at module import time.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from featx.errors import BackboneError, FeatxError, WeightsError

HUB_EXTRA = "pip install 'featx[hub]'"
URI_PREFIXES = ("hf://", "kaggle://")
CONFIG_FILE = "config.json"
# Files a preset may hold besides config.json, read when present (first match of each group wins).
KERAS_WEIGHTS = ("model.weights.h5", "model.weights.json")
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
OPTIONAL_FILES = ("image_converter.json", "preprocessor_config.json", "metadata.json")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Token backbones featx reads off keras-hub: class -> how many tokens precede the patch tokens.
TOKEN_CLASSES = ("DINOV2Backbone", "DINOV3Backbone", "ViTBackbone")
TRANSFORMERS_TOKEN_TYPES = {"dinov2": "DINOV2Backbone", "dinov2_with_registers": "DINOV2Backbone",
                            "dinov3_vit": "DINOV3Backbone", "vit": "ViTBackbone"}  # fmt: skip


def is_hub_source(name) -> bool:
    """True for an hf:// or kaggle:// URI, or a local folder holding a config.json (a preset folder)."""
    if not isinstance(name, str):
        return False
    if name.startswith(URI_PREFIXES):
        return True
    path = Path(name).expanduser()
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def builtin_preset_handle(name: str) -> str | None:
    """keras-hub's Kaggle handle for one of its built-in preset names ('dinov2_small' ->
    'kaggle://keras/dinov2/keras/dinov2_small/1'); None for any other name.

    Only names shaped like keras-hub's (lower case, underscores) import keras-hub, so a typo of a registry
    name ('resnet5') stays a fast error."""
    import re

    if not re.fullmatch(r"[a-z0-9]+(?:_[a-z0-9.]+)+", name):
        return None
    try:
        keras_hub = import_keras_hub()
    except FeatxError:
        return None
    entry = keras_hub.models.Backbone.presets.get(name)
    handle = entry.get("kaggle_handle") if isinstance(entry, dict) else None
    return str(handle) if handle else None


def import_keras_hub():
    """The keras_hub module; FeatxError naming the extra when it is missing."""
    from featx.runtime import import_tensorflow_quietly

    import_tensorflow_quietly()
    try:
        import keras_hub
    except ImportError:
        raise FeatxError(
            f"keras-hub backbones need keras-hub, which is not installed; install it with {HUB_EXTRA}."
        ) from None
    return keras_hub


# ---------------------------------------------------------------- fetching and hashing


def _download_help(uri: str) -> str:
    repo = uri.removeprefix("hf://")
    if uri.startswith("hf://"):
        return (
            f"download the repository's config.json, model.safetensors and preprocessor_config.json (e.g. "
            f"`huggingface-cli download {repo} --local-dir DIR` on a machine with network, or from "
            f"https://huggingface.co/{repo}) and pass --backbone DIR, or put them in the Hugging Face cache "
            f"({_hf_cache()}) and set HF_HUB_OFFLINE=1"
        )
    return f"download the preset's files from Kaggle ({uri}) into a folder and pass --backbone that folder"


def _hf_cache() -> str:
    return os.environ.get("HF_HUB_CACHE") or str(Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")


def _fetch(uri: str, name: str) -> Path | None:
    """The local path of one preset file: from the folder, or fetched by keras-hub's get_file; None when absent."""
    path = Path(uri).expanduser()
    if not uri.startswith(URI_PREFIXES):
        found = path / name
        return found if found.is_file() else None
    import_keras_hub()  # FeatxError naming the extra when keras-hub is missing
    from keras_hub.src.utils.preset_utils import get_file

    try:
        return Path(get_file(uri, name))
    except FileNotFoundError:
        return None
    except Exception as error:  # huggingface_hub raises its own errors (offline, gated, HTTP)
        reason = " ".join(str(error).split())[:160] or type(error).__name__
        if "EntryNotFound" in type(error).__name__ or "404" in reason:
            return None
        raise WeightsError(f"The preset {uri} could not be fetched ({reason}); {_download_help(uri)}.") from None


@dataclass(frozen=True)
class PresetFiles:
    """A preset resolved to local files: its folder, the config, the files read and their combined sha256."""

    uri: str
    folder: str  # where from_preset reads them (the folder itself, or the Hugging Face cache's snapshot)
    config: dict
    files: tuple[str, ...]
    sha256: str

    @property
    def format(self) -> str:
        if "registered_name" in self.config:
            return "keras"
        if "model_type" in self.config:
            return "transformers"
        if "architecture" in self.config:
            return "timm"
        return "unknown"


_RESOLVED: dict[str, PresetFiles] = {}


def preset_files(uri: str) -> PresetFiles:
    """config.json, the weights and the preprocessing files of a preset, local (fetched once per process) and hashed.

    WeightsError with what to download and where to put it when an hf:// preset cannot be fetched.
    """
    key = uri if uri.startswith(URI_PREFIXES) else str(Path(uri).expanduser().resolve())
    if key in _RESOLVED:
        return _RESOLVED[key]
    config_path = _fetch(key, CONFIG_FILE)
    if config_path is None:
        raise WeightsError(f"The preset {uri} has no {CONFIG_FILE}; {_download_help(uri)}.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise WeightsError(f"The preset file '{config_path}' is not readable JSON ({error}).") from None
    found = {CONFIG_FILE: config_path}
    weights_names = KERAS_WEIGHTS if "registered_name" in config else SAFETENSORS
    for name in weights_names:
        path = _fetch(key, name)
        if path is not None:
            found[name] = path
            if name.endswith(".json"):  # sharded weights: every shard the index names
                index = json.loads(path.read_text(encoding="utf-8"))
                shards = index.get("weight_map", {}).values() if "weight_map" in index else index.get("shards", ())
                for shard in sorted(set(shards)):
                    shard_path = _fetch(key, shard)
                    if shard_path is None:
                        raise WeightsError(f"The preset {uri} lacks the weights shard {shard}; {_download_help(uri)}.")
                    found[shard] = shard_path
            break
    else:
        raise WeightsError(
            f"The preset {uri} has no weights file (one of {list(weights_names)}); {_download_help(uri)}."
        )
    for name in OPTIONAL_FILES:
        path = _fetch(key, name)
        if path is not None:
            found[name] = path
    from featx.files import file_sha256

    digest = hashlib.sha256()
    for name in sorted(found):
        digest.update(f"{name}\0{file_sha256(found[name])}\n".encode())
    folders = {str(path.parent) for name, path in found.items() if "/" not in name}
    folder = str(found[CONFIG_FILE].parent)
    if len(folders) > 1:  # a faked or unusual fetch: gather the files in one folder featx owns
        folder = _gathered(found, digest.hexdigest())
    resolved = PresetFiles(key, folder, config, tuple(sorted(found)), digest.hexdigest())
    _RESOLVED[key] = resolved
    return resolved


def _gathered(found: dict[str, Path], sha256: str) -> str:
    from featx import config as featx_config

    folder = featx_config.keras_home() / "featx-presets" / sha256[:16]
    for name, path in found.items():
        target = folder / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path.resolve(), target)
    return str(folder)


def available(uri: str) -> bool:
    """True when the preset's files are here without a download (a folder, or HF_HUB_OFFLINE finds them cached)."""
    if not uri.startswith(URI_PREFIXES):
        return (Path(uri).expanduser() / CONFIG_FILE).is_file()
    if not uri.startswith("hf://"):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    repo = uri.removeprefix("hf://")
    cached = try_to_load_from_cache(repo, CONFIG_FILE)
    return isinstance(cached, str)


# ---------------------------------------------------------------- what the preset holds


@dataclass(frozen=True)
class Architecture:
    """What featx needs to know about a preset's network without building it."""

    class_name: str  # a keras_hub.models class, e.g. "DINOV2Backbone"
    config: dict  # its constructor arguments (random init builds it from these)
    native_size: int
    channels: int  # token width (hidden dim), or the final feature map's channels
    tokens: bool  # True: (b, prefix + patches, dim) tokens; False: a (b, h, w, c) feature map
    prefix_tokens: int = 1  # class token + register tokens before the patch tokens
    patch_size: int = 0


def architecture_of(files: PresetFiles) -> Architecture:
    """The network a preset describes; BackboneError for one featx cannot read tokens or maps from."""
    config = files.config
    fmt = files.format
    if fmt == "keras":
        class_name = str(config.get("class_name") or config["registered_name"].split(">")[-1])
        kwargs = dict(config.get("config", {}))
        for key in ("name", "trainable", "dtype"):
            kwargs.pop(key, None)
        return _keras_architecture(class_name, kwargs, files.uri)
    if fmt == "transformers":
        model_type = str(config.get("model_type"))
        if model_type not in TRANSFORMERS_TOKEN_TYPES:
            raise BackboneError(
                f"The preset {files.uri} is a transformers {model_type!r} model; featx reads "
                f"{sorted(TRANSFORMERS_TOKEN_TYPES)} checkpoints (or export it to ONNX: --backbone onnx:FILE)."
            )
        class_name = TRANSFORMERS_TOKEN_TYPES[model_type]
        size = int(config.get("image_size", 224))
        registers = int(config.get("num_register_tokens", 4 if class_name == "DINOV3Backbone" else 0))
        return Architecture(
            class_name,
            {},
            native_size=size,
            channels=int(config["hidden_size"]),
            tokens=True,
            prefix_tokens=1 + registers,
            patch_size=int(config["patch_size"]),
        )
    if fmt == "timm":
        raise BackboneError(
            f"The preset {files.uri} is a timm CNN; use a registered timm entry (see `featx backbones`) whose "
            "feature-map width featx knows."
        )
    raise BackboneError(f"The preset {files.uri} has a config.json featx does not recognise (no keras-hub class, "
                        "transformers model_type or timm architecture).")  # fmt: skip


def _keras_architecture(class_name: str, kwargs: dict, where: str) -> Architecture:
    if class_name not in TOKEN_CLASSES:
        raise BackboneError(
            f"The preset {where} holds a {class_name}; featx reads token backbones {list(TOKEN_CLASSES)} from "
            "presets (CNNs through the registry's keras and timm entries)."
        )
    shape = kwargs.get("image_shape") or (224, 224, 3)
    registers = int(kwargs.get("num_register_tokens", 4 if class_name == "DINOV3Backbone" else 0))
    use_class = bool(kwargs.get("use_class_token", True))
    return Architecture(
        class_name,
        kwargs,
        native_size=int(shape[0]),
        channels=int(kwargs["hidden_dim"]),
        tokens=True,
        prefix_tokens=(1 if use_class else 0) + (registers if class_name != "ViTBackbone" else 0),
        patch_size=int(kwargs["patch_size"]),
    )


def preset_preprocessing(files: PresetFiles, default: str) -> str:
    """The preset's preprocessing as featx's canonical string, else `default`."""
    names = set(files.files)
    folder = Path(files.folder)
    if "image_converter.json" in names:
        data = json.loads((folder / "image_converter.json").read_text(encoding="utf-8"))
        cfg = data.get("config", data)
        if cfg.get("scale") is not None or cfg.get("offset") is not None:
            return affine(cfg.get("scale"), cfg.get("offset"))
    if "preprocessor_config.json" in names:
        cfg = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
        rescale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
        if cfg.get("do_normalize", True) and cfg.get("image_mean") is not None:
            return normalise(cfg["image_mean"], cfg["image_std"], rescale)
        return affine(rescale, 0.0)
    return default


def _three(value, fill: float) -> list[float]:
    if value is None:
        return [fill] * 3
    if isinstance(value, int | float):
        return [float(value)] * 3
    values = [float(v) for v in value]
    return values * 3 if len(values) == 1 else values


def affine(scale, offset) -> str:
    """'affine:scale=a,b,c;offset=d,e,f': x * scale + offset per RGB channel, x the raw 0..255 value."""
    scales, offsets = _three(scale, 1.0), _three(offset, 0.0)
    return "affine:scale=" + ",".join(f"{v:.9g}" for v in scales) + ";offset=" + ",".join(f"{v:.9g}" for v in offsets)


def normalise(mean, std, rescale: float = 1 / 255) -> str:
    """(x * rescale - mean) / std as an affine string."""
    means, stds = _three(mean, 0.0), _three(std, 1.0)
    return affine([rescale / s for s in stds], [-m / s for m, s in zip(means, stds)])


def parse_affine(text: str) -> tuple[list[float], list[float]]:
    """(scale, offset) of an affine preprocessing string."""
    body = text.removeprefix("affine:")
    parts = dict(part.split("=", 1) for part in body.split(";"))
    return [float(v) for v in parts["scale"].split(",")], [float(v) for v in parts["offset"].split(",")]


IMAGENET_AFFINE = normalise(IMAGENET_MEAN, IMAGENET_STD)
UNIT_AFFINE = affine(1 / 127.5, -1.0)  # ViT (keras-hub's ViT converter): [-1, 1]


# ---------------------------------------------------------------- building


def build_network(spec, weights, image_size: tuple[int, int]):
    """The keras-hub backbone: from the preset folder (weights kind "preset"), or seeded random from its architecture.

    Returns the Keras model whose output is tokens (b, prefix + patches, dim) or a map (b, h, w, c).
    """
    import keras

    keras_hub = import_keras_hub()
    height, width = image_size
    if weights.kind == "preset":
        try:
            return keras_hub.models.Backbone.from_preset(weights.path, image_shape=(height, width, 3))
        except (ValueError, KeyError, OSError) as error:
            raise WeightsError(
                f"The preset {weights.label} could not be loaded into {spec.name!r} ({_short(error)})."
            ) from None
    keras.utils.set_random_seed(weights.seed)
    class_name, config = spec.hub_architecture()
    if class_name.startswith("timm:"):
        import importlib

        converter = importlib.import_module(f"keras_hub.src.utils.timm.convert_{class_name.split(':')[1]}")
        cls = converter.backbone_cls
        config = converter.convert_backbone_config({"architecture": config["architecture"]})
        return cls(**config, image_shape=(height, width, 3))
    if not config and spec.preset:  # an ad hoc transformers preset: its own converter gives the config
        config = _converted_config(spec.preset)
    cls = getattr(keras_hub.models, class_name)
    return cls(**{**config, "image_shape": (height, width, 3)})


def _converted_config(uri: str) -> dict:
    from keras_hub.src.utils.transformers.preset_loader import TransformersPresetLoader

    files = preset_files(uri)
    loader = TransformersPresetLoader(files.folder, files.config)
    return dict(loader.converter.convert_backbone_config(files.config))


def _short(error) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."
