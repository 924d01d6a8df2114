"""The backbone registry and the one function that builds a frozen, pooled feature extractor.

A registry entry (BackboneSpec) is all it takes to support a new backbone: its
Keras constructor, its own preprocessing (callers never choose it), its input
sizes and the arithmetic that gives its final feature-map size, so embedding
widths are known without building anything.

``create_backbone`` returns one Keras model whose input is raw RGB in 0..255
(float32); the spec's preprocessing runs inside it exactly once, and every
requested pooling is read off the same final feature map in one forward pass.

Weights: ``imagenet`` is Keras's own ImageNet file (the name, origin and md5 Keras
pins, kept in the registry), fetched with the public ``keras.utils.get_file`` into
``featx.config.keras_models_dir()`` and handed to the Keras constructor as a path;
``random`` is drawn from a recorded seed so the network can be rebuilt bit for
bit; a PATH loads a local weights file and records its sha256.

Sources (BackboneSpec.source): "keras" (keras.applications, the CNNs above), "keras-hub"
(featx/extract/hub.py: DINOv2/DINOv3/ViT token models and timm CNNs, registry entries or a
preset given as `hf://org/repo`, `kaggle://...` or a folder), "onnx" (featx/extract/onnx.py:
`onnx:FILE`), and "featx" (tiny, pixels). `pretrained` weights are the source's published
ones (ImageNet for the Keras CNNs, the preset's checkpoint for keras-hub entries). Token
models pool tokens (cls, mean of patch tokens, cls+mean, gem over patch tokens); CNNs pool
their final feature map (avg, max, gem, flatten). Every spec names its group
(BACKBONE_GROUPS) for `featx backbones`, the cache, the leaderboard and the report.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from featx import config
from featx.errors import BackboneError, WeightsError, closest, one_of_message
from featx.files import file_sha256
from featx.runtime import import_tensorflow_quietly

MAP_POOLINGS = ("avg", "max", "gem", "flatten")  # of a CNN's final feature map
TOKEN_POOLINGS = ("cls", "mean", "cls+mean", "gem")  # of a token model's output (mean and gem: patch tokens only)
POOLINGS = (*MAP_POOLINGS, "cls", "mean", "cls+mean")
BACKBONE_GROUPS = ("ImageNet CNN", "self-supervised ViT", "medical foundation", "ONNX", "floor")
SOURCES = ("keras", "keras-hub", "onnx", "featx")
# Shown wherever numbers from a randomly initialised backbone appear: screen, caches, tables, report, predictions.
RANDOM_BANNER = (
    "RANDOM-INIT WEIGHTS: the backbone was randomly initialised, not ImageNet; these numbers only test the pipeline"
)
PREPROCESS_MODES = ("caffe", "tf", "torch", "none")
WEIGHT_KINDS = ("imagenet", "pretrained", "random", "auto")
WEIGHTS_FILE_SUFFIXES = (".weights.h5", ".h5", ".keras")
GEM_P = 3.0
GEM_EPS = 1e-6
# The raw-pixel floor: grayscale thumbnails at these sides, largest first, each flattened row by row.
PIXEL_FLOOR = "pixels"
PIXEL_SIZES = (32, 16)
# ITU-R BT.601 luma: RGB -> gray (X-rays are gray already, so any weighting gives them back unchanged).
LUMA_RGB = (0.299, 0.587, 0.114)

# Feature-map arithmetic: each op is (kernel, stride, total padding), out = floor((x + pad - kernel) / stride) + 1.
# Stride-1 "same" layers change nothing and are left out.
_CEIL_HALF = (1, 2, 0)  # "same" stride 2 (and Keras's ZeroPadding + valid pairs): ceil(x / 2)
_FLOOR_HALF = (2, 2, 0)  # 2x2 stride-2 "valid" pooling: floor(x / 2)
_VALID3_S2 = (3, 2, 0)
_VALID3_S1 = (3, 1, 0)
_INCEPTION_STEM = (_VALID3_S2, _VALID3_S1, _VALID3_S2, _VALID3_S1, _VALID3_S2, _VALID3_S2, _VALID3_S2)

# Attention maps dominate a ViT's activations: heads x tokens^2 floats per layer and image. A token model's
# forward pass is cut into sub-batches that keep them under this budget (the pass holds a few such maps at
# once), so 518 px (1,370 tokens) does not blow up memory whatever --batch-size says.
ATTENTION_BUDGET_MIB = 256
MAX_TOKEN_BATCH = 32


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone: its Keras constructor, preprocessing, sizes, feature-map arithmetic, weights."""

    name: str
    family: str
    constructor: str  # e.g. "keras.applications.VGG16"; "featx.extract.backbones.build_tiny" for the test net
    preprocess: str  # "caffe" | "tf" | "torch" | "none" (the network scales its own input)
    native_size: int
    min_size: int
    channels: int  # channels of the final feature map
    downsample: int  # nominal input size / final feature-map size
    description: str
    size_ops: tuple[tuple[int, int, int], ...] = ()
    weights_file_pattern: str = ""  # the file Keras's get_file asks for; "{rows}" where it depends on size
    weights_url: str = ""  # the folder Keras downloads that file from (origin = weights_url + file name)
    weights_md5: str = ""  # the md5 Keras pins the file with; "" where Keras pins none (MobileNetV2)
    # Keras's EfficientNet (B0-B7) adds Rescaling(1 / sqrt(std)) after its stem Normalization only when it is
    # given weights="imagenet" (tensorflow/tensorflow#49930); built from a weights path it lacks that layer, so
    # featx puts it back with these per-channel ImageNet standard deviations. () for every other family.
    imagenet_rescale_stddev: tuple[float, ...] = ()
    # A network with no weights at all (the raw-pixel floor): every --weights value resolves to "none".
    weightless: bool = False
    # The network returns one (1, 1, channels) vector whatever the input size (so every pooling gives that vector).
    vector_output: bool = False
    group: str = "ImageNet CNN"  # one of BACKBONE_GROUPS
    source: str = "keras"  # one of SOURCES
    preset: str = ""  # keras-hub: where the pretrained weights are (hf://..., kaggle://..., a folder); onnx: the file
    architecture: str = ""  # keras-hub: JSON {"class": ..., "config": {...}} that random weights build
    licence: str = ""  # licence and gating of the pretrained weights
    tokens: bool = False  # the network returns tokens (b, prefix + patches, dim) instead of a feature map
    prefix_tokens: int = 1  # tokens before the patch tokens (class token + registers)
    stem: str = ""  # the cache file stem when the name is not one (hf://..., a folder, onnx:FILE)

    @property
    def poolings(self) -> tuple[str, ...]:
        """The poolings this backbone's output supports."""
        if self.tokens:
            return TOKEN_POOLINGS
        if self.source in ("keras-hub", "onnx"):
            return ("avg", "max", "gem")
        return MAP_POOLINGS

    @property
    def file_stem(self) -> str:
        """The name of its cache file, features/<file_stem>.h5."""
        return self.stem or self.name

    @property
    def pretrained(self) -> bool:
        """True when the backbone has published weights featx can load (ImageNet files, a preset, an ONNX file)."""
        return self.imagenet_weights or bool(self.preset)

    def hub_architecture(self) -> tuple[str, dict]:
        """(keras-hub class, constructor arguments) random weights build; ("", {}) when the preset's own config decides."""
        if not self.architecture:
            return "", {}
        data = json.loads(self.architecture)
        return str(data["class"]), dict(data.get("config", {}))

    @property
    def imagenet_weights(self) -> bool:
        """True when Keras publishes ImageNet weights for this backbone."""
        return bool(self.weights_file_pattern)

    def feature_map_size(self, image_size) -> tuple[int, int]:
        """(h, w) of the final feature map for an input of `image_size` (h, w)."""
        height, width = _pair(image_size)
        if self.vector_output:
            return 1, 1
        return self._reduce(height), self._reduce(width)

    def _reduce(self, size: int) -> int:
        for kernel, stride, pad in self.size_ops:
            size = (size + pad - kernel) // stride + 1
        return size

    def embedding_width(self, pooling: str, image_size=None) -> int:
        """Columns of the embedding for this pooling (flatten depends on the image size)."""
        check_pooling(pooling, self)
        if pooling == "cls+mean":
            return 2 * self.channels
        if pooling != "flatten":
            return self.channels
        height, width = self.feature_map_size(image_size or self.native_size)
        return height * width * self.channels

    def weights_file(self, image_size=None) -> str:
        """The ImageNet weights file name Keras downloads into keras_models_dir() ('' when there is none)."""
        height, width = _pair(image_size or self.native_size)
        rows = height if height == width and height in (96, 128, 160, 192, 224) else 224
        return self.weights_file_pattern.format(rows=rows)

    def weights_origin(self, image_size=None) -> str:
        """The URL Keras downloads weights_file(image_size) from ('' when there is none)."""
        return self.weights_url + self.weights_file(image_size) if self.imagenet_weights else ""


