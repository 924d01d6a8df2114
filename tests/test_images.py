"""Decoding, colour handling, resize modes, reduced-scale JPEG decode, bad files and batching."""

from __future__ import annotations

import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from featx.data import images
from featx.errors import FeatxError, ImageReadError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _save(array, path, **kwargs):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, **kwargs)
    return path


def _stripes(width, height, colours):
    """Vertical stripes of equal width, one per colour."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    step = width // len(colours)
    for index, colour in enumerate(colours):
        array[:, index * step : (index + 1) * step] = colour
    return array


def _png_rgb16(path, rgb16: np.ndarray):
    """A 48-bit RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height pixels (a decompression bomb, a few bytes on disk)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)))
    return path


def _jpeg_with_orientation(path, array, orientation, quality=95):
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, quality=quality, exif=exif)
    return path


# ------------------------------------------------------------------ resize modes


def test_stretch_ignores_aspect_and_keeps_left_right(tmp_path):
    path = _save(_stripes(40, 20, [RED, BLUE]), tmp_path / "a.png")
    out = images.load_image(path, (16, 16), "stretch")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert tuple(out[8, 2]) == RED and tuple(out[8, 13]) == BLUE


def test_pad_keeps_aspect_and_pads_black_centred(tmp_path):
    path = _save(np.full((10, 40, 3), 255), tmp_path / "wide.png")  # 40 wide, 10 high
    out = images.load_image(path, (20, 20), "pad")  # fitted 20x5, centred vertically
    assert out.shape == (20, 20, 3)
    assert out[:7].max() == 0 and out[13:].max() == 0
    assert out[8:12].min() == 255


def test_pad_a_tall_image_pads_left_and_right(tmp_path):
    path = _save(np.full((40, 10, 3), 200), tmp_path / "tall.png")
    out = images.load_image(path, (20, 20), "pad")
    assert out[:, :7].max() == 0 and out[:, 13:].max() == 0 and out[:, 8:12].min() == 200


def test_crop_cuts_the_centre(tmp_path):
    path = _save(_stripes(40, 20, [RED, GREEN, GREEN, BLUE]), tmp_path / "stripes.png")
    out = images.load_image(path, (20, 20), "crop")
    assert (out == np.array(GREEN, dtype=np.uint8)).all()


def test_non_square_target_is_height_then_width(tmp_path):
    path = _save(np.full((30, 30, 3), 9), tmp_path / "sq.png")
    for mode in images.RESIZE_MODES:
        assert images.load_image(path, (12, 20), mode).shape == (12, 20, 3)


def test_unknown_resize_mode_names_the_choices(tmp_path):
    path = _save(np.zeros((8, 8, 3)), tmp_path / "a.png")
    with pytest.raises(FeatxError, match=r"'resize_mode'.*stretch.*Got 'strech'.*did you mean 'stretch'"):
        images.load_image(path, (8, 8), "strech")


# ------------------------------------------------------------------ colour


def test_sixteen_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    out = images.load_image(path, (1, 4))
    assert out[0, :, 0].tolist() == [0, 100, 128, 255]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_sixteen_bit_rgb_png_keeps_the_high_bytes(tmp_path):
    rgb16 = np.zeros((2, 2, 3), dtype=np.uint16)
    rgb16[..., 0], rgb16[..., 1], rgb16[..., 2] = 0x12FF, 0x8000, 0xFFFF
    path = _png_rgb16(tmp_path / "rgb16.png", rgb16)
    out = images.load_image(path, (2, 2))
    assert out[0, 0].tolist() == [0x12, 0x80, 0xFF]


def test_grayscale_and_palette_become_three_channels(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((6, 6), 77, dtype=np.uint8), mode="L").save(gray)
    assert images.load_image(gray, (6, 6))[0, 0].tolist() == [77, 77, 77]
    palette = tmp_path / "palette.png"
    Image.fromarray(_stripes(6, 6, [RED, BLUE])).convert("P", palette=Image.Palette.ADAPTIVE).save(palette)
    out = images.load_image(palette, (6, 6))
    assert out[0, 0].tolist() == list(RED) and out[0, 5].tolist() == list(BLUE)


