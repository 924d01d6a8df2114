"""DICOM input: the rendering chain, compressed transfer syntaxes, per-image errors, scan, and the cache setting."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from featx.data import dicom, images
from featx.data.manifest import read_manifest, scan, write_manifest
from featx.errors import FeatxError, ImageReadError, StaleCacheError

pydicom = pytest.importorskip("pydicom")
from dicomfactory import unit_window, write_dicom  # noqa: E402
from PIL import Image  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import JPEG2000Lossless, RLELossless  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _eight_bit(height=40, width=48, seed=0) -> np.ndarray:
    """An 8-bit grayscale 'radiograph' using the whole 0..255 range."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width)[None, :] * np.ones((height, 1))
    return np.clip(ramp + rng.normal(0, 20, (height, width)), 0, 255).round().astype(np.uint8)


def _variants(folder: Path, p: np.ndarray) -> dict[str, Path]:
    """The same picture as 12-bit MONOCHROME2, MONOCHROME1 (inverted), rescaled, signed and plain 8-bit DICOM."""
    p16 = p.astype(np.uint16)
    return {
        "mono2_12bit": write_dicom(folder / "mono2.dcm", p16 * 16, bits_stored=12, window=unit_window()),
        "mono1_12bit": write_dicom(
            folder / "mono1.dcm", 4080 - p16 * 16, bits_stored=12, window=unit_window(), photometric="MONOCHROME1"
        ),
        # modality values 0.5 * stored - 1024 = 16 p
        "rescaled": write_dicom(
            folder / "rescaled.dcm", p16 * 32 + 2048, bits_stored=16, slope=0.5, intercept=-1024, window=unit_window()
        ),
        "signed": write_dicom(
            folder / "signed.dcm", p.astype(np.int16) * 16 - 2048, slope=1, intercept=2048, window=unit_window()
        ),
        "eight_bit": write_dicom(folder / "eight.dcm", p),
    }


# ---------------------------------------------------------------- the rendering chain


def test_each_encoding_of_an_8bit_image_decodes_to_its_pixels(tmp_path):
    p = _eight_bit()
    png = tmp_path / "source.png"
    Image.fromarray(p, mode="L").save(png)
    reference = images.load_image(png, p.shape).astype(np.float32)
    for name, path in _variants(tmp_path, p).items():
        got = images.load_image(path, p.shape)
        assert got.dtype == np.float32 and got.shape == (*p.shape, 3), name
        np.testing.assert_allclose(got, reference, atol=1e-3, err_msg=name)


def test_resized_dicom_differs_from_the_8bit_path_only_by_its_rounding(tmp_path):
    p = _eight_bit(90, 120)
    png = tmp_path / "source.png"
    Image.fromarray(p, mode="L").save(png)
    path = write_dicom(tmp_path / "a.dcm", p.astype(np.uint16) * 16, bits_stored=12, window=unit_window())
    for mode in images.RESIZE_MODES:
        got, ref = images.load_image(path, (32, 40), mode), images.load_image(png, (32, 40), mode).astype(np.float32)
        assert np.abs(got - ref).max() <= 1.0 + 1e-3, mode  # the PNG path rounds to integers after resizing


def test_twelve_bit_precision_reaches_the_backbone_input(tmp_path):
    stored = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    path = write_dicom(tmp_path / "ramp.dcm", stored, bits_stored=12)  # no window: the 12-bit range
    got = images.load_image(path, (64, 64))[..., 0]
    np.testing.assert_allclose(got, stored * 255.0 / 4095.0, atol=1e-3)
    assert len(np.unique(got)) == 4096  # not cut to 256 grey levels


def test_window_modes(tmp_path):
    stored = np.full((20, 20), 1000, dtype=np.uint16)
    stored[:10] = 3000
    stored[0, 0], stored[0, 1] = 0, 4095  # two outliers the percentile window ignores
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, window=(2000.5, 2001.0))
    file_window = dicom.read_pixels(path, "file")
    assert file_window[5, 5] == 1.0 and file_window[15, 5] == 0.0  # 3000 above, 1000 below the window
    minmax = dicom.read_pixels(path, "minmax")
    np.testing.assert_allclose(minmax[15, 5], 1000 / 4095, rtol=1e-6)
    percentile = dicom.read_pixels(path, "percentile")
    assert percentile[15, 5] == 0.0 and percentile[5, 5] == 1.0
    with pytest.raises(FeatxError, match="'dicom_window' parameter must be one of"):
        dicom.read_pixels(path, "auto")