_KERAS_APPLICATIONS = "https://storage.googleapis.com/tensorflow/keras-applications/"
_EFFICIENTNET_STDDEV_RGB = (0.229, 0.224, 0.225)  # keras.applications.efficientnet's IMAGENET_STDDEV_RGB


def _spec(
    name,
    family,
    constructor,
    preprocess,
    native,
    minimum,
    channels,
    ops,
    weights_file,
    description,
    url="",
    md5="",
    rescale_stddev=(),
    weightless=False,
    vector_output=False,
):
    return BackboneSpec(
        name=name,
        family=family,
        constructor=constructor,
        preprocess=preprocess,
        native_size=native,
        min_size=minimum,
        channels=channels,
        downsample=2 ** len([op for op in ops if op[1] == 2]),
        description=description,
        size_ops=ops,
        weights_file_pattern=weights_file,
        weights_url=url,
        weights_md5=md5,
        imagenet_rescale_stddev=tuple(rescale_stddev),
        weightless=weightless,
        vector_output=vector_output,
    )


_FIVE_CEIL = (_CEIL_HALF,) * 5

BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        _spec(
            "vgg16",
            "VGG",
            "keras.applications.VGG16",
            "caffe",
            224,
            32,
            512,
            (_FLOOR_HALF,) * 5,
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "VGG16 (Simonyan & Zisserman 2015); its flatten feature (7x7x512 = 25,088 at 224) is the one Laban et al. use.",
            url=f"{_KERAS_APPLICATIONS}vgg16/",
            md5="6d6bbae143d832006294945121d1f1fc",
        ),
        _spec(
            "resnet50",
            "ResNet",
            "keras.applications.ResNet50",
            "caffe",
            224,
            32,
            2048,
            _FIVE_CEIL,
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "ResNet-50 (He et al. 2016), the common transfer-learning baseline.",
            url=f"{_KERAS_APPLICATIONS}resnet/",
            md5="4d473c1dd8becc155b73f8504c6f6626",
        ),
        _spec(
            "resnet101v2",
            "ResNet",
            "keras.applications.ResNet101V2",
            "tf",
            224,
            32,
            2048,
            _FIVE_CEIL,
            "resnet101v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "ResNet-101 v2, pre-activation residual units (He et al. 2016, identity mappings).",
            url=f"{_KERAS_APPLICATIONS}resnet/",
            md5="c0ed64b8031c3730f411d2eb4eea35b5",
        ),
        _spec(
            "densenet121",
            "DenseNet",
            "keras.applications.DenseNet121",
            "torch",
            224,
            32,
            1024,
            (_CEIL_HALF, _CEIL_HALF, _FLOOR_HALF, _FLOOR_HALF, _FLOOR_HALF),
            "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "DenseNet-121 (Huang et al. 2017), the CheXNet backbone (Rajpurkar et al. 2017).",
            url=f"{_KERAS_APPLICATIONS}densenet/",
            md5="30ee3e1110167f948a6b9946edeeb738",
        ),
        _spec(
            "xception",
            "Xception",
            "keras.applications.Xception",
            "tf",
            299,
            71,
            2048,
            (_VALID3_S2, _VALID3_S1) + (_CEIL_HALF,) * 4,
            "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "Xception (Chollet 2017), depthwise-separable Inception.",
            url=f"{_KERAS_APPLICATIONS}xception/",
            md5="b0042744bf5b25fce3cb969f33bebb97",
        ),
        _spec(
            "inceptionv3",
            "Inception",
            "keras.applications.InceptionV3",
            "tf",
            299,
            75,
            2048,
            _INCEPTION_STEM,
            "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "Inception-v3 (Szegedy et al. 2016), the backbone of Kermany et al. 2018 on these chest X-rays.",
            url=f"{_KERAS_APPLICATIONS}inception_v3/",
            md5="bcbd6486424b2319ff4ef7d526e38f63",
        ),
        _spec(
            "inceptionresnetv2",
            "Inception",
            "keras.applications.InceptionResNetV2",
            "tf",
            299,
            75,
            1536,
            _INCEPTION_STEM,
            "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "Inception-ResNet-v2 (Szegedy et al. 2017).",
            url=f"{_KERAS_APPLICATIONS}inception_resnet_v2/",
            md5="d19885ff4a710c122648d3b5c3b684e4",
        ),
        _spec(
            "mobilenetv2",
            "MobileNet",
            "keras.applications.MobileNetV2",
            "tf",
            224,
            32,
            1280,
            _FIVE_CEIL,
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5",
            "MobileNetV2 (Sandler et al. 2018), inverted residuals; light enough for CPU runs.",
            url=f"{_KERAS_APPLICATIONS}mobilenet_v2/",  # Keras pins no hash for these files
        ),
        _spec(
            "mobilenetv3small",
            "MobileNet",
            "keras.applications.MobileNetV3Small",
            "none",
            224,
            32,
            576,
            _FIVE_CEIL,
            "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
            "MobileNetV3-Small (Howard et al. 2019); rescales its own input; the fastest real backbone here.",
            url=f"{_KERAS_APPLICATIONS}mobilenet_v3/",
            md5="d3e8ec802a04aa4fc771ee12a9a9b836",
        ),
        _spec(
            "efficientnetb7",
            "EfficientNet",
            "keras.applications.EfficientNetB7",
            "none",
            600,
            32,
            2560,
            _FIVE_CEIL,
            "efficientnetb7_notop.h5",
            "EfficientNet-B7 (Tan & Le 2019); rescales and normalises its own input; heavy (600 px native).",
            url="https://storage.googleapis.com/keras-applications/",
            md5="cbcfe4450ddf6f3ad90b1b398090fe4a",
            rescale_stddev=_EFFICIENTNET_STDDEV_RGB,
        ),
        _spec(
            "efficientnetv2s",
            "EfficientNet",
            "keras.applications.EfficientNetV2S",
            "none",
            384,
            32,
            1280,
            _FIVE_CEIL,
            "efficientnetv2-s_notop.h5",
            "EfficientNetV2-S (Tan & Le 2021); rescales its own input.",
            url=f"{_KERAS_APPLICATIONS}efficientnet_v2/",
            md5="af0682fb74e8c54910f2d4393339c070",
        ),
        _spec(
            "tiny",
            "test",
            "featx.extract.backbones.build_tiny",
            "tf",
            32,
            8,
            32,
            (_CEIL_HALF,) * 3,
            "",
            "A three-layer random-init CNN for tests and demos: runs the whole pipeline in seconds; no ImageNet weights.",
        ),
        _spec(
            PIXEL_FLOOR,
            "baseline",
            "featx.extract.backbones.build_pixels",
            "none",
            PIXEL_SIZES[0],
            8,
            sum(size * size for size in PIXEL_SIZES),
            (),
            "",
            "The floor under every leaderboard: the grayscale image at 32x32 and 16x16 pixels, flattened (1,280 "
            "values in 0..1; every pooling gives the same vector). No weights, no network; seconds on a CPU.",
            weightless=True,
            vector_output=True,
        ),
    )
}


