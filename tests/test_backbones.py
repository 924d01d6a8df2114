"""The backbone registry: widths, preprocessing inside the model, poolings, weights (random, file, imagenet)."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from rich.console import Console

from featx import config
from featx.errors import BackboneError, WeightsError
from featx.extract import backbones

keras = pytest.importorskip("keras")
from keras.applications import imagenet_utils  # noqa: E402

REQUIRED = (
    "vgg16",
    "resnet50",
    "densenet121",
    "xception",
    "efficientnetv2s",
    "inceptionv3",
    "mobilenetv2",
    "mobilenetv3small",
    "efficientnetb7",
    "resnet101v2",
    "inceptionresnetv2",
    "tiny",
    "pixels",
)
# Each backbone's own Keras module: its preprocess_input is what the registry's mode must reproduce.
KERAS_MODULES = {
    "vgg16": "vgg16",
    "resnet50": "resnet50",
    "resnet101v2": "resnet_v2",
    "densenet121": "densenet",
    "xception": "xception",
    "inceptionv3": "inception_v3",
    "inceptionresnetv2": "inception_resnet_v2",
    "mobilenetv2": "mobilenet_v2",
    "mobilenetv3small": "mobilenet_v3",
    "efficientnetb7": "efficientnet",
    "efficientnetv2s": "efficientnet_v2",
}
FAST = ("tiny", "mobilenetv3small", "pixels")
SLOW = tuple(name for name in backbones.BACKBONES if name not in FAST)


def _random(seed=0):
    return backbones.resolve_weights("random", seed)


def _weights(model):
    return [np.asarray(w) for w in backbones.bare_network(model).get_weights()]


def _embed(model, x):
    """One forward pass without predict()'s tracing overhead: {pooling: (n, width) ndarray}."""
    return {name: np.asarray(value) for name, value in model(x, training=False).items()}