def test_voi_lut_sequence_is_used_before_the_window(tmp_path):
    stored = np.arange(256, dtype=np.uint16).reshape(16, 16)
    path = write_dicom(tmp_path / "lut.dcm", stored, bits_stored=8, window=(10.0, 5.0))
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.add_new(0x00283002, "US", [256, 0, 16])  # LUT Descriptor: 256 entries from 0, 16 bits each
    item.add_new(0x00283006, "US", [65535 - 257 * v for v in range(256)])  # LUT Data: an inverting LUT
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    np.testing.assert_allclose(dicom.read_pixels(path), 1.0 - stored / 255.0, atol=1e-6)


def test_linear_window_matches_the_standard_formula():
    values = np.array([0.0, 1.0, 1.5, 2.0, 3.0])
    # PS3.3 C.11.2.1.2.1 with c=2, w=2: x <= 1 -> 0, x > 2 -> 1, else (x - 1.5) / 1 + 0.5
    np.testing.assert_allclose(dicom.apply_window(values, 2.0, 2.0), [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(dicom.apply_window(values, 2.0, 2.0, "LINEAR_EXACT"), [0, 0, 0.25, 0.5, 1])
    assert dicom.apply_window(np.array([2.0]), 2.0, 3.0, "SIGMOID")[0] == pytest.approx(0.5)


def test_first_frame_of_a_multiframe_file(tmp_path):
    frames = np.stack([np.full((8, 8), 100 * (k + 1), dtype=np.uint16) for k in range(3)])
    path = write_dicom(tmp_path / "multi.dcm", frames, bits_stored=12, window=(200.5, 400.0))
    np.testing.assert_allclose(dicom.read_pixels(path), (100 - 200) / 399 + 0.5, atol=1e-6)  # frame 0 holds 100


def test_rgb_dicom(tmp_path):
    rgb = np.zeros((6, 6, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 2] = 255, 51
    path = write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB")
    np.testing.assert_allclose(images.load_image(path, (6, 6))[0, 0], [255, 0, 51], atol=1e-3)


def test_dicom_age_strings():
    assert [dicom.parse_age(v) for v in ("058Y", "58", "006M", "002W", "", "abc", None)] == [
        "58",
        "58",
        "0.5",
        "0.04",
        "",
        "",
        "",
    ]


# ---------------------------------------------------------------- compressed transfer syntaxes


def test_compressed_transfer_syntaxes_decode_to_the_uncompressed_pixels(tmp_path):
    p = _eight_bit()
    plain = images.load_image(write_dicom(tmp_path / "plain.dcm", p.astype(np.uint16) * 16, bits_stored=12), p.shape)
    for syntax in (RLELossless, JPEG2000Lossless):
        path = write_dicom(
            tmp_path / f"{syntax.name[:4]}.dcm", p.astype(np.uint16) * 16, bits_stored=12, transfer_syntax=syntax
        )
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
        np.testing.assert_array_equal(images.load_image(path, p.shape), plain)
    # JPEG-LS needs pylibjpeg-libjpeg (featx[dicom]); pydicom ships these two files
    jpeg_ls = images.load_image(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"), (64, 64))
    np.testing.assert_array_equal(jpeg_ls, images.load_image(get_testdata_file("MR_small.dcm"), (64, 64)))


_WITHOUT_DECODERS = """
import sys
for name in ("pylibjpeg", "libjpeg", "openjpeg", "rle"):
    sys.modules[name] = None  # an install without featx[dicom]'s decoder plugins
from featx.data import images
from featx.errors import ImageReadError
try:
    images.load_image(sys.argv[1], (64, 64))
except ImageReadError as error:
    print(error.reason)
"""


def test_a_transfer_syntax_without_its_decoder_is_a_named_error():
    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_DECODERS, path], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    reason = result.stdout.strip()
    assert reason.startswith("no decoder installed for the transfer syntax JPEG-LS Lossless Image Compression")
    assert "1.2.840.10008.1.2.4.80" in reason and "pip install 'featx[dicom]'" in reason


def test_without_pydicom_every_dicom_row_names_the_extra(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "a.dcm", _eight_bit())
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImageReadError) as caught:
        images.load_image(path, (8, 8))
    assert caught.value.reason == "reading DICOM needs pydicom, which is not installed; " + dicom.INSTALL_HINT


def test_unreadable_dicom_reasons(tmp_path):
    not_dicom = tmp_path / "text.dcm"
    not_dicom.write_bytes(b"hello" * 40)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    no_pixels = tmp_path / "sr.dcm"  # a structured report: no image, no pixels (an image without them: cut short)
    no_pixels.write_bytes(Path(get_testdata_file("test-SR.dcm")).read_bytes())
    reasons = {}
    for path in (not_dicom, empty, no_pixels, tmp_path / "missing.dcm"):
        with pytest.raises(ImageReadError) as caught:
            images.load_image(path, (8, 8))
        reasons[path.name] = caught.value.reason
    assert reasons == {
        "text.dcm": "not a DICOM file (no 'DICM' marker after the 128-byte preamble)",
        "empty.dcm": "empty file (0 bytes)",
        "sr.dcm": "the DICOM file has no pixel data (e.g. a report or a presentation state)",
        "missing.dcm": "file not found",
    }


# ---------------------------------------------------------------- scan


def test_scan_finds_dicom_by_suffix_and_by_marker_and_reads_patient_ids(tmp_path):
    root = tmp_path / "archive"
    p = _eight_bit(8, 8)
    write_dicom(root / "train" / "NORMAL" / "img001.dcm", p, patient_id="P-17", sex="F", age="071Y", view="PA")
    write_dicom(root / "train" / "NORMAL" / "1.2.840.99", p, patient_id="P-17", sex="F", age="072Y", view="AP")
    write_dicom(root / "test" / "PNEUMONIA" / "img002.DCM", p, patient_id="P-18", sex="M", age="040Y")
    write_dicom(root / "test" / "NORMAL" / "img003.dcm", p, patient_id="P-19")
    (root / "train" / "NORMAL" / "notes").write_text("not an image")
    result = scan(root)
    rows = {row["path"]: row for row in result.rows}
    assert set(rows) == {
        "train/NORMAL/1.2.840.99",
        "train/NORMAL/img001.dcm",
        "test/NORMAL/img003.dcm",
        "test/PNEUMONIA/img002.DCM",
    }
    assert [rows[p]["patient_id"] for p in ("train/NORMAL/img001.dcm", "train/NORMAL/1.2.840.99")] == ["P-17"] * 2
    assert rows["test/PNEUMONIA/img002.DCM"] == {
        "path": "test/PNEUMONIA/img002.DCM",
        "label": "PNEUMONIA",
        "split": "test",
        "patient_id": "P-18",
        "sex": "M",
        "age": "40",
        "view": "",
    }
    assert result.parser == "dicom-header"
    assert any("Skipped 1 non-image" in note for note in result.notes)
    manifest = read_manifest(write_manifest(result.rows, tmp_path / "m.csv"))
    assert manifest.meta["age"] == ("72", "71", "", "40")  # rows sorted by split, then path


# ---------------------------------------------------------------- stage one


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def test_extract_records_the_window_and_reports_bad_dicom_rows(tmp_path):
    from featx.extract import store
    from featx.extract.stage import ExtractConfig, run_extract

    data = tmp_path / "data"
    p = _eight_bit(32, 32)
    paths = _variants(data, p)
    (data / "broken.dcm").write_bytes(b"\0" * 300)
    rows = [
        {"path": path.name, "label": "a" if k % 2 else "b", "split": "train", "patient_id": f"p{k}"}
        for k, path in enumerate([*paths.values(), data / "broken.dcm"])
    ]
    manifest = write_manifest(rows, data / "manifest.csv")
    config = ExtractConfig(
        backbones=("tiny",), manifest=manifest, data_root=data, out_dir=tmp_path / "f", weights="random"
    )
    summary = run_extract(config, _quiet())[0]
    assert summary.failures == 1
    features = store.load(summary.path)
    assert features.attrs["dicom_window"] == "file"
    assert features.errors == ("broken.dcm\tnot a DICOM file (no 'DICM' marker after the 128-byte preamble)",)
    good = features.X[features.ok]
    np.testing.assert_allclose(good, np.broadcast_to(good[0], good.shape), atol=1e-5)  # every encoding: one embedding
    from featx.files import file_sha256

    # the sha256 of the bytes the DICOM decoder read (the damaged file's too)
    assert list(features.image_sha256) == [file_sha256(data / path) for path in features.ids]
    with pytest.raises(StaleCacheError, match="dicom_window: cached 'file' vs requested 'minmax'"):
        run_extract(ExtractConfig(**{**config.__dict__, "dicom_window": "minmax"}), _quiet())


def test_a_manifest_without_dicom_ignores_the_window_flag(tmp_path):
    from imagetree import make_tree

    from featx.extract.stage import ExtractConfig, run_extract

    manifest = make_tree(tmp_path / "data", n=6)
    config = ExtractConfig(
        backbones=("tiny",), manifest=manifest, data_root=manifest.parent, out_dir=tmp_path / "f", weights="random"
    )
    assert run_extract(config, _quiet())[0].status == "built"
    again = ExtractConfig(**{**config.__dict__, "dicom_window": "percentile"})
    assert run_extract(again, _quiet())[0].status == "hit"


@pytest.mark.realdata
def test_dicom_from_a_kermany_image_embeds_like_the_8bit_image(tmp_path, kermany_train):
    """Done-when: 12-bit MONOCHROME2, inverted MONOCHROME1 and rescaled DICOM of a real image embed like its JPEG."""
    from featx.extract import store
    from featx.extract.stage import ExtractConfig, run_extract

    source = sorted((kermany_train / "PNEUMONIA").glob("*.jpeg"))[0]
    rgb = np.asarray(Image.open(source))
    assert (rgb[..., 0] == rgb[..., 2]).all()  # stored as RGB, but grey
    data = tmp_path / "data"
    (data / "source.jpeg").parent.mkdir(parents=True)
    (data / "source.jpeg").write_bytes(source.read_bytes())
    encodings = _variants(data, rgb[..., 0])
    names = ["source.jpeg", *(path.name for path in encodings.values())]
    rows = [{"path": name, "label": "x", "split": "train", "patient_id": name} for name in names]
    manifest = write_manifest(rows, data / "manifest.csv")
    config = ExtractConfig(
        backbones=("tiny",),
        manifest=manifest,
        data_root=data,
        out_dir=tmp_path / "f",
        weights="random",
        image_size=rgb.shape[0],
        poolings=("avg", "max"),
    )
    path = run_extract(config, _quiet())[0].path
    for pooling in ("avg", "max"):
        X = store.load(path, pooling).X
        assert np.abs(X).sum() > 0
        for k, name in enumerate(names[1:], start=1):
            np.testing.assert_allclose(X[k], X[0], rtol=1e-5, atol=1e-5, err_msg=f"{pooling} {name}")


# ---------------------------------------------------------------- issue 19: DICOM edges, read with pydicom's own files


def _reason(path) -> str:
    with pytest.raises(ImageReadError) as caught:
        images.load_image(path, (8, 8))
    return caught.value.reason


@pytest.mark.parametrize(("name", "fraction"), [("MR_small_jp2klossless.dcm", 0.6), ("JPEG2000.dcm", 0.5)])
def test_a_jpeg2000_file_cut_short_is_corrupt_or_truncated_not_a_report(tmp_path, name, fraction):
    data = Path(get_testdata_file(name)).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: int(len(data) * fraction)])
    reason = _reason(cut)
    assert reason.startswith("corrupt or truncated DICOM file"), reason
    assert "report" not in reason and "in file" not in reason  # the row names the file already
    # a real report still reads as one
    assert _reason(get_testdata_file("test-SR.dcm")).startswith("the DICOM file has no pixel data")