def _hub(name, group, preset, klass, config, native, channels, description, licence, preprocess, tokens=True, **extra):
    prefix = 1 + int(config.get("num_register_tokens", 0)) if tokens else 1
    patch = int(config.get("patch_size", 32))
    return BackboneSpec(
        name=name,
        family=klass.split(":")[-1].removesuffix("Backbone"),
        constructor="keras_hub.models." + klass,
        preprocess=preprocess,
        native_size=native,
        min_size=patch if tokens else 32,
        channels=channels,
        downsample=patch,
        description=description,
        size_ops=extra.pop("ops", ()),
        group=group,
        source="keras-hub",
        preset=preset,
        architecture=json.dumps({"class": klass, "config": config}, sort_keys=True),
        licence=licence,
        tokens=tokens,
        prefix_tokens=prefix,
    )


def _dinov2(size: str, registers: bool = False) -> dict:
    dim, layers, heads = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}[size]
    return {
        "patch_size": 14,
        "num_layers": layers,
        "hidden_dim": dim,
        "num_heads": heads,
        "intermediate_dim": 4 * dim,
        "layer_scale_init_value": 1.0,
        "num_register_tokens": 4 if registers else 0,
        "position_embedding_shape": [518, 518, 3],
    }


def _dinov3(size: str) -> dict:
    dim, heads = {"small": (384, 6), "base": (768, 12)}[size]
    return {
        "patch_size": 16,
        "num_layers": 12,
        "hidden_dim": dim,
        "num_heads": heads,
        "intermediate_dim": 4 * dim,
        "layer_scale_init_value": 1.0,
        "num_register_tokens": 4,
        "use_key_bias": False,
    }


# hub.py's canonical affine strings, spelled out so that the registry imports nothing (checked by a test)
_IMAGENET_NORM = "affine:scale=0.0171247538,0.0175070028,0.0174291939;offset=-2.11790393,-2.03571429,-1.80444444"
_UNIT_RANGE = "affine:scale=0.00784313725,0.00784313725,0.00784313725;offset=-1,-1,-1"
_RAD_DINO_NORM = "affine:scale=0.0151822247,0.0151822247,0.0151822247;offset=-2.05458769,-2.05458769,-2.05458769"
_DINOV2_LICENCE = "Apache-2.0 (facebook/dinov2-*), ungated"
_DINOV3_LICENCE = "DINOv3 License (Meta); gated: accept the terms on the model page, then log in to download"

