"""Decode, resize and batch images for the backbones.

One image becomes an (h, w, 3) uint8 RGB array whatever it was on disk: 8- or
16-bit, grayscale, palette, RGBA, rotated by its EXIF orientation. JPEGs much
larger than the target are decoded at reduced scale (libjpeg DCT scaling through
``Image.draft``), which is where the time goes for 1-3 megapixel X-rays.
``iter_batches`` decodes on a thread pool (Pillow releases the GIL while
decoding) a bounded number of batches ahead, so memory does not grow with the
number of images. A file that cannot be read is recorded and its row left zero.
Each file is read whole once; its sha256 comes from those same bytes.

DICOM files (featx/data/dicom.py) take a floating-point path instead: their
display values are resized in float32 and handed on unrounded, so 12- and
16-bit precision is not cut to 8 bits before the backbone.
"""

from __future__ import annotations

import io
import math
import warnings
from collections import deque
from collections.abc import Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from featx.config import default_workers
from featx.data import dicom
from featx.data.manifest import RASTER_SUFFIXES  # read by Pillow; other names are DICOM when they carry DICM
from featx.errors import FeatxError, ImageReadError, one_of_message
from featx.files import bytes_sha256, missing_reason

RESIZE_MODES = ("stretch", "pad", "crop")
MAX_PIXELS = 10_000 * 10_000  # above: refused as a decompression bomb

# Pillow warns between its own limit and twice it; featx refuses above MAX_PIXELS
# itself (from the header, before decoding), so the warning adds nothing.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # these swap width and height
_RESAMPLE = Image.Resampling.BILINEAR
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def check_resize_mode(resize_mode: str) -> str:
    """The resize mode unchanged; FeatxError with the one-of sentence when it is not in RESIZE_MODES."""
    if resize_mode not in RESIZE_MODES:
        raise FeatxError(one_of_message("resize_mode", resize_mode, RESIZE_MODES))
    return resize_mode


def check_size(size) -> tuple[int, int]:
    """(h, w) as two positive ints; an int means a square."""
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise FeatxError(
            f"The image size must be an int or a (height, width) pair of ints. Got {size!r} instead."
        ) from None
    if height < 1 or width < 1:
        raise FeatxError(f"The image size must be positive. Got {size!r} instead.")
    return height, width


def _source_size_needed(source_wh: tuple[int, int], target_wh: tuple[int, int], resize_mode: str) -> tuple[int, int]:
    """The smallest (w, h) the decoded source may have without losing detail in the resized output."""
    (src_w, src_h), (dst_w, dst_h) = source_wh, target_wh
    if resize_mode == "stretch":
        return dst_w, dst_h
    if resize_mode == "pad":
        scale = min(dst_w / src_w, dst_h / src_h)
    else:  # crop: scale so the image covers the target, then cut the middle
        scale = max(dst_w / src_w, dst_h / src_h)
    return max(1, math.ceil(src_w * scale)), max(1, math.ceil(src_h * scale))