def test_an_image_header_without_pixel_data_is_a_file_cut_short(tmp_path):
    no_pixels = write_dicom(tmp_path / "sc.dcm", _eight_bit(), pixel_data=False)  # Secondary Capture *Image*
    assert _reason(no_pixels) == (
        "corrupt or truncated DICOM file: its header describes an image (Secondary Capture Image Storage) but the "
        "pixel data is missing or cut short"
    )


def test_a_bad_header_value_names_the_element():
    assert _reason(get_testdata_file("badVR.dcm")) == (
        "bad DICOM header value: NumberOfFrames (0028,0008) is '1A', not an integer"
    )


def test_a_dataset_without_preamble_or_file_meta_is_read_when_it_parses(tmp_path):
    source = get_testdata_file("CT_small.dcm")
    for implicit, little in ((False, True), (True, True), (False, False)):
        dataset = pydicom.dcmread(source)
        if not little:  # pydicom writes the pixel bytes as they are: swap them for a big-endian file
            pixels = dataset.pixel_array
            dataset.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
        dataset.preamble = None
        del dataset.file_meta
        bare = tmp_path / f"bare_{implicit}_{little}.dcm"
        pydicom.dcmwrite(bare, dataset, enforce_file_format=False, implicit_vr=implicit, little_endian=little)
        assert bare.read_bytes()[128:132] != b"DICM"
        np.testing.assert_array_equal(dicom.read_pixels(bare, "minmax"), dicom.read_pixels(source, "minmax"))
        assert dicom.read_header(bare)["patient_id"] == str(pydicom.dcmread(source).PatientID)
    # bare datasets without pixels are DICOM without pixel data, not "not a DICOM file"
    assert _reason(get_testdata_file("ExplVR_LitEndNoMeta.dcm")).startswith("the DICOM file has no pixel data")
    # what does not parse as DICOM is still not DICOM
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 300 + b"hello" * 40)
    assert _reason(junk) == dicom.NOT_DICOM