_HUB_SPECS = (
    _hub("rad-dino", "medical foundation", "hf://microsoft/rad-dino", "DINOV2Backbone", _dinov2("base"), 518, 768,
         "RAD-DINO (Perez-Garcia et al. 2025): DINOv2 ViT-B/14 trained on chest X-rays; 518 px native.",
         "Microsoft Research Licence Agreement (MSRLA): research use, ungated", _RAD_DINO_NORM),
    _hub("dinov2-small", "self-supervised ViT", "hf://facebook/dinov2-small", "DINOV2Backbone", _dinov2("small"), 224,
         384, "DINOv2 ViT-S/14 (Oquab et al. 2024), self-supervised on LVD-142M.", _DINOV2_LICENCE, _IMAGENET_NORM),
    _hub("dinov2-base", "self-supervised ViT", "hf://facebook/dinov2-base", "DINOV2Backbone", _dinov2("base"), 224,
         768, "DINOv2 ViT-B/14, self-supervised on LVD-142M.", _DINOV2_LICENCE, _IMAGENET_NORM),
    _hub("dinov2-large", "self-supervised ViT", "hf://facebook/dinov2-large", "DINOV2Backbone", _dinov2("large"), 224,
         1024, "DINOv2 ViT-L/14, self-supervised on LVD-142M.", _DINOV2_LICENCE, _IMAGENET_NORM),
    _hub("dinov2-small-reg", "self-supervised ViT", "hf://facebook/dinov2-with-registers-small", "DINOV2Backbone",
         _dinov2("small", True), 224, 384, "DINOv2 ViT-S/14 with 4 register tokens (Darcet et al. 2024).",
         _DINOV2_LICENCE, _IMAGENET_NORM),
    _hub("dinov2-base-reg", "self-supervised ViT", "hf://facebook/dinov2-with-registers-base", "DINOV2Backbone",
         _dinov2("base", True), 224, 768, "DINOv2 ViT-B/14 with 4 register tokens.", _DINOV2_LICENCE, _IMAGENET_NORM),
    _hub("dinov2-large-reg", "self-supervised ViT", "hf://facebook/dinov2-with-registers-large", "DINOV2Backbone",
         _dinov2("large", True), 224, 1024, "DINOv2 ViT-L/14 with 4 register tokens.", _DINOV2_LICENCE,
         _IMAGENET_NORM),
    _hub("dinov3-vits16", "self-supervised ViT", "hf://facebook/dinov3-vits16-pretrain-lvd1689m", "DINOV3Backbone",
         _dinov3("small"), 224, 384, "DINOv3 ViT-S/16 (Simeoni et al. 2025), self-supervised on LVD-1689M.",
         _DINOV3_LICENCE, _IMAGENET_NORM),
    _hub("dinov3-vitb16", "self-supervised ViT", "hf://facebook/dinov3-vitb16-pretrain-lvd1689m", "DINOV3Backbone",
         _dinov3("base"), 224, 768, "DINOv3 ViT-B/16, self-supervised on LVD-1689M.", _DINOV3_LICENCE,
         _IMAGENET_NORM),
    _hub("vit-b16-21k", "ImageNet CNN", "hf://google/vit-base-patch16-224-in21k", "ViTBackbone",
         {"patch_size": 16, "num_layers": 12, "num_heads": 12, "hidden_dim": 768, "mlp_dim": 3072}, 224, 768,
         "ViT-B/16 supervised on ImageNet-21k (Dosovitskiy et al. 2021): the ImageNet transformer baseline.",
         "Apache-2.0, ungated", _UNIT_RANGE),
    _hub("timm-resnet50", "ImageNet CNN", "hf://timm/resnet50.a1_in1k", "timm:resnet", {"architecture": "resnet50"},
         224, 2048, "ResNet-50 with timm's A1 ImageNet recipe (Wightman et al. 2021), converted by keras-hub.",
         "Apache-2.0, ungated", _IMAGENET_NORM, tokens=False),
    _hub("timm-densenet121", "ImageNet CNN", "hf://timm/densenet121.tv_in1k", "timm:densenet",
         {"architecture": "densenet121"}, 224, 1024, "DenseNet-121, torchvision's ImageNet weights via timm.",
         "BSD-3-Clause (torchvision), ungated", _IMAGENET_NORM, tokens=False),
    _hub("tiny-vit", "self-supervised ViT", "", "DINOV2Backbone",
         {"patch_size": 8, "num_layers": 2, "hidden_dim": 32, "num_heads": 2, "intermediate_dim": 64,
          "position_embedding_shape": [32, 32, 3]}, 32, 32,
         "A two-layer random-init DINOv2-style ViT (patch 8) for tests and the demo: the token path in seconds.",
         "", _IMAGENET_NORM),
)  # fmt: skip
_LAST = ("tiny", PIXEL_FLOOR)  # the test net and the floor close the list, as before the hub entries
BACKBONES = {
    **{name: spec for name, spec in BACKBONES.items() if name not in _LAST},
    **{spec.name: spec for spec in _HUB_SPECS},
    "tiny": BACKBONES["tiny"],
    PIXEL_FLOOR: replace(BACKBONES[PIXEL_FLOOR], group="floor"),
}


def backbone_group_of(name: str, attrs=None) -> str:
    """A cache's backbone group: its `backbone_group` attr, else the registry's, else the rule for older caches
    ("floor" for pixels/metadata, "ImageNet CNN" otherwise)."""
    attrs = attrs or {}
    group = attrs.get("backbone_group")
    if group in BACKBONE_GROUPS:
        return str(group)
    if name in (PIXEL_FLOOR, "metadata"):
        return "floor"
    if str(name).startswith("onnx:"):
        return "ONNX"
    spec = BACKBONES.get(name)
    return spec.group if spec is not None else "ImageNet CNN"


# ------------------------------------------------------------------ validation


def get_backbone(name) -> BackboneSpec:
    """The registered spec, or one made for a source (hf://..., kaggle://..., a preset folder, onnx:FILE);
    BackboneError listing the valid names and the closest one."""
    if isinstance(name, BackboneSpec):
        return name
    if isinstance(name, str) and name.startswith("onnx:"):
        from featx.extract import onnx

        return onnx.onnx_spec(name)
    if isinstance(name, str) and name not in BACKBONES:
        from featx.extract import hub

        if hub.is_hub_source(name):
            return _preset_spec(name)
        handle = hub.builtin_preset_handle(name)
        if handle:
            return _preset_spec(handle)
    try:
        return BACKBONES[name]
    except (KeyError, TypeError):
        message = one_of_message("backbone", name, BACKBONES)
        alternatives = (
            "], a keras-hub preset name (dinov2_small), an hf://org/repo preset, a preset folder or onnx:FILE. Got"
        )
        raise BackboneError(message.replace("]. Got", alternatives, 1)) from None


def source_stem(source: str) -> str:
    """A file stem for a source string: 'hf://microsoft/rad-dino' -> 'hf-microsoft-rad-dino'."""
    import re

    text = source.rstrip("/")
    if not text.startswith(("hf://", "kaggle://", "onnx:")):
        text = "preset-" + Path(text).name
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text.replace("://", "-")).strip("-")


@functools.cache
def _preset_spec(source: str) -> BackboneSpec:
    """A spec for a keras-hub preset given by URI or folder (its config.json read, fetched if need be)."""
    from featx.extract import hub

    if not source.startswith(hub.URI_PREFIXES):
        source = str(Path(source).expanduser().resolve())
    files = hub.preset_files(source)
    arch = hub.architecture_of(files)
    groups = {"DINOV2Backbone": "self-supervised ViT", "DINOV3Backbone": "self-supervised ViT"}
    default = hub.UNIT_AFFINE if arch.class_name == "ViTBackbone" else hub.IMAGENET_AFFINE
    return BackboneSpec(
        name=source,
        family=arch.class_name.removesuffix("Backbone"),
        constructor="keras_hub.models." + arch.class_name,
        preprocess=default,
        native_size=arch.native_size,
        min_size=arch.patch_size,
        channels=arch.channels,
        downsample=arch.patch_size,
        description=f"keras-hub {arch.class_name} from the preset {source}.",
        group=groups.get(arch.class_name, "ImageNet CNN"),
        source="keras-hub",
        preset=source,
        architecture=json.dumps({"class": arch.class_name, "config": arch.config}, sort_keys=True, default=list),
        tokens=arch.tokens,
        prefix_tokens=arch.prefix_tokens,
        stem=source_stem(source),
    )