def _raw_images(n, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


# ------------------------------------------------------------------ the registry


def test_registry_has_every_required_backbone():
    assert set(REQUIRED) <= set(backbones.BACKBONES)
    for spec in backbones.BACKBONES.values():
        # keras-hub entries carry their preset's preprocessing as an affine string (featx/extract/hub.py)
        assert spec.preprocess in backbones.PREPROCESS_MODES or spec.preprocess.startswith("affine:scale=")
        assert spec.min_size <= spec.native_size and spec.description
        assert spec.feature_map_size(spec.native_size)[0] >= 1


@pytest.mark.parametrize("name", sorted(KERAS_MODULES))
def test_preprocess_mode_matches_the_keras_module(name):
    spec = backbones.get_backbone(name)
    module = getattr(keras.applications, KERAS_MODULES[name])
    x = _raw_images(2, 8, seed=1)
    expected = np.asarray(module.preprocess_input(x.copy()))
    if spec.preprocess == "none":
        assert np.allclose(expected, x)
    else:
        assert np.allclose(expected, imagenet_utils.preprocess_input(x.copy(), mode=spec.preprocess), atol=1e-5)


def test_widths_follow_the_published_shapes():
    assert backbones.get_backbone("vgg16").embedding_width("flatten", (224, 224)) == 7 * 7 * 512 == 25_088
    assert backbones.get_backbone("inceptionv3").feature_map_size((299, 299)) == (8, 8)
    assert backbones.get_backbone("xception").feature_map_size((299, 299)) == (10, 10)
    assert backbones.get_backbone("efficientnetb7").feature_map_size(600) == (19, 19)
    assert backbones.get_backbone("resnet50").embedding_width("gem", 96) == 2048


def test_unknown_backbone_lists_names_and_closest_match():
    expected = r"'backbone' parameter must be one of \[.*'vgg16'.*'tiny', 'pixels'\], a keras-hub preset name \(dinov2_small\), an hf://org/repo preset, a preset folder or onnx:FILE\. Got 'resnet5' instead; did you mean 'resnet50'\?"
    with pytest.raises(BackboneError, match=expected):
        backbones.get_backbone("resnet5")


def test_unknown_pooling_is_refused():
    with pytest.raises(BackboneError, match=r"'pooling'.*Got 'median' instead"):
        backbones.check_pooling("median")
    with pytest.raises(BackboneError, match="'gme'.*did you mean 'gem'"):
        backbones.create_backbone("tiny", _random(), 32, ("gme",))


def test_image_size_below_minimum_names_it():
    with pytest.raises(BackboneError, match=r"'xception' needs images of at least 71x71 pixels; got 70x70"):
        backbones.check_image_size("xception", 70)
    with pytest.raises(BackboneError, match="at least 75x75"):
        backbones.check_image_size(backbones.get_backbone("inceptionv3"), (299, 74))
    assert backbones.check_image_size("vgg16", None) == (224, 224)
    assert backbones.check_image_size("vgg16", (64, 32)) == (64, 32)


def test_print_backbones_lists_every_backbone_with_widths():
    console = Console(record=True, width=240)
    backbones.print_backbones(console)
    text = console.export_text()
    for name in backbones.BACKBONES:
        assert name in text
    assert "25,088 (7x7)" in text and "caffe" in text and "torch" in text and "download" in text
    assert str(config.keras_models_dir()) in text.replace("\n", "")


# ------------------------------------------------------------------ building


def _assert_widths(spec, size):
    if spec.tokens:  # token models: their widths are checked in tests/test_hub.py
        return None
    model = backbones.create_backbone(spec, _random(), size, spec.poolings)
    bare = backbones.bare_network(model)
    if "flatten" in spec.poolings:  # the feature-map arithmetic matters only where flatten reads it
        assert tuple(bare.output.shape[1:]) == (*spec.feature_map_size(size), spec.channels)
    for pooling in spec.poolings:
        assert model.output[pooling].shape[-1] == spec.embedding_width(pooling, size), pooling
    return model


@pytest.mark.parametrize("name", FAST)
def test_fast_backbones_give_the_declared_widths(name):
    spec = backbones.get_backbone(name)
    for size in (spec.min_size, (spec.min_size + 13, spec.min_size + 4)):
        _assert_widths(spec, size)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_every_backbone_gives_the_declared_widths(name):
    spec = backbones.get_backbone(name)
    for size in (spec.min_size, (spec.min_size + 13, spec.min_size + 6), spec.native_size):
        _assert_widths(spec, size)


def test_outputs_are_a_dict_of_float32_from_one_pass():
    model = backbones.create_backbone("tiny", _random(), 16, ("gem", "avg", "flatten", "max"))
    out = model.predict(_raw_images(3, 16), verbose=0)
    assert set(out) == {"gem", "avg", "flatten", "max"}
    fmap = np.asarray(backbones.bare_network(model)(imagenet_utils.preprocess_input(_raw_images(3, 16), mode="tf")))
    assert out["flatten"].shape == (3, 2 * 2 * 32) and all(v.dtype == np.float32 for v in out.values())
    assert np.allclose(out["avg"], fmap.mean(axis=(1, 2)), atol=1e-5)
    assert np.allclose(out["max"], fmap.max(axis=(1, 2)), atol=1e-5)
    assert np.allclose(out["flatten"], fmap.reshape(3, -1), atol=1e-5)
    gem = np.mean(np.maximum(fmap, backbones.GEM_EPS) ** 3, axis=(1, 2)) ** (1 / 3)
    assert np.allclose(out["gem"], gem, rtol=1e-4, atol=1e-5)
    assert (out["max"] >= out["gem"] - 1e-5).all() and (out["gem"] >= out["avg"] - 1e-5).all()


@pytest.mark.parametrize("name", ["tiny", "vgg16", "mobilenetv3small"])
def test_preprocessing_is_applied_exactly_once(name):
    spec = backbones.get_backbone(name)
    size = max(spec.min_size, 32)
    model = backbones.create_backbone(spec, _random(seed=5), size, ("avg",))
    bare = backbones.bare_network(model)
    pool = keras.layers.GlobalAveragePooling2D()
    raw = np.concatenate([np.full((1, size, size, 3), 128.0, np.float32), _raw_images(2, size, seed=2)])
    if spec.preprocess == "none":
        once, twice = raw, raw  # the network scales its own input; featx adds nothing
    else:
        once = imagenet_utils.preprocess_input(raw.copy(), mode=spec.preprocess)
        twice = imagenet_utils.preprocess_input(once.copy(), mode=spec.preprocess)
    got = _embed(model, raw)["avg"]
    expected_once = np.asarray(pool(bare(once, training=False)))
    assert np.allclose(got, expected_once, rtol=1e-4, atol=1e-4)
    if spec.preprocess != "none":
        expected_twice = np.asarray(pool(bare(twice, training=False)))
        assert not np.allclose(got, expected_twice, rtol=1e-3, atol=1e-3)
        expected_never = np.asarray(pool(bare(raw, training=False)))
        assert not np.allclose(got, expected_never, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["densenet121", "resnet50", "efficientnetv2s"])
def test_preprocessing_is_applied_exactly_once_slow(name):
    test_preprocessing_is_applied_exactly_once(name)


def test_mixed_precision_without_gpu_warns_and_stays_float32(monkeypatch):
    monkeypatch.setattr(backbones, "gpu_available", lambda: False)
    with pytest.warns(UserWarning, match="no GPU"):
        model = backbones.create_backbone("tiny", _random(), 16, ("avg",), mixed_precision=True)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert model.predict(_raw_images(1, 16), verbose=0)["avg"].dtype == np.float32


# ------------------------------------------------------------------ the raw-pixel floor


def test_pixels_are_the_gray_thumbnails_under_every_pooling():
    spec = backbones.get_backbone("pixels")
    gray = np.random.default_rng(0).uniform(0, 255, (2, 64, 64)).astype(np.float32)
    model = backbones.create_backbone(spec, backbones.NO_WEIGHTS, 64, backbones.MAP_POOLINGS)
    out = _embed(model, np.repeat(gray[..., None], 3, axis=-1))
    thumbnails = [
        (gray / 255).reshape(2, side, 64 // side, side, 64 // side).mean(axis=(2, 4)).reshape(2, -1)
        for side in backbones.PIXEL_SIZES
    ]
    expected = np.concatenate(thumbnails, axis=1)
    assert expected.shape == (2, 32 * 32 + 16 * 16) == (2, spec.embedding_width("flatten", 64))
    for pooling, values in out.items():
        assert np.allclose(values, expected, atol=1e-5), pooling
    red = np.zeros((1, 32, 32, 3), np.float32)
    red[..., 0] = 255.0
    assert np.allclose(_embed(backbones.create_backbone(spec, backbones.NO_WEIGHTS, 32), red)["avg"], 0.299)


@pytest.mark.parametrize("weights", ["imagenet", "random", "auto"])
def test_pixels_have_no_weights_whatever_is_asked(weights, offline):
    info = backbones.resolve_weights(weights, 7, "pixels")
    assert (info.kind, info.label, info.seed, info.random) == ("none", "none", -1, False)
    assert offline == []  # nothing to download
    with pytest.raises(WeightsError, match="'tiny' needs weights"):
        backbones.create_backbone("tiny", backbones.NO_WEIGHTS, 16)


# ------------------------------------------------------------------ random weights


def test_random_weights_rebuild_bit_for_bit():
    first = _weights(backbones.create_backbone("tiny", _random(seed=3), 16))
    np.random.default_rng().random()  # other code touching global RNGs in between must not matter
    second = _weights(backbones.create_backbone("tiny", _random(seed=3), 16))
    other = _weights(backbones.create_backbone("tiny", _random(seed=4), 16))
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_random_weights_rebuild_bit_for_bit_for_a_real_backbone():
    first = backbones.create_backbone("mobilenetv3small", _random(seed=7), 32)
    second = backbones.create_backbone("mobilenetv3small", _random(seed=7), 32)
    assert all(np.array_equal(a, b) for a, b in zip(_weights(first), _weights(second)))
    x = _raw_images(2, 32)
    assert np.array_equal(first.predict(x, verbose=0)["avg"], second.predict(x, verbose=0)["avg"])


def test_resolve_weights_kinds(tmp_path):
    assert backbones.resolve_weights("random", 11) == backbones.WeightsInfo("random", "random", "", 11)
    assert backbones.resolve_weights("imagenet", 11) == backbones.WeightsInfo("imagenet", "imagenet", "", -1)
    assert backbones.resolve_weights("auto", 2, "tiny").kind == "random"
    with pytest.raises(WeightsError, match="'tiny' has no ImageNet weights.*--weights random"):
        backbones.resolve_weights("imagenet", 0, "tiny")
    with pytest.raises(WeightsError, match="'tiny' has no ImageNet weights"):
        backbones.create_backbone("tiny", backbones.resolve_weights("imagenet", 0), 16)


@pytest.mark.parametrize(
    "value, message",
    [
        (
            "imagnet",
            r"must be one of \['imagenet', 'pretrained', 'random', 'auto'\] or the path.*did you mean 'imagenet'\?",
        ),
        ("nowhere/model.weights.h5", "The weights file 'nowhere/model.weights.h5' does not exist"),
    ],
)
def test_resolve_weights_refuses_nonsense(value, message):
    with pytest.raises(WeightsError, match=message):
        backbones.resolve_weights(value, 0)


def test_resolve_weights_refuses_directories_and_foreign_suffixes(tmp_path):
    with pytest.raises(WeightsError, match="is not a file"):
        backbones.resolve_weights(str(tmp_path), 0)
    other = tmp_path / "model.pt"
    other.write_bytes(b"torch")
    with pytest.raises(WeightsError, match=r"must end in one of \['.weights.h5', '.h5', '.keras'\]"):
        backbones.resolve_weights(str(other), 0)


# ------------------------------------------------------------------ weights files


def test_weights_file_round_trip(tmp_path):
    source = backbones.create_backbone("tiny", _random(seed=1), 16, ("avg",))
    path = tmp_path / "tiny-seed1.weights.h5"
    backbones.bare_network(source).save_weights(path)
    info = backbones.resolve_weights(str(path), seed=99)
    assert (info.kind, info.label, info.seed) == ("file", "tiny-seed1.weights.h5", -1)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = backbones.create_backbone("tiny", info, 16, ("avg",))
    assert all(np.array_equal(a, b) for a, b in zip(_weights(source), _weights(loaded)))
    x = _raw_images(2, 16)
    assert np.array_equal(_embed(source, x)["avg"], _embed(loaded, x)["avg"])
    unlike = backbones.create_backbone("tiny", _random(seed=2), 16, ("avg",))
    assert not np.allclose(_embed(unlike, x)["avg"], _embed(loaded, x)["avg"])


def test_a_weights_file_for_another_network_is_refused(tmp_path):
    path = tmp_path / "tiny.weights.h5"
    backbones.bare_network(backbones.create_backbone("tiny", _random(), 16)).save_weights(path)
    with pytest.raises(WeightsError, match=r"The weights file '.*tiny.weights.h5' does not fit backbone 'vgg16'"):
        backbones.create_backbone("vgg16", backbones.resolve_weights(str(path), 0), 32)


def test_a_damaged_weights_file_is_refused(tmp_path):
    path = tmp_path / "broken.weights.h5"
    path.write_bytes(b"\x89HDF\r\n" + b"\x00" * 100)
    with pytest.raises(WeightsError, match="does not fit backbone 'tiny'"):
        backbones.create_backbone("tiny", backbones.resolve_weights(str(path), 0), 16)


# ------------------------------------------------------------------ imagenet through Keras's cache


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_keras_h5(network, path) -> None:
    """Save weights in the legacy HDF5 layout of Keras's published ImageNet files (test-only use of keras.src)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, network)


def _keras_own_imagenet_build(monkeypatch, spec, size, weights_path):
    """The network Keras itself builds for weights="imagenet", and what it asked its get_file for.

    There is no public way to ask Keras which file, origin and hash its own ImageNet path wants,
    so this oracle (and only it) intercepts Keras's private get_file and hands it `weights_path`.
    """
    from keras.src.utils import file_utils

    requests = []

    def get_file(fname=None, origin=None, **kwargs):
        requests.append({"fname": fname, "origin": origin, **kwargs})
        return str(weights_path)

    with monkeypatch.context() as patch:
        patch.setattr(file_utils, "get_file", get_file)
        network = backbones._constructor(spec)(include_top=False, weights="imagenet", input_shape=(*size, 3))
    assert len(requests) == 1
    return network, requests[0]


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square")
def test_imagenet_without_network_says_where_to_put_the_file(offline):
    spec = backbones.get_backbone("mobilenetv3small")
    assert not backbones.imagenet_available(spec)
    assert backbones.resolve_weights("auto", 5, spec) == backbones.resolve_weights("random", 5)
    with pytest.raises(WeightsError) as info:
        backbones.create_backbone(spec, backbones.resolve_weights("imagenet", 0, spec), 32)
    message = str(info.value)
    assert spec.weights_file() in message and str(config.keras_models_dir()) in message
    assert "--weights random" in message and "Temporary failure in name resolution" in message
    assert offline == [spec.weights_origin()] and offline[0].endswith("/" + spec.weights_file())
    assert not (config.keras_models_dir() / spec.weights_file()).exists()  # nothing half-downloaded left behind


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square")
def test_imagenet_from_the_cache_loads_without_download(offline, monkeypatch, tmp_path):
    """A file in keras_models_dir() under Keras's name and with the pinned hash is used as is."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    spec = backbones.get_backbone("mobilenetv3small")
    stand_in = backbones.create_backbone(spec, _random(seed=21), 32)
    cached = config.keras_models_dir() / spec.weights_file()
    _write_keras_h5(backbones.bare_network(stand_in), cached)
    monkeypatch.setitem(backbones.BACKBONES, spec.name, dataclasses.replace(spec, weights_md5=_md5(cached)))
    assert backbones.imagenet_available(spec)
    info = backbones.resolve_weights("auto", 0, spec)
    assert info.kind == "imagenet" and info.seed == -1
    model = backbones.create_backbone(spec.name, info, 32)
    assert offline == []
    assert all(np.array_equal(a, b) for a, b in zip(_weights(stand_in), _weights(model)))


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square")
def test_a_cached_file_with_the_wrong_hash_is_downloaded_again(offline, monkeypatch, tmp_path):
    """Keras's pinned md5 reaches get_file: a damaged or foreign file under Keras's name is not trusted."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    spec = backbones.get_backbone("mobilenetv3small")
    cached = config.keras_models_dir() / spec.weights_file()
    _write_keras_h5(backbones.bare_network(backbones.create_backbone(spec, _random(seed=21), 32)), cached)
    assert backbones.imagenet_available(spec)  # present, so auto picks imagenet ...
    with pytest.raises(WeightsError, match=f"'{spec.name}' are not in .* could not be downloaded"):
        backbones.create_backbone(spec, backbones.resolve_weights("auto", 0, spec), 32)
    assert offline == [spec.weights_origin()]  # ... but its md5 is not Keras's, so it was fetched again


def _assert_imagenet_build_is_keras_own(name, size, monkeypatch, tmp_path):
    """featx's imagenet network = the one Keras builds for weights="imagenet", from the same file, bit for bit."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    spec = backbones.get_backbone(name)
    stand_in = tmp_path / "stand_in.h5"
    _write_keras_h5(backbones.bare_network(backbones.create_backbone(spec, _random(seed=13), size)), stand_in)
    keras_network, request = _keras_own_imagenet_build(monkeypatch, spec, size, stand_in)
    expected_hash = request.get("file_hash")
    assert (request["fname"], request["origin"]) == (spec.weights_file(size), spec.weights_origin(size))
    assert (request.get("cache_subdir"), expected_hash or "") == ("models", spec.weights_md5)

    cached = config.keras_models_dir() / spec.weights_file(size)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(stand_in.read_bytes())
    monkeypatch.setitem(backbones.BACKBONES, name, dataclasses.replace(spec, weights_md5=_md5(cached)))
    model = backbones.create_backbone(name, backbones.resolve_weights("imagenet", 0, name), size, ("avg",))
    x = _raw_images(2, size[0], seed=4)[:, :, : size[1]]
    if spec.preprocess != "none":
        x = imagenet_utils.preprocess_input(x, mode=spec.preprocess)
    featx_map = np.asarray(backbones.bare_network(model)(x, training=False))
    keras_map = np.asarray(keras_network(x, training=False))
    assert np.array_equal(featx_map, keras_map)


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square")
def test_imagenet_build_is_keras_own_imagenet_build(offline, monkeypatch, tmp_path):
    _assert_imagenet_build_is_keras_own("mobilenetv3small", (32, 32), monkeypatch, tmp_path)
    assert offline == []


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square")
@pytest.mark.parametrize("name", [name for name in SLOW if backbones.BACKBONES[name].imagenet_weights])
def test_keras_asks_for_the_registered_weights_file(offline, monkeypatch, tmp_path, name):
    """Registry file, origin and md5 are what Keras's own imagenet path asks for; the networks compute the same.

    EfficientNet-B7 is the case that matters: Keras adds a layer only for weights="imagenet".
    MobileNetV2 at 160 px exercises the size-dependent file.
    """
    spec = backbones.get_backbone(name)
    side = 160 if name == "mobilenetv2" else spec.min_size
    _assert_imagenet_build_is_keras_own(name, (side, side), monkeypatch, tmp_path)
    assert offline == []