_READ_NOISY_FILES = """
import sys
from featx.data import images
from featx.errors import ImageReadError
for path in sys.argv[1:]:
    try:
        images.load_image(path, (8, 8))
        print("ok")
    except ImageReadError as error:
        print(error.reason)
"""


def test_pydicom_warnings_stay_with_the_row_or_are_logged_once_never_per_file_on_stderr(tmp_path):
    data = Path(get_testdata_file("MR_small_jp2klossless.dcm")).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    padded = get_testdata_file("MR_small_padded.dcm")  # pydicom warns: excess padding removed
    result = subprocess.run(
        [sys.executable, "-c", _READ_NOISY_FILES, str(cut), padded, padded, str(cut)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    reasons = result.stdout.splitlines()
    assert reasons[1:3] == ["ok", "ok"]
    for reason in (reasons[0], reasons[3]):  # the warning is kept with the row's reason
        assert reason.startswith("corrupt or truncated DICOM file") and "End of file reached" in reason
    err = result.stderr
    assert "UserWarning" not in err and "<no filename>" not in err and "End of file" not in err, err
    assert err.count("excess padding") == 1 and "logged once" in err  # read twice, said once


def test_extract_warns_once_with_a_count_when_the_file_window_falls_back_to_the_stored_bits(tmp_path):
    from featx.extract.stage import ExtractConfig, run_extract

    data = tmp_path / "data"
    data.mkdir()
    for k in range(3):  # CT_small has no window: 16 stored bits for a narrow range of values
        (data / f"ct_{k}.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    write_dicom(data / "windowed.dcm", _eight_bit(32, 32), window=unit_window())
    rows = [
        {"path": name, "label": "ab"[k % 2], "split": "train", "patient_id": f"p{k}"}
        for k, name in enumerate(["ct_0.dcm", "ct_1.dcm", "ct_2.dcm", "windowed.dcm"])
    ]
    manifest = write_manifest(rows, data / "manifest.csv")
    config = ExtractConfig(
        backbones=("tiny",), manifest=manifest, data_root=data, out_dir=tmp_path / "f", weights="random"
    )
    console = Console(file=io.StringIO(), width=400)
    run_extract(config, console)
    out = console.file.getvalue()
    assert "warning: 3 of 4 DICOM rows have no window" in out
    assert "--dicom-window minmax" in out and "percentile" in out
    for window in ("minmax", "percentile"):
        console = Console(file=io.StringIO(), width=400)
        run_extract(ExtractConfig(**{**config.__dict__, "dicom_window": window, "out_dir": tmp_path / window}), console)
        assert "have no window" not in console.file.getvalue()
    console = Console(file=io.StringIO(), width=400)
    run_extract(config, console)  # a cache hit: nothing is decoded, nothing to warn about
    assert "have no window" not in console.file.getvalue()