def check_pooling(pooling, spec=None) -> str:
    """The pooling name unchanged; BackboneError with the one-of sentence when it is not in POOLINGS
    (with `spec`: not one that backbone's output supports)."""
    allowed = POOLINGS if spec is None else get_backbone(spec).poolings
    if pooling not in allowed:
        what = "pooling" if spec is None else f"pooling of {get_backbone(spec).name}"
        raise BackboneError(one_of_message(what, pooling, allowed))
    return pooling


def poolings_for(spec, requested) -> tuple[str, ...]:
    """The requested poolings this backbone supports; when it supports none of them, its first pooling
    (cls+mean for token models, avg for CNNs) so `--pooling avg` still runs a mixed list of CNNs and ViTs."""
    spec = get_backbone(spec)
    mine = tuple(p for p in dict.fromkeys(requested) if p in spec.poolings)
    if mine:
        return mine
    return ("cls+mean",) if spec.tokens else (spec.poolings[0],)


def check_image_size(spec: BackboneSpec, size=None) -> tuple[int, int]:
    """(h, w) for this backbone: the native size when None; BackboneError below the backbone's minimum."""
    spec = get_backbone(spec)
    if size is None:
        return spec.native_size, spec.native_size
    try:
        height, width = _pair(size)
    except (TypeError, ValueError):
        raise BackboneError(
            f"The image size must be an int or a (height, width) pair of ints. Got {size!r} instead."
        ) from None
    if min(height, width) < spec.min_size:
        raise BackboneError(
            f"Backbone {spec.name!r} needs images of at least {spec.min_size}x{spec.min_size} pixels; "
            f"got {height}x{width}."
        )
    return height, width


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int) or hasattr(size, "__index__"):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


# ------------------------------------------------------------------ weights


@dataclass(frozen=True)
class WeightsInfo:
    """What `--weights` resolved to, as recorded in the cache attrs and bundles."""

    kind: str  # "imagenet" | "random" | "file" | "none" (the raw-pixel floor) | "preset" (keras-hub) | "onnx"
    label: str  # the cache attr `weights`: "imagenet" | "random" | file name | "none" | preset URI | ONNX file name
    sha256: str  # of the weights file for kind "file"/"onnx", of the preset's files for "preset"; "" otherwise
    seed: int  # the seed random weights were drawn from; -1 otherwise
    path: str = ""  # the weights file for kind "file"/"onnx"; the local preset folder for kind "preset"
    preprocess: str = ""  # the preset's own preprocessing (hub.preset_preprocessing); "" = the spec's

    @property
    def random(self) -> bool:
        """True for randomly initialised weights."""
        return self.kind == "random"


def resolve_weights(weights: str, seed: int = 0, spec=None, image_size=None) -> WeightsInfo:
    """What `--weights` means: imagenet, random (seeded), auto (imagenet when cached for `spec`, else random) or PATH.

    A weightless `spec` (pixels) has nothing to load or draw: every value resolves to "none", so
    `--weights imagenet` or a seed never mislabels it. WeightsError for a missing or unusable file,
    or imagenet asked of a backbone that has none.
    """
    weights = str(weights)
    if spec is not None:
        spec = get_backbone(spec)
        if spec.weightless:
            return NO_WEIGHTS
        if spec.source == "onnx":
            from featx.extract import onnx

            return onnx.onnx_weights(spec, weights)
        if spec.source == "keras-hub":
            return _preset_weights(spec, weights, seed)
    if weights == "pretrained":
        weights = "imagenet"
    if weights == "auto":
        use_imagenet = spec is not None and imagenet_available(spec, image_size)
        weights = "imagenet" if use_imagenet else "random"
    if weights == "random":
        return WeightsInfo(kind="random", label="random", sha256="", seed=int(seed))
    if weights == "imagenet":
        if spec is not None and not spec.imagenet_weights:
            raise _no_imagenet(spec)
        return WeightsInfo(kind="imagenet", label="imagenet", sha256="", seed=-1)
    path = Path(weights).expanduser()
    if not path.exists():
        if Path(weights).suffix or "/" in weights or "\\" in weights:
            raise WeightsError(f"The weights file '{weights}' does not exist.")
        hint = closest(weights, WEIGHT_KINDS)
        raise WeightsError(
            f"The 'weights' parameter must be one of {list(WEIGHT_KINDS)} or the path of an existing weights file. "
            f"Got {weights!r} instead" + (f"; did you mean {hint!r}?" if hint else ".")
        )
    if not path.is_file():
        raise WeightsError(f"The weights path '{weights}' is not a file.")
    if not path.name.endswith(WEIGHTS_FILE_SUFFIXES):
        raise WeightsError(
            f"The weights file '{weights}' must end in one of {list(WEIGHTS_FILE_SUFFIXES)} (a Keras weights file)."
        )
    return WeightsInfo(kind="file", label=path.name, sha256=file_sha256(path), seed=-1, path=str(path.resolve()))


NO_WEIGHTS = WeightsInfo(kind="none", label="none", sha256="", seed=-1)


def _preset_weights(spec: BackboneSpec, weights: str, seed: int) -> WeightsInfo:
    """A keras-hub spec's weights: random (its architecture, seeded) or its preset's (fetched and hashed here)."""
    from featx.extract import hub

    if weights == "auto":
        weights = "pretrained" if spec.preset and hub.available(spec.preset) else "random"
    if weights == "random":
        return WeightsInfo(kind="random", label="random", sha256="", seed=int(seed))
    if weights not in ("pretrained", "imagenet"):
        raise WeightsError(
            f"Backbone {spec.name!r} takes --weights pretrained (its preset {spec.preset or '(none)'}), random or "
            f"auto. Got {weights!r} instead."
        )
    if not spec.preset:
        raise WeightsError(f"Backbone {spec.name!r} has no pretrained weights; pass --weights random.")
    files = hub.preset_files(spec.preset)
    return WeightsInfo(
        kind="preset",
        label=spec.preset if spec.preset.startswith(hub.URI_PREFIXES) else Path(spec.preset).name,
        sha256=files.sha256,
        seed=-1,
        path=files.folder,
        preprocess=hub.preset_preprocessing(files, spec.preprocess),
    )