def test_alpha_is_composited_over_black(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:, :2, 3] = 255  # left opaque, right transparent
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    out = images.load_image(path, (4, 4))
    assert out[:, :2].min() == 200 and out[:, 2:].max() == 0
    la = tmp_path / "la.png"
    Image.fromarray(rgba[..., [0, 3]], mode="LA").save(la)
    out = images.load_image(la, (4, 4))
    assert out[:, :2].min() == 200 and out[:, 2:].max() == 0


def test_exif_orientation_is_applied(tmp_path):
    # 40 wide x 20 high: left half red, right half blue; orientation 6 = shown rotated 90 degrees clockwise
    path = _jpeg_with_orientation(tmp_path / "rot.jpg", _stripes(40, 20, [RED, BLUE]), orientation=6)
    upright = images.read_rgb(path)
    assert upright.size == (20, 40)  # shown 20 wide, 40 high
    out = images.load_image(path, (40, 20))
    top, bottom = out[5, 10].astype(int), out[34, 10].astype(int)
    assert top[0] > 200 and top[2] < 60  # the left edge became the top
    assert bottom[2] > 200 and bottom[0] < 60


# ------------------------------------------------------------------ reduced-scale JPEG decode


def _gradient(width, height):
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    return np.broadcast_to(np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2), (height, width, 3))


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    path = _save(_gradient(1600, 1200), tmp_path / "big.jpg", quality=90)
    decoded = images.read_rgb(path, (64, 64), "stretch")
    assert decoded.size == (200, 150)  # 1/8 scale, still >= 64 x 64
    full = np.asarray(Image.open(path).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), dtype=float)
    fast = images.load_image(path, (64, 64)).astype(float)
    assert np.abs(fast - full).mean() < 3.0


def test_draft_never_goes_below_what_the_resize_needs(tmp_path):
    path = _save(_gradient(1600, 800), tmp_path / "wide.jpg")
    # pad to 64x64 needs only the fitted 64x32, so 1/8 (200x100) is allowed
    assert images.read_rgb(path, (64, 64), "pad").size == (200, 100)
    # crop to 64x64 needs the height at 64: 1/8 gives 100 rows, enough
    assert images.read_rgb(path, (64, 64), "crop").size == (200, 100)
    # stretch to 300 high needs 300 rows: only 1/2 (400 rows) qualifies
    assert images.read_rgb(path, (300, 64), "stretch").size == (800, 400)
    # close to the source size: no draft at all
    assert images.read_rgb(path, (500, 1000), "stretch").size == (1600, 800)


def test_draft_accounts_for_exif_rotation(tmp_path):
    # stored 1600 wide x 400 high, shown rotated: 400 wide x 1600 high
    path = _jpeg_with_orientation(tmp_path / "rot.jpg", _gradient(1600, 400).astype(np.uint8), orientation=6)
    decoded = images.read_rgb(path, (800, 100), "stretch")  # target 800 high x 100 wide, as shown
    assert decoded.size == (200, 800)  # drafted at 1/2 in file orientation, then rotated
    assert images.load_image(path, (800, 100)).shape == (800, 100, 3)


def test_grayscale_jpeg_drafts_in_l_mode(tmp_path):
    path = tmp_path / "gray.jpg"
    Image.fromarray(_gradient(1024, 1024)[..., 0].astype(np.uint8), mode="L").save(path)
    decoded = images.read_rgb(path, (64, 64))
    assert decoded.size == (128, 128) and decoded.mode == "RGB"


# ------------------------------------------------------------------ bad files


@pytest.fixture
def bad_files(tmp_path):
    good = _save(_gradient(64, 64), tmp_path / "good.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    bomb = _png_header_only(tmp_path / "bomb.png", 20_000, 20_000)
    return {
        "truncated": (truncated, "corrupt or truncated"),
        "corrupt": (corrupt, ""),
        "empty": (empty, "empty file"),
        "text": (text, "not an image"),
        "missing": (tmp_path / "missing.jpg", "not found"),
        "directory": (tmp_path, "not a regular file"),
        "bomb": (bomb, "decompression bomb"),
    }


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "empty", "text", "missing", "directory", "bomb"])
def test_unreadable_files_raise_image_read_error_with_a_reason(bad_files, kind):
    path, expected = bad_files[kind]
    with pytest.raises(ImageReadError) as info:
        images.load_image(path, (32, 32))
    assert expected in info.value.reason
    assert str(path) in str(info.value) and info.value.path == str(path)