def _draft(image: Image.Image, size: tuple[int, int], resize_mode: str) -> None:
    """Ask libjpeg to decode at 1/2, 1/4 or 1/8 scale when the result still covers what the resize needs."""
    if image.format not in ("JPEG", "MPO"):  # MPO: multi-picture JPEG from cameras
        return
    height, width = size
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block is not worth failing the image for
        orientation = 1
    if orientation in _TRANSPOSED_ORIENTATIONS:  # the target is in display orientation; the file is not
        width, height = height, width
    need_w, need_h = _source_size_needed(image.size, (width, height), resize_mode)
    if image.size[0] < 2 * need_w or image.size[1] < 2 * need_h:
        return
    mode = "L" if image.mode == "L" else "RGB" if image.mode in ("RGB", "YCbCr") else None
    image.draft(mode, (need_w, need_h))
    # Pillow picks the largest scale whose result is >= the request; hold it to that.
    assert image.size[0] >= need_w and image.size[1] >= need_h, (image.size, need_w, need_h)


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block leaves the pixels as stored rather than failing."""
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Three 8-bit channels: 16-bit scaled (not clipped), alpha composited over black."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        values = np.asarray(image)
        if mode == "F":
            eight_bit = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        else:  # full 16-bit range onto 0..255, rounding: 65535 -> 255, 257 -> 1
            wide = np.clip(values.astype(np.int64), 0, 65535)
            eight_bit = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(eight_bit, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def read_file(path, filesystem=None) -> bytes:
    """A whole image file's bytes (decoded from memory, so its sha256 costs no second read).

    `filesystem` (an fsspec filesystem, featx.data.storage) reads `path` from there; None reads
    the local file. Raises ImageReadError naming the file and the reason.
    """
    if filesystem is not None:
        return _read_remote(path, filesystem)
    path = Path(path)
    try:
        _check_file(path)
        data = path.read_bytes()
    except _Unreadable as exc:
        raise _read_error(path, str(exc)) from None
    except FileNotFoundError:
        raise _read_error(path, missing_reason(path)) from None
    except PermissionError:
        raise _read_error(path, "permission denied") from None
    except OSError as exc:
        raise _read_error(path, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if not data:
        raise _read_error(path, "empty file (0 bytes)")
    return data


def _read_remote(path, filesystem) -> bytes:
    """The file's bytes from an fsspec filesystem, in one read (object stores answer each seek with a request)."""
    try:
        info = filesystem.info(path)
        if info.get("type") != "file":
            raise _Unreadable("not a regular file")
        if not info.get("size"):
            raise _Unreadable("empty file (0 bytes)")
        with filesystem.open(path, "rb") as remote:
            data = remote.read()
    except _Unreadable as exc:
        raise _read_error(path, str(exc)) from None
    except FileNotFoundError:
        raise _read_error(path, "file not found") from None
    except PermissionError:
        raise _read_error(path, "permission denied") from None
    except OSError as exc:  # the storage failed, not the image
        raise _read_error(path, f"could not be read from its filesystem ({str(exc) or type(exc).__name__})") from None
    if not data:
        raise _read_error(path, "empty file (0 bytes)")
    return data