def preprocess_of(spec, weights: WeightsInfo) -> str:
    """What the cache attr `preprocess` records: the preset's own preprocessing, else the spec's."""
    return weights.preprocess or get_backbone(spec).preprocess


def imagenet_available(spec, image_size=None) -> bool:
    """True when Keras's ImageNet file for this backbone is already in keras_models_dir() (nothing is downloaded)."""
    spec = get_backbone(spec)
    if spec.source == "keras-hub" and spec.preset:
        from featx.extract import hub

        return hub.available(spec.preset)
    if not spec.imagenet_weights:
        return False
    return (config.keras_models_dir() / spec.weights_file(image_size)).is_file()


def _no_imagenet(spec: BackboneSpec) -> WeightsError:
    return WeightsError(f"Backbone {spec.name!r} has no ImageNet weights; pass --weights random (or a weights file).")


def _imagenet_file(spec, image_size=None) -> Path:
    """Keras's ImageNet file for this backbone and size in keras_models_dir(), downloaded there when absent.

    ``keras.utils.get_file`` with the origin and md5 Keras pins: a file already there with
    the right hash is used as is; a missing or damaged one is downloaded again. WeightsError
    naming the file, the folder and --weights random when that download fails.
    """
    import keras

    spec = get_backbone(spec)
    if not spec.imagenet_weights:
        raise _no_imagenet(spec)
    fname, origin = spec.weights_file(image_size), spec.weights_origin(image_size)
    with contextlib.suppress(OSError):  # get_file falls back to a writable folder of its own
        config.keras_models_dir().mkdir(parents=True, exist_ok=True)
    try:
        path = keras.utils.get_file(
            fname, origin, cache_subdir="models", cache_dir=str(config.keras_home()), file_hash=spec.weights_md5 or None
        )
    except Exception as cause:  # Keras raises a bare Exception for a failed fetch, ValueError for a bad hash
        raise WeightsError(
            f"ImageNet weights for {spec.name!r} are not in {config.keras_models_dir()} and could not be "
            f"downloaded ({_download_reason(cause)}); put '{fname}' (from {origin}) in that "
            "folder, or pass --weights random."
        ) from None
    return Path(path)


# ------------------------------------------------------------------ building


def build_tiny(include_top=False, weights=None, input_shape=(32, 32, 3), **_):
    """The registered test backbone: three stride-2 3x3 convolutions (16, 32, 32 channels), ReLU."""
    import keras

    if weights not in (None, "random"):
        raise _no_imagenet(BACKBONES["tiny"])
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for index, filters in enumerate((16, 32, 32)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu", name=f"tiny_conv{index + 1}")(
            x
        )
    return keras.Model(inputs, x, name="tiny")


def build_pixels(include_top=False, weights=None, input_shape=(32, 32, 3), **_):
    """The registered raw-pixel floor: grayscale thumbnails at PIXEL_SIZES, flattened, as one (1, 1, n) map."""
    import keras

    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, _pixel_thumbnails_layer()(name="pixel_thumbnails")(inputs), name="pixels")


@functools.cache
def _pixel_thumbnails_layer():
    import keras

    @keras.saving.register_keras_serializable(package="featx")
    class PixelThumbnails(keras.layers.Layer):
        """Raw RGB 0..255 -> luma in 0..1 -> area-resized to each side in `sizes` -> flattened, concatenated.

        Returned as a (b, 1, 1, n) map so that every pooling (avg, max, gem, flatten) reads the same
        pixel vector and the layer goes through stage one's model, forward step and cache like any CNN.
        """

        def __init__(self, sizes=PIXEL_SIZES, **kwargs):
            super().__init__(**kwargs)
            self.sizes = tuple(int(size) for size in sizes)

        def call(self, inputs):
            ops = keras.ops
            luma = ops.convert_to_tensor(LUMA_RGB, dtype=inputs.dtype) / 255.0
            gray = ops.expand_dims(ops.tensordot(inputs, luma, axes=[[3], [0]]), -1)
            parts = [
                ops.reshape(ops.image.resize(gray, (size, size), interpolation="area"), (-1, size * size))
                for size in self.sizes
            ]
            width = sum(size * size for size in self.sizes)
            return ops.reshape(ops.concatenate(parts, axis=-1), (-1, 1, 1, width))

        def get_config(self):
            return {**super().get_config(), "sizes": list(self.sizes)}

    return PixelThumbnails


def _constructor(spec: BackboneSpec):
    module_name, _, attribute = spec.constructor.rpartition(".")
    if module_name == "featx.extract.backbones":
        return globals()[attribute]
    import keras

    module = keras
    for part in module_name.split(".")[1:]:
        module = getattr(module, part)
    return getattr(module, attribute)


@functools.cache
def _custom_layers():
    """The two weightless layers featx adds, defined once (Keras is imported lazily)."""
    import keras
    from keras.applications import imagenet_utils

    @keras.saving.register_keras_serializable(package="featx")
    class Preprocess(keras.layers.Layer):
        """Keras's own imagenet_utils.preprocess_input in one mode (caffe, tf or torch)."""

        def __init__(self, mode: str = "tf", **kwargs):
            super().__init__(**kwargs)
            self.mode = mode

        def call(self, inputs):
            return imagenet_utils.preprocess_input(inputs, data_format="channels_last", mode=self.mode)

        def get_config(self):
            return {**super().get_config(), "mode": self.mode}

    @keras.saving.register_keras_serializable(package="featx")
    class GeneralizedMeanPooling(keras.layers.Layer):
        """GeM (Radenovic et al. 2018): (mean over h, w of max(x, eps)^p)^(1/p), p = 3.

        Activations are clamped at eps first: most final maps are post-ReLU already,
        EfficientNet's swish can dip slightly below zero, and a real p-th root needs x > 0.
        """

        def __init__(self, p: float = GEM_P, eps: float = GEM_EPS, **kwargs):
            super().__init__(**kwargs)
            self.p, self.eps = p, eps

        def call(self, inputs):
            ops = keras.ops
            clamped = ops.maximum(inputs, self.eps)
            return ops.power(ops.mean(ops.power(clamped, self.p), axis=(1, 2)), 1.0 / self.p)

        def get_config(self):
            return {**super().get_config(), "p": self.p, "eps": self.eps}

    return Preprocess, GeneralizedMeanPooling


def preprocessing_layer(mode: str, name: str = "preprocess"):
    """A weightless float32 layer applying the backbone's preprocessing to raw 0..255 RGB."""
    if mode not in PREPROCESS_MODES or mode == "none":
        raise ValueError(f"no preprocessing layer for mode {mode!r}")
    preprocess, _ = _custom_layers()
    return preprocess(mode, name=name, dtype="float32")