def test_bomb_limit_is_read_at_call_time(tmp_path, monkeypatch):
    path = _save(np.zeros((100, 100, 3)), tmp_path / "a.png")
    assert images.load_image(path, (8, 8)).shape == (8, 8, 3)
    monkeypatch.setattr(images, "MAX_PIXELS", 5_000)
    with pytest.raises(ImageReadError, match="10,000 pixels is above the limit of 5,000"):
        images.load_image(path, (8, 8))


def test_iter_batches_records_bad_files_and_decodes_the_rest(tmp_path, bad_files):
    goods = [_save(np.full((16, 16, 3), 10 * (i + 1)), tmp_path / f"g{i}.png") for i in range(3)]
    bad_paths = [path for path, _ in bad_files.values()]
    paths = [goods[0], *bad_paths[:3], goods[1], *bad_paths[3:], goods[2]]
    batches = list(images.iter_batches(paths, (8, 8), "stretch", batch_size=4, workers=2))
    ok = np.concatenate([b.ok for b in batches])
    rows = np.concatenate([b.images for b in batches])
    errors = [e for b in batches for e in b.errors]
    good_rows = [0, 4, len(paths) - 1]
    assert ok.tolist() == [i in good_rows for i in range(len(paths))]
    assert [path for path, _ in errors] == [str(p) for p in bad_paths]
    assert all(reason for _, reason in errors)
    for row, value in zip(good_rows, (10, 20, 30)):
        assert rows[row].dtype == np.float32 and (rows[row] == value).all()
    assert not rows[~ok].any()


# ------------------------------------------------------------------ batching


@pytest.fixture
def numbered(tmp_path):
    """Seven images, image i filled with the value 10 * i."""
    return [_save(np.full((12, 12, 3), 10 * i), tmp_path / f"{i}.png") for i in range(7)]


def test_iter_batches_in_order_from_start(numbered):
    batches = list(images.iter_batches(numbered, (6, 6), "stretch", batch_size=3, start=2, workers=3, prefetch=1))
    assert [b.start for b in batches] == [2, 5]
    assert [len(b) for b in batches] == [3, 2]
    assert [b.images.shape for b in batches] == [(3, 6, 6, 3), (2, 6, 6, 3)]
    values = [float(image[0, 0, 0]) for b in batches for image in b.images]
    assert values == [20.0, 30.0, 40.0, 50.0, 60.0]
    assert all(b.ok.all() and not b.errors for b in batches)


def test_iter_batches_rows_equal_load_image(numbered):
    (batch,) = images.iter_batches(numbered[:2], (5, 7), "pad", batch_size=8)
    for row, path in enumerate(numbered[:2]):
        assert np.array_equal(batch.images[row], images.load_image(path, (5, 7), "pad").astype(np.float32))


def test_iter_batches_start_at_the_end_yields_nothing(numbered):
    assert list(images.iter_batches(numbered, 6, "stretch", batch_size=3, start=len(numbered))) == []


GATE_TIMEOUT = 10  # seconds; only ever waited out when a test is failing


class _GatedDecoder:
    """Stands in for images.read_image: the file named <i> decodes to the value i, once the test opens row i."""

    def __init__(self, n_rows: int):
        self.gates = [threading.Event() for _ in range(n_rows)]
        self.started = [threading.Event() for _ in range(n_rows)]
        self.finished = [threading.Event() for _ in range(n_rows)]

    def __call__(self, path, size, resize_mode="stretch", dicom_window="file"):
        row = int(path.stem)
        self.started[row].set()
        if not self.gates[row].wait(GATE_TIMEOUT):
            raise AssertionError(f"row {row} was never opened")
        self.finished[row].set()
        return np.full((*size, 3), row, dtype=np.uint8), f"{row:064x}"

    def open(self, *rows):
        for row in rows or range(len(self.gates)):
            self.gates[row].set()

    def wait_started(self, *rows) -> bool:
        return all(self.started[row].wait(GATE_TIMEOUT) for row in rows)

    def wait_finished(self, *rows) -> bool:
        return all(self.finished[row].wait(GATE_TIMEOUT) for row in rows)

    def started_rows(self) -> set[int]:
        return {row for row, event in enumerate(self.started) if event.is_set()}