def decode(data: bytes, path, size=None, resize_mode: str = "stretch") -> Image.Image:
    """An image file's bytes to an upright RGB image, at reduced JPEG scale when `size` (h, w) allows it.

    `path` only names the file in the ImageReadError raised for data that cannot be decoded.
    """
    path = Path(path)
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise _Unreadable(_bomb_reason(width, height))
            if size is not None:
                _draft(image, check_size(size), resize_mode)
            image.load()
            return _to_rgb(_upright(image))
    except _Unreadable as exc:
        raise _read_error(path, str(exc)) from None
    except Image.DecompressionBombError as exc:
        raise _read_error(path, f"decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise _read_error(path, "not an image file Pillow can decode") from None
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for damaged data
        detail = str(exc) or type(exc).__name__
        raise _read_error(path, f"corrupt or truncated image data ({detail})") from None


def read_rgb(path, size=None, resize_mode: str = "stretch", filesystem=None) -> Image.Image:
    """Decode one file to an upright RGB image, at reduced JPEG scale when `size` (h, w) allows it.

    `filesystem`: as in read_file. Raises ImageReadError naming the file and the reason.
    """
    return decode(read_file(path, filesystem), path, size, resize_mode)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise _Unreadable(missing_reason(path))
    if path.stat().st_size == 0:
        raise _Unreadable("empty file (0 bytes)")


def read_dicom(path, window: str = dicom.DEFAULT_WINDOW, data: bytes | None = None) -> np.ndarray:
    """The first frame of a DICOM file as float32 display values in 0..255, (h, w) or (h, w, 3), unrounded.

    `data`: the file's bytes when already read. Raises ImageReadError naming the file and the reason (not
    DICOM, no pixel data, no decoder installed...).
    """
    path = Path(path)
    try:
        if data is None:
            _check_file(path)
        source = io.BytesIO(data) if data is not None else path
        return dicom.read_pixels(source, window, max_pixels=MAX_PIXELS) * np.float32(255.0)
    except (_Unreadable, dicom.DicomReadError) as exc:
        raise _read_error(path, str(exc)) from None
    except PermissionError:
        raise _read_error(path, "permission denied") from None


def _resize_values(values: np.ndarray, size, resize_mode: str) -> np.ndarray:
    """(h, w) or (h, w, 3) float32 -> (h, w, 3) float32 at `size`, with the same geometry as `resize`."""
    planes = [values] if values.ndim == 2 else [values[..., k] for k in range(values.shape[2])]
    resized = [
        resize(Image.fromarray(np.ascontiguousarray(p, dtype=np.float32), mode="F"), size, resize_mode) for p in planes
    ]
    return np.stack(resized * 3 if len(resized) == 1 else resized, axis=-1)


def resize(image: Image.Image, size, resize_mode: str = "stretch") -> np.ndarray:
    """(h, w, 3) uint8 for an RGB image, (h, w) float32 for a mode 'F' one.

    `stretch` ignores aspect, `pad` fits inside and pads black (centred), `crop` cuts the centre.
    """
    height, width = check_size(size)
    check_resize_mode(resize_mode)
    src_w, src_h = image.size
    if resize_mode == "stretch":
        out = image.resize((width, height), _RESAMPLE) if image.size != (width, height) else image
    elif resize_mode == "pad":
        scale = min(width / src_w, height / src_h)
        fit_w = min(width, max(1, round(src_w * scale)))
        fit_h = min(height, max(1, round(src_h * scale)))
        fitted = image.resize((fit_w, fit_h), _RESAMPLE) if image.size != (fit_w, fit_h) else image
        out = Image.new(image.mode, (width, height))  # black
        out.paste(fitted, ((width - fit_w) // 2, (height - fit_h) // 2))
    else:
        target_aspect = width / height
        if src_w / src_h > target_aspect:  # too wide: keep full height
            box_w, box_h = src_h * target_aspect, src_h
        else:
            box_w, box_h = src_w, src_w / target_aspect
        left, top = (src_w - box_w) / 2, (src_h - box_h) / 2
        out = image.resize((width, height), _RESAMPLE, box=(left, top, left + box_w, top + box_h))
    return np.asarray(out, dtype=np.float32 if image.mode == "F" else np.uint8)


def read_image(
    path, size, resize_mode: str = "stretch", dicom_window: str = dicom.DEFAULT_WINDOW, filesystem=None
) -> tuple[np.ndarray, str]:
    """One file -> ((h, w, 3) RGB at `size` (h, w), hex sha256 of the file's bytes).

    uint8 for the files Pillow reads; float32 in 0..255 for DICOM (dicom.is_dicom_path), not rounded. The
    sha256 is of the very bytes decoded, so it costs no second read. ImageReadError(reason) when the file
    cannot be read; its `sha256` attribute holds the digest when the bytes were read but not decoded.
    `filesystem`: as in read_file.
    """
    size = check_size(size)
    check_resize_mode(resize_mode)
    data = read_file(path, filesystem)
    digest = bytes_sha256(data)
    try:
        if _is_dicom(path, data, filesystem):
            return _resize_values(read_dicom(path, dicom_window, data=data), size, resize_mode), digest
        return resize(decode(data, path, size, resize_mode), size, resize_mode), digest
    except ImageReadError as exc:
        exc.sha256 = digest
        raise


def _is_dicom(path, data: bytes, filesystem) -> bool:
    """dicom.is_dicom_path for a local file; inside a filesystem, the marker is looked for in the bytes read."""
    if filesystem is None:
        return dicom.is_dicom_path(path, RASTER_SUFFIXES)
    suffix = Path(path).suffix.lower()
    if suffix in dicom.DICOM_SUFFIXES or suffix in RASTER_SUFFIXES:
        return suffix in dicom.DICOM_SUFFIXES
    return data[dicom.PREAMBLE_BYTES : dicom.PREAMBLE_BYTES + len(dicom.MAGIC)] == dicom.MAGIC


def load_image(
    path, size, resize_mode: str = "stretch", dicom_window: str = dicom.DEFAULT_WINDOW, filesystem=None
) -> np.ndarray:
    """One file -> (h, w, 3) RGB at `size` (h, w): read_image without the sha256."""
    return read_image(path, size, resize_mode, dicom_window, filesystem)[0]


@dataclass
class Batch:
    """One batch of decoded rows as iter_batches yields it."""

    start: int  # index of the first row in the full path list
    images: np.ndarray  # (b, h, w, 3) float32 in 0..255, raw RGB, zeros where not ok
    ok: np.ndarray  # (b,) bool
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    sha256: list[str] = field(default_factory=list)  # hex sha256 of each row's file bytes, "" where unread

    def __len__(self) -> int:
        return len(self.ok)


def iter_batches(
    paths: Sequence,
    size,
    resize_mode: str = "stretch",
    batch_size: int = 32,
    start: int = 0,
    workers: int | None = None,
    prefetch: int = 2,
    dicom_window: str = dicom.DEFAULT_WINDOW,
    filesystem=None,
) -> Generator[Batch, None, None]:
    """Batches of rows start, start+batch_size, ... in order, decoded `prefetch` batches ahead on threads.

    While the caller works on one batch, the next `prefetch` are decoding, so at most
    prefetch + 1 batch arrays are alive at a time whatever len(paths) is. `filesystem`: as in read_file.
    """
    size = check_size(size)
    check_resize_mode(resize_mode)
    dicom.check_window(dicom_window)
    if batch_size < 1:
        raise FeatxError(f"The batch size must be a positive integer. Got {batch_size!r} instead.")
    if not 0 <= start <= len(paths):
        raise FeatxError(f"The start row must be between 0 and {len(paths)}. Got {start!r} instead.")
    workers = workers or default_workers()
    prefetch = max(0, int(prefetch))
    starts = iter(range(start, len(paths), batch_size))
    pending: deque[tuple[int, np.ndarray, list[Future]]] = deque()

    def submit(pool: ThreadPoolExecutor, batch_start: int) -> None:
        rows = min(batch_size, len(paths) - batch_start)
        images = np.zeros((rows, *size, 3), dtype=np.float32)
        futures = [
            pool.submit(
                _decode_into, images, row, paths[batch_start + row], size, resize_mode, dicom_window, filesystem
            )
            for row in range(rows)
        ]
        pending.append((batch_start, images, futures))

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featx-decode")
    try:
        for batch_start in starts:
            submit(pool, batch_start)
            if len(pending) > prefetch:
                break
        while pending:
            batch_start, images, futures = pending.popleft()
            reasons, digests = zip(*(future.result() for future in futures))
            ok = np.array([reason is None for reason in reasons], dtype=bool)
            errors = [
                (str(paths[batch_start + row]), reason) for row, reason in enumerate(reasons) if reason is not None
            ]
            yield Batch(start=batch_start, images=images, ok=ok, errors=errors, sha256=list(digests))
            del images  # the consumer owns it now; keep only `prefetch` arrays of our own
            next_start = next(starts, None)
            if next_start is not None:
                submit(pool, next_start)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _decode_into(
    images: np.ndarray, row: int, path, size: tuple[int, int], resize_mode: str, dicom_window: str, filesystem
) -> tuple[str | None, str]:
    """Write one decoded image into its row: (reason it cannot be read or None, sha256 of its bytes or "")."""
    try:
        options = {} if filesystem is None else {"filesystem": filesystem}  # local files: the call it always was
        images[row], digest = read_image(path, size, resize_mode, dicom_window, **options)
    except ImageReadError as exc:
        return exc.reason, getattr(exc, "sha256", "")
    return None, digest


class _Unreadable(Exception):
    pass


def _bomb_reason(width: int, height: int) -> str:
    return (
        f"refused as a possible decompression bomb: {width}x{height} = {width * height:,} pixels "
        f"is above the limit of {MAX_PIXELS:,}"
    )


def _read_error(path: Path, reason: str) -> ImageReadError:
    error = ImageReadError(f"Cannot read image '{path}': {reason}.")
    error.path = str(path)
    error.reason = reason
    return error