def _pooling_layer(pooling: str):
    import keras

    # float32 even under mixed precision: embeddings are stored as float32 and GeM's cube overflows float16.
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="pool_avg", dtype="float32")
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="pool_max", dtype="float32")
    if pooling == "flatten":
        return keras.layers.Flatten(name="pool_flatten", dtype="float32")
    _, gem = _custom_layers()
    return gem(name="pool_gem", dtype="float32")


def gpu_available() -> bool:
    """True when TensorFlow sees a GPU."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def create_backbone(
    spec, weights: WeightsInfo, image_size=None, poolings: Sequence[str] = ("avg",), mixed_precision=False
):
    """One frozen model: float32 raw RGB (b, h, w, 3) in 0..255 -> {pooling: (b, width) float32}.

    The spec's preprocessing is a layer inside the model (applied exactly once);
    every pooling reads the same final feature map. WeightsError when the weights
    cannot be had or do not fit; BackboneError for a bad name, pooling or size.
    """
    spec = get_backbone(spec)
    height, width = check_image_size(spec, image_size)
    poolings = tuple(dict.fromkeys(check_pooling(p, spec) for p in poolings))
    if spec.source == "onnx":
        raise BackboneError(f"{spec.name!r} runs in ONNX Runtime, not Keras (featx.extract.onnx.onnx_forward).")
    import_tensorflow_quietly()
    if not poolings:
        raise BackboneError(f"At least one pooling is needed; choose from {list(POOLINGS)}.")
    if not isinstance(weights, WeightsInfo):
        weights = resolve_weights(weights, 0, spec, (height, width))
    if weights.kind == "imagenet" and not spec.imagenet_weights:
        raise _no_imagenet(spec)
    if weights.kind == "none" and not spec.weightless:
        raise WeightsError(f"Backbone {spec.name!r} needs weights (imagenet, random or a file); 'none' is for pixels.")

    import keras

    if spec.source == "keras-hub":
        return _hub_model(spec, weights, (height, width), poolings, mixed_precision)

    with _dtype_policy(mixed_precision):
        if weights.kind == "random":
            keras.utils.set_random_seed(weights.seed)
        network = _build_network(spec, weights, (height, width))
        if weights.kind == "file":
            _load_weights_file(network, spec, weights)
        network.trainable = False

        inputs = keras.Input(shape=(height, width, 3), dtype="float32", name="image_rgb")
        x = inputs if spec.preprocess == "none" else preprocessing_layer(spec.preprocess)(inputs)
        feature_map = network(x, training=False)
        outputs = {pooling: _pooling_layer(pooling)(feature_map) for pooling in poolings}
        model = keras.Model(inputs, outputs, name=f"featx_{spec.name}")
    model.trainable = False
    return model


def _hub_model(spec: BackboneSpec, weights: WeightsInfo, size: tuple[int, int], poolings, mixed_precision: bool):
    """A keras-hub backbone behind the preset's affine preprocessing, pooled per `poolings`."""
    import keras

    from featx.extract import hub

    scale, offset = hub.parse_affine(preprocess_of(spec, weights))
    with _dtype_policy(mixed_precision):
        network = hub.build_network(spec, weights, size)
        network.trainable = False
        inputs = keras.Input(shape=(*size, 3), dtype="float32", name="image_rgb")
        x = _hub_layers()[0](scale, offset, name="preprocess", dtype="float32")(inputs)
        # DINOv2 takes {"images": x}, DINOv3 {"pixel_values": x}; ViT and timm CNNs a tensor
        named = network.input if isinstance(network.input, dict) else None
        features = network({next(iter(named)): x} if named else x, training=False)
        if spec.tokens:
            token_pooling = _hub_layers()[1]
            outputs = {
                p: token_pooling(p, spec.prefix_tokens, name=f"pool_{p.replace('+', '_')}", dtype="float32")(features)
                for p in poolings
            }
        else:
            outputs = {p: _pooling_layer(p)(features) for p in poolings}
        model = keras.Model(inputs, outputs, name=f"featx_{spec.file_stem}")
    model.trainable = False
    return model


@functools.cache
def _hub_layers():
    """The affine preprocessing and the token pooling layers (Keras imported lazily)."""
    import keras

    @keras.saving.register_keras_serializable(package="featx")
    class Affine(keras.layers.Layer):
        """x * scale + offset per RGB channel: a preset's image converter applied to raw 0..255 RGB."""

        def __init__(self, scale=(1.0, 1.0, 1.0), offset=(0.0, 0.0, 0.0), **kwargs):
            super().__init__(**kwargs)
            self.scale, self.offset = [float(v) for v in scale], [float(v) for v in offset]

        def call(self, inputs):
            ops = keras.ops
            scale = ops.convert_to_tensor(self.scale, dtype=inputs.dtype)
            return inputs * scale + ops.convert_to_tensor(self.offset, dtype=inputs.dtype)

        def get_config(self):
            return {**super().get_config(), "scale": self.scale, "offset": self.offset}

    @keras.saving.register_keras_serializable(package="featx")
    class TokenPooling(keras.layers.Layer):
        """Tokens (b, prefix + patches, dim) -> (b, dim): cls (token 0), mean or gem (of the patch tokens only,
        registers left out), cls+mean (both concatenated: the DINOv2 linear-probe feature), in float32."""

        def __init__(self, mode="cls", prefix=1, p=GEM_P, eps=GEM_EPS, **kwargs):
            super().__init__(**kwargs)
            self.mode, self.prefix, self.p, self.eps = mode, int(prefix), float(p), float(eps)

        def call(self, tokens):
            ops = keras.ops
            tokens = ops.cast(tokens, "float32")
            patches = tokens[:, self.prefix :, :]
            if self.mode == "cls":
                return tokens[:, 0, :]
            if self.mode == "mean":
                return ops.mean(patches, axis=1)
            if self.mode == "cls+mean":
                return ops.concatenate([tokens[:, 0, :], ops.mean(patches, axis=1)], axis=-1)
            clamped = ops.maximum(patches, self.eps)
            return ops.power(ops.mean(ops.power(clamped, self.p), axis=1), 1.0 / self.p)

        def get_config(self):
            return {**super().get_config(), "mode": self.mode, "prefix": self.prefix, "p": self.p, "eps": self.eps}

    return Affine, TokenPooling