@pytest.fixture
def gated(tmp_path, monkeypatch):
    """Twelve rows whose decoding the test releases row by row (no file is read)."""
    decoder = _GatedDecoder(12)
    monkeypatch.setattr(images, "read_image", decoder)
    return [tmp_path / f"{row}.png" for row in range(12)], decoder


def test_iter_batches_yields_in_row_order_when_later_rows_finish_first(gated):
    paths, decoder = gated
    batches = images.iter_batches(paths[:6], (4, 4), "stretch", batch_size=2, workers=6, prefetch=2)
    got = []
    consumer = threading.Thread(target=lambda: got.extend(batches))
    consumer.start()
    try:
        decoder.open(4, 5)
        assert decoder.wait_finished(4, 5)  # the last batch is decoded first ...
        decoder.open(2, 3)
        assert decoder.wait_finished(2, 3)
        assert got == []  # ... yet nothing is yielded before row 0 is ready
        decoder.open(0, 1)
    finally:
        decoder.open()
        consumer.join(GATE_TIMEOUT)
    assert not consumer.is_alive()
    assert [b.start for b in got] == [0, 2, 4]
    assert [b.images[:, 0, 0, 0].tolist() for b in got] == [[0, 1], [2, 3], [4, 5]]
    assert [b.sha256 for b in got] == [[f"{row:064x}", f"{row + 1:064x}"] for row in (0, 2, 4)]


def test_iter_batches_decodes_only_prefetch_batches_ahead(gated, monkeypatch):
    """Decode work is handed out only inside next(): the batch held plus `prefetch` more, however many workers."""
    paths, decoder = gated
    handed_out = []

    class RecordingPool(images.ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            handed_out.append(fn)
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(images, "ThreadPoolExecutor", RecordingPool)
    batches = images.iter_batches(paths, (4, 4), "stretch", batch_size=2, workers=8, prefetch=1)
    try:
        decoder.open(0, 1)
        first = next(batches)
        assert first.start == 0 and decoder.wait_started(2, 3)  # batch 1 is decoding while the caller holds 0
        assert len(handed_out) == 4 and decoder.started_rows() == {0, 1, 2, 3}  # 8 workers, but no batch 2 yet
        decoder.open(2, 3)
        second = next(batches)
        assert second.start == 2 and decoder.wait_started(4, 5)
        assert len(handed_out) == 6 and decoder.started_rows() == set(range(6))
    finally:
        decoder.open()
        batches.close()
    assert len(handed_out) == 6 and decoder.started_rows() == set(range(6))  # closing starts nothing new


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"start": 99}, {"size": (0, 4)}])
def test_iter_batches_rejects_bad_arguments(numbered, kwargs):
    arguments = {"size": (4, 4), "resize_mode": "stretch", "batch_size": 2, "start": 0, **kwargs}
    with pytest.raises(FeatxError):
        list(images.iter_batches(numbered, **arguments))


def test_a_symlink_loop_is_named_as_one(tmp_path):
    """Issue 8, case 13: a symlink loop was reported as "file not found"."""
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    with pytest.raises(ImageReadError, match="symlink loop"):
        images.load_image(tmp_path / "a.png", (8, 8))
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(ImageReadError, match="broken symlink .*gone.png"):
        images.load_image(tmp_path / "dangling.png", (8, 8))
    with pytest.raises(ImageReadError, match="file not found"):
        images.load_image(tmp_path / "missing.png", (8, 8))


def test_iter_batches_records_the_sha256_of_the_bytes_it_decodes(tmp_path):
    """Each row's file hash comes from the bytes read for decoding: equal files, equal hashes; "" when unread."""
    from featx.files import file_sha256

    first, same, corrupt, missing = (tmp_path / name for name in ("a.png", "b.png", "c.png", "d.png"))
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(first)
    same.write_bytes(first.read_bytes())
    corrupt.write_text("not a png")
    batch = next(images.iter_batches([first, same, corrupt, missing], (8, 8), batch_size=4, workers=2))
    assert batch.ok.tolist() == [True, True, False, False]
    assert batch.sha256 == [file_sha256(first), file_sha256(first), file_sha256(corrupt), ""]
    pixels, digest = images.read_image(first, (8, 8))
    assert digest == file_sha256(first) and pixels.shape == (8, 8, 3)