def bare_network(model):
    """The backbone network inside a create_backbone model (for saving or inspecting its weights)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise ValueError("not a featx backbone model")


def _build_network(spec: BackboneSpec, weights: WeightsInfo, size: tuple[int, int]):
    constructor = _constructor(spec)
    imagenet = weights.kind == "imagenet"
    keras_weights = str(_imagenet_file(spec, size)) if imagenet else None
    try:
        network = constructor(include_top=False, weights=keras_weights, input_shape=(*size, 3))
    except ValueError as exc:  # Keras refusing a size or a corrupt cached file
        if imagenet:
            raise WeightsError(
                f"ImageNet weights for {spec.name!r} could not be loaded from {config.keras_models_dir()} "
                f"({_short(exc)}); delete the file to download it again, or pass --weights random."
            ) from None
        raise BackboneError(f"Backbone {spec.name!r} cannot be built at {size[0]}x{size[1]}: {_short(exc)}.") from None
    if imagenet and spec.imagenet_rescale_stddev:
        network = _with_imagenet_rescale(network, spec.imagenet_rescale_stddev)
    return network


def _with_imagenet_rescale(network, stddev: Sequence[float]):
    """The network as Keras builds it for weights="imagenet": Rescaling(1 / sqrt(std)) after the stem Normalization.

    Every other layer (and so every loaded weight) is shared with `network`; only that
    weightless layer is added, computing exactly what Keras's own ImageNet build computes.
    """
    import keras

    stem = next(layer for layer in network.layers if isinstance(layer, keras.layers.Normalization))
    scale = [1.0 / math.sqrt(value) for value in stddev]

    def call(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        return keras.layers.Rescaling(scale)(outputs) if layer is stem else outputs

    return keras.models.clone_model(network, clone_function=lambda layer: layer, call_function=call)


def _load_weights_file(network, spec: BackboneSpec, weights: WeightsInfo) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            network.load_weights(weights.path)
        except Exception as exc:  # Keras raises ValueError / KeyError / OSError for foreign or damaged files
            raise WeightsError(
                f"The weights file '{weights.path}' does not fit backbone {spec.name!r} ({_short(exc)})."
            ) from None
    mismatches = [str(w.message) for w in caught if "load" in str(w.message).lower()]
    if mismatches:
        raise WeightsError(
            f"The weights file '{weights.path}' does not fit backbone {spec.name!r} ({_short(mismatches[0])})."
        )


@contextmanager
def _dtype_policy(mixed_precision: bool):
    """mixed_float16 while building, only where a GPU is present; the previous policy afterwards."""
    import keras

    if not mixed_precision:
        yield
        return
    if not gpu_available():
        warnings.warn("mixed precision was requested but no GPU is present; building in float32", stacklevel=3)
        yield
        return
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _download_reason(cause: BaseException) -> str:
    """Keras's "URL fetch failure on <url>: <code> -- <reason>" without the url (the message names it once)."""
    text = " ".join(str(cause).split())
    if text.startswith("URL fetch failure") and " -- " in text:
        text = text.split(" -- ", 1)[1]
    return _short(text)


def _short(exc) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# ------------------------------------------------------------------ listing


def _weights_status(spec: BackboneSpec) -> str:
    if spec.weightless:
        return "none"
    if spec.source == "keras-hub":
        if not spec.preset:
            return "random only"
        from featx.extract import hub

        return "cached" if hub.available(spec.preset) else "download"
    if not spec.imagenet_weights:
        return "random only"
    return "cached" if imagenet_available(spec) else "download"


def _prep_label(spec: BackboneSpec) -> str:
    if spec.preprocess.startswith("affine:"):
        return "mean/std"
    return spec.preprocess


def print_backbones(console) -> None:
    """The registry grouped (BACKBONE_GROUPS): sizes, output, widths, weights; source, licence, description."""
    from rich import box
    from rich.table import Table

    wide = console.width >= 150
    for group in BACKBONE_GROUPS:
        specs = [spec for spec in BACKBONES.values() if spec.group == group]
        if group == "ONNX":
            console.print(
                f"[bold]{group}[/]: --backbone onnx:FILE runs any exported network in ONNX Runtime (a FILE.json "
                "sidecar names its input, output, layout and mean/std; docs/backbones.md).",
                highlight=False,
            )
            continue
        table = Table(title=f"{group}", box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
        for column, justify in (("name", "left"), ("size/min", "right"), ("output", "left"), ("width", "right"),
                                ("flatten", "right"), ("weights", "left")):  # fmt: skip
            table.add_column(column, justify=justify, no_wrap=True)
        if wide:
            for column in ("source", "prep", "licence / gating", "description"):
                table.add_column(column, overflow="fold")
        for spec in specs:
            native = (spec.native_size, spec.native_size)
            flatten = "-"
            if "flatten" in spec.poolings:
                h, w = spec.feature_map_size(native)
                flatten = f"{spec.embedding_width('flatten', native):,} ({h}x{w})"
            licence = spec.licence or ("Keras applications" if spec.imagenet_weights else "-")
            row = [spec.name, f"{spec.native_size}/{spec.min_size}", "tokens" if spec.tokens else "map",
                   f"{spec.channels:,}", flatten, _weights_status(spec)]  # fmt: skip
            extra = [spec.source, _prep_label(spec), licence, spec.description] if wide else []
            table.add_row(*row, *extra)
        console.print(table)
        if not wide:
            for spec in specs:
                licence = f" [dim]Source {spec.source}; licence: {spec.licence}.[/]" if spec.licence else ""
                console.print(f"[bold]{spec.name}[/]: {spec.description}{licence}", highlight=False)
    console.print(
        "size/min: native and smallest input in pixels; prep: the backbone's own preprocessing, applied inside "
        "the model to raw 0..255 RGB; output: a CNN's feature map (poolings avg, max, gem, flatten) or a ViT's "
        f"tokens (cls, mean, cls+mean, gem); width: of each pooling (cls+mean twice it, flatten h*w*channels). ImageNet weights are downloaded by Keras into {config.keras_models_dir()}; keras-hub "
        "presets (--weights pretrained) from Hugging Face into its cache; --backbone also takes hf://org/repo, a "
        "preset folder or onnx:FILE. Offline, pass --weights random (random-init features are for testing only).",
        highlight=False,
    )


def forward_batch_limit(spec: BackboneSpec, image_size) -> int | None:
    """Images per forward call for a token model (its attention maps within ATTENTION_BUDGET_MIB); None for a
    CNN, whose batches go through whole as --batch-size cuts them."""
    if not spec.tokens:
        return None
    heads = int(spec.hub_architecture()[1].get("num_heads", 12))
    height, width = _pair(image_size)
    patches = (height // max(1, spec.downsample)) * (width // max(1, spec.downsample))
    tokens = patches + spec.prefix_tokens
    per_image_mib = heads * tokens * tokens * 4 / 2**20
    return int(max(1, min(MAX_TOKEN_BATCH, ATTENTION_BUDGET_MIB // max(per_image_mib, 1e-9))))
