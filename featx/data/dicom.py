"""DICOM input: detect, read the header, decode the first frame to display values in 0..1.

The pipeline follows the DICOM grayscale rendering chain (PS3.3 C.11): stored
values -> Modality LUT (RescaleSlope/RescaleIntercept, or a Modality LUT
Sequence) -> VOI (the VOI LUT Sequence, else the first WindowCenter/WindowWidth)
-> MONOCHROME1 inverted so that bone is bright as in MONOCHROME2. The result is
float32 in 0..1, never rounded to 8 bits here: images.py resizes it in floating
point, so 12- and 16-bit detail reaches the backbone.

`--dicom-window` chooses the VOI step:
  file        the file's VOI LUT, else its first window; a file with neither uses the
              full range its stored bits allow (through the Modality LUT)
  minmax      each image's own minimum..maximum
  percentile  each image's 0.5th..99.5th percentiles (a few hot or dead pixels do not set the range)

pydicom and the pylibjpeg decoders are the optional extra `featx[dicom]`;
nothing here imports them until a DICOM file is read. A file that is not DICOM,
has no pixel data, or is compressed with a transfer syntax no installed decoder
reads raises DicomReadError with the reason (and the extra to install).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

DICOM_WINDOWS = ("file", "minmax", "percentile")
DEFAULT_WINDOW = "file"
PERCENTILES = (0.5, 99.5)
DICOM_SUFFIXES = (".dcm", ".dicom")
EXTRA = "featx[dicom]"
INSTALL_HINT = f"install the DICOM extra: pip install '{EXTRA}'"
PREAMBLE_BYTES = 128
MAGIC = b"DICM"
# Header fields a manifest can carry as metadata columns: column -> DICOM keyword.
HEADER_META = {"sex": "PatientSex", "age": "PatientAge", "view": "ViewPosition"}
_AGE_UNITS = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}


class DicomReadError(Exception):
    """A DICOM file that cannot be turned into pixels; str(error) is the reason (one clause, no file name)."""


def check_window(window: str) -> str:
    """The window mode unchanged; FeatxError with the one-of sentence when it is not in DICOM_WINDOWS."""
    from featx.errors import FeatxError, one_of_message

    if window not in DICOM_WINDOWS:
        raise FeatxError(one_of_message("dicom_window", window, DICOM_WINDOWS))
    return window


def has_dicom_suffix(path) -> bool:
    return Path(path).suffix.lower() in DICOM_SUFFIXES


def has_preamble(path) -> bool:
    """True when the file carries the DICOM Part 10 marker: 'DICM' after a 128-byte preamble."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(PREAMBLE_BYTES + len(MAGIC))
    except OSError:
        return False
    return head[PREAMBLE_BYTES:] == MAGIC


def is_dicom_path(path, raster_suffixes=()) -> bool:
    """Whether featx reads `path` as DICOM: a .dcm/.dicom name, or any other non-raster name with the DICM marker."""
    suffix = Path(path).suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in raster_suffixes:
        return False
    return has_preamble(path)


# ---------------------------------------------------------------- pydicom's warnings

# pydicom reports what it tolerated (a file cut short, excess padding, a wrong VR) through warn_and_log: a
# message to its "pydicom" logger, then warnings.warn. Python's last-resort handler and the warnings module both
# printed these to stderr, once per file (some as '<no filename>'). featx catches the logger's copy per read
# (thread-local: decode threads read files side by side), ignores the warnings.warn copy, and keeps the messages
# with the row's reason when the read fails; when it succeeds, each distinct message is logged once per process
# on the "featx.dicom" logger (Python shows a WARNING on stderr when logging is not configured).
LOGGER = logging.getLogger("featx.dicom")
_notes = threading.local()
_logged: set[str] = set()
_lock = threading.Lock()
_WARNING_MODULES = r"(pydicom|featx\.data\.dicom)(\..*)?"  # where warn_and_log's warnings are attributed (stacklevel)


class _NoteHandler(logging.Handler):
    """Appends each pydicom log message to the current thread's notes, when a read collects them."""

    def emit(self, record: logging.LogRecord) -> None:
        notes = getattr(_notes, "stack", None)
        if notes:
            notes[-1].append(record.getMessage())


_HANDLER = _NoteHandler(logging.WARNING)


def _quiet_pydicom(pydicom) -> None:
    """Route pydicom's messages to _NoteHandler, not stderr (idempotent; warnings filters can be reset by callers
    such as pytest, so they are checked on every read)."""
    logger = logging.getLogger("pydicom")
    if _HANDLER not in logger.handlers:
        logger.addHandler(_HANDLER)  # a handler on its logger: Python's last-resort stderr handler stays unused
    if not any(f[0] == "ignore" and getattr(f[3], "pattern", None) == _WARNING_MODULES for f in warnings.filters):
        warnings.filterwarnings("ignore", module=_WARNING_MODULES)


@contextmanager
def _collected_notes() -> Iterator[list[str]]:
    """The pydicom messages of the reads inside the block, in this thread only."""
    stack = getattr(_notes, "stack", None)
    if stack is None:
        stack = _notes.stack = []
    notes: list[str] = []
    stack.append(notes)
    try:
        yield notes
    finally:
        stack.pop()


def _note_text(notes: Sequence[str], limit: int = 240) -> str:
    """pydicom's messages as one clause, without the file name (the row names it already)."""
    text = "; ".join(dict.fromkeys(re.sub(r"\s+in file \S+", "", " ".join(n.split())) for n in notes))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _log_once(notes: list[str]) -> None:
    """A read that succeeded despite pydicom's messages: each distinct message logged once per process."""
    for note in notes:
        key = _note_text([note])
        with _lock:
            if key in _logged:
                continue
            _logged.add(key)
        LOGGER.warning("pydicom: %s (logged once; later files with this message are read the same way)", key)


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise DicomReadError(f"reading DICOM needs pydicom, which is not installed; {INSTALL_HINT}") from None
    # Archives are full of values that bend the standard (PatientAge '58' instead of '058Y'): read them as they are,
    # without a warning per file.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    _quiet_pydicom(pydicom)
    return pydicom


NOT_DICOM = f"not a DICOM file (no '{MAGIC.decode()}' marker after the 128-byte preamble)"


def _read_dataset(source, stop_before_pixels: bool = False):
    """`source`: a path, or a binary file object holding the file's bytes (read once by the caller).

    A file without the 128-byte preamble and file meta (a bare dataset, as some archives and old
    ACR-NEMA tools write them) is read again with force=True and kept when it parses into something
    DICOM-like (an SOP class, an image's rows and columns, or pixel data): see _forced.
    """
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(
            source if hasattr(source, "read") else str(source), stop_before_pixels=stop_before_pixels
        )
    except InvalidDicomError:
        return _forced(pydicom, source, stop_before_pixels)
    except (OSError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:  # pydicom raises anything for a damaged header
        raise DicomReadError(f"unreadable DICOM header ({_short(error)})") from None


def _forced(pydicom, source, stop_before_pixels: bool):
    """The dataset of a file with no preamble/file meta, or DicomReadError(NOT_DICOM) when it does not parse."""
    if hasattr(source, "seek"):
        source.seek(0)
    try:
        dataset = pydicom.dcmread(
            source if hasattr(source, "read") else str(source), stop_before_pixels=stop_before_pixels, force=True
        )
        dicom_like = "SOPClassUID" in dataset or ("Rows" in dataset and "Columns" in dataset)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception:  # force=True reads anything: what does not parse is not DICOM
        raise DicomReadError(NOT_DICOM) from None
    if not (dicom_like or _has_pixel_data(dataset)):
        raise DicomReadError(NOT_DICOM)
    _infer_transfer_syntax(pydicom, dataset)
    return dataset


def _infer_transfer_syntax(pydicom, dataset) -> None:
    """A bare dataset names no transfer syntax; native (not encapsulated) pixel data is in the encoding pydicom
    found while reading it: implicit or explicit VR, little or big endian."""
    from pydicom.dataset import FileMetaDataset

    meta = getattr(dataset, "file_meta", None)
    if meta is not None and getattr(meta, "TransferSyntaxUID", None) is not None:
        return
    encoding = getattr(dataset, "original_encoding", (None, None))
    pixel = dataset.get("PixelData")
    encapsulated = pixel is not None and getattr(pixel, "is_undefined_length", False)
    if None in encoding or encapsulated:
        return  # _check_decodable says that no transfer syntax is named
    implicit, little = encoding
    uid = pydicom.uid
    syntax = (
        uid.ImplicitVRLittleEndian if implicit else uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian
    )
    if meta is None:
        meta = dataset.file_meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax


def _short(error: Exception, limit: int = 160) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- header


def parse_age(value) -> str:
    """A DICOM age string ('058Y', '6M', '58') as years ('58', '0.5'); '' when absent or unreadable."""
    text = str(value or "").strip().upper()
    match = re.fullmatch(r"(\d{1,3})\s*([YMWD]?)", text)
    if not match:
        return ""
    years = int(match.group(1)) / _AGE_UNITS[match.group(2) or "Y"]
    return f"{round(years, 2):g}"


def _sex(value) -> str:
    text = str(value or "").strip().upper()
    return text if text in ("M", "F", "O") else ""


def read_header(path) -> dict[str, str]:
    """PatientID and the HEADER_META columns of one DICOM file (no pixels read); '' where absent.

    Raises DicomReadError when the file is not DICOM or pydicom is missing.
    """
    with _collected_notes() as notes:
        dataset = _read_dataset(path, stop_before_pixels=True)
    if notes:
        _log_once(notes)
    header = {"patient_id": str(dataset.get("PatientID", "") or "").strip()}
    header["sex"] = _sex(dataset.get("PatientSex"))
    header["age"] = parse_age(dataset.get("PatientAge"))
    header["view"] = str(dataset.get("ViewPosition", "") or "").strip().upper()
    return header


def window_source(path) -> str | None:
    """How `--dicom-window file` scales this file's grey levels, from its header alone (no pixels read):
    "voi lut", "window", "colour" (no VOI step), "stored bits" (no VOI LUT and no usable WindowCenter/Width:
    the whole range its BitsStored allow, often far wider than the image's content), or None when the header
    cannot be read (decoding the row says why)."""
    try:
        with _collected_notes():
            dataset = _read_dataset(path, stop_before_pixels=True)
    except DicomReadError:
        return None
    if _integer(dataset, "Rows") is None or _integer(dataset, "Columns") is None:
        return None  # not an image (a report, a plan): decoding says so
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if (_integer(dataset, "SamplesPerPixel") or 1) > 1 or photometric == "PALETTE COLOR":
        return "colour"
    if dataset.get("VOILUTSequence"):
        return "voi lut"
    center, width = _first_value(dataset.get("WindowCenter")), _first_value(dataset.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        return "window"
    return "stored bits"


# ---------------------------------------------------------------- pixels


def _described_image(dataset) -> str:
    """'an image (CT Image Storage, 512x512)' when the header says the file is an image (an image SOP class, or
    rows and columns), else ''. Pixel data is mandatory in an image: without it the file was cut short."""
    sop = dataset.get("SOPClassUID")
    name = str(getattr(sop, "name", "") or "") if sop is not None else ""
    size = ""
    if _integer(dataset, "Rows") is not None and _integer(dataset, "Columns") is not None:
        size = f"{_integer(dataset, 'Columns')}x{_integer(dataset, 'Rows')}"
    if "Image Storage" not in name and not size:
        return ""
    parts = [part for part in (name if "Image Storage" in name else "", size) if part]
    return "an image (" + ", ".join(parts) + ")"


def _has_pixel_data(dataset) -> bool:
    return any(keyword in dataset for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _check_decodable(dataset, notes: Sequence[str] = ()) -> None:
    """DicomReadError naming the transfer syntax when pixel data is absent or no installed plugin decodes it.

    Pixel data missing from a file whose header describes an image (rows and columns), or after pydicom
    reached the end of the file early, is a file cut short, not a report: pydicom drops a truncated
    encapsulated element (a JPEG 2000 stream cut short) and returns the rest with a warning.
    """
    if not _has_pixel_data(dataset):
        cut = [n for n in notes if "end of file" in n.lower() or "truncat" in n.lower()]
        image = _described_image(dataset)
        if cut or image:
            raise DicomReadError(
                "corrupt or truncated DICOM file: "
                + (f"its header describes {image} but " if image else "")
                + "the pixel data is missing or cut short"
                + (f" (pydicom: {_note_text(cut)})" if cut else "")
            )
        raise DicomReadError("the DICOM file has no pixel data (e.g. a report or a presentation state)")
    from pydicom.pixels import get_decoder

    meta = getattr(dataset, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None)
    if syntax is None:
        raise DicomReadError("the DICOM file names no transfer syntax (TransferSyntaxUID is missing)")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicomReadError(f"no decoder exists for the transfer syntax {_syntax_name(syntax)}") from None
    if not decoder.is_available:
        raise DicomReadError(f"no decoder installed for the transfer syntax {_syntax_name(syntax)}; {INSTALL_HINT}")


# Image Pixel module elements the decoders read as integers (PS3.3 C.7.6.3) and the multi-frame count.
INTEGER_ELEMENTS = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "NumberOfFrames",
)
REQUIRED_ELEMENTS = ("Rows", "Columns", "BitsAllocated")


def _element_name(dataset, keyword: str) -> str:
    """'NumberOfFrames (0028,0008)': how a reason names a header element."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.tag import Tag

    tag = tag_for_keyword(keyword)
    return f"{keyword} {Tag(tag)}" if tag is not None else keyword


def _integer(dataset, keyword: str) -> int | None:
    """The element's (first) value as an int; None when absent or not an integer."""
    if keyword not in dataset:
        return None
    value = dataset[keyword].value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None


def _check_pixel_header(dataset) -> None:
    """DicomReadError naming the element when a value the decoders need is missing or not an integer
    (NumberOfFrames '1A' otherwise surfaced as "invalid literal for int()" from deep inside the decoder)."""
    for keyword in INTEGER_ELEMENTS:
        if keyword in dataset and str(dataset[keyword].value).strip() != "" and _integer(dataset, keyword) is None:
            raise DicomReadError(
                f"bad DICOM header value: {_element_name(dataset, keyword)} is {str(dataset[keyword].value)!r}, "
                "not an integer"
            )
    for keyword in REQUIRED_ELEMENTS:
        if _integer(dataset, keyword) is None:
            raise DicomReadError(
                f"bad DICOM header: {_element_name(dataset, keyword)} is missing, and decoding the pixel data needs it"
            )


def _syntax_name(syntax) -> str:
    name = getattr(syntax, "name", "") or ""
    return f"{name} ({syntax})" if name and name != str(syntax) else str(syntax)


def _first_frame(dataset) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        return np.asarray(pixel_array(dataset, index=0))  # only the first frame of a multi-frame file is decoded
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:  # decoders raise RuntimeError, ValueError, ... for damaged data
        raise DicomReadError(f"corrupt or truncated DICOM pixel data ({_short(error)})") from None


def _stored_range(dataset) -> tuple[float, float]:
    """The range the stored values may take, mapped through the Modality LUT (the 'file' fallback window)."""
    lut = dataset.get("ModalityLUTSequence")
    if lut:
        return 0.0, float(2 ** int(lut[0].LUTDescriptor[2]) - 1)
    bits = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 16)))
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        low, high = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    else:
        low, high = 0.0, 2.0**bits - 1
    slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return ends[0], ends[1]


def _first_value(element) -> float | None:
    if element is None:
        return None
    value = element.value if hasattr(element, "value") else element
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Window center/width to 0..1 as PS3.3 C.11.2.1.2 defines LINEAR, LINEAR_EXACT and SIGMOID."""
    values = values.astype(np.float64, copy=False)
    function = (function or "LINEAR").strip().upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width < 1:
        raise DicomReadError(f"the window width {width:g} is below 1, which LINEAR windowing does not allow")
    if width == 1:  # a threshold at the center
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _rescale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if not high > low:  # a flat image: mid-grey rather than a division by zero
        return np.full(values.shape, 0.5)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _voi(values: np.ndarray, dataset, window: str) -> np.ndarray:
    """Modality values -> 0..1 by the chosen window mode."""
    if window == "minmax":
        return _rescale(values, float(values.min()), float(values.max()))
    if window == "percentile":
        low, high = np.percentile(values, PERCENTILES)
        return _rescale(values, float(low), float(high))
    if dataset.get("VOILUTSequence"):
        from pydicom.pixels import apply_voi

        depth = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        mapped = apply_voi(np.rint(values).astype(np.int64), dataset, index=0)
        return np.clip(mapped.astype(np.float64) / (2.0**depth - 1), 0.0, 1.0)
    center, width = _first_value(dataset.get("WindowCenter")), _first_value(dataset.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        return apply_window(values, center, width, str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR"))
    return _rescale(values, *_stored_range(dataset))


def _color_to_unit(frame: np.ndarray, dataset) -> np.ndarray:
    """RGB / YBR (already converted to RGB by pydicom) or PALETTE COLOR -> (h, w, 3) in 0..1."""
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        frame = apply_color_lut(frame, dataset)
        top = 2.0 ** int(dataset.RedPaletteColorLookupTableDescriptor[2]) - 1
    else:
        top = 2.0 ** int(dataset.get("BitsStored", dataset.get("BitsAllocated", 8))) - 1
    return np.clip(frame.astype(np.float64) / top, 0.0, 1.0)


def read_pixels(path, window: str = DEFAULT_WINDOW, max_pixels: int | None = None) -> np.ndarray:
    """The first frame of a DICOM file as display values: (h, w) grayscale or (h, w, 3) RGB, float32 in 0..1.

    `path` may also be a binary file object of the file's bytes.

    Raises DicomReadError (the reason) for a non-DICOM file, missing pixel data, a transfer syntax without an
    installed decoder, an image above `max_pixels`, or damaged pixel data.
    """
    check_window(window)
    with _collected_notes() as notes:
        try:
            display = _read_pixels(path, window, max_pixels, notes)
        except DicomReadError as error:
            reason = str(error)
            extra = [n for n in notes if _note_text([n])[:50] not in reason]  # not what the reason says already
            raise DicomReadError(f"{reason} (pydicom: {_note_text(extra)})" if extra else reason) from None
    if notes:
        _log_once(notes)
    return display


def _read_pixels(path, window: str, max_pixels: int | None, notes: list[str]) -> np.ndarray:
    dataset = _read_dataset(path)
    _check_decodable(dataset, notes)
    _check_pixel_header(dataset)
    rows, columns = int(_integer(dataset, "Rows") or 0), int(_integer(dataset, "Columns") or 0)
    if max_pixels is not None and rows * columns > max_pixels:
        raise DicomReadError(
            f"refused as a possible decompression bomb: {columns}x{rows} = {rows * columns:,} pixels "
            f"is above the limit of {max_pixels:,}"
        )
    frame = _first_frame(dataset)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(dataset.get("SamplesPerPixel", 1) or 1) > 1 or photometric == "PALETTE COLOR":
        return _color_to_unit(frame, dataset).astype(np.float32)
    if frame.ndim != 2:
        raise DicomReadError(f"unexpected pixel array shape {frame.shape} for a single-sample image")
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(frame, dataset), dtype=np.float64)
    display = _voi(values, dataset, window)
    if photometric == "MONOCHROME1":
        display = 1.0 - display
    return display.astype(np.float32)
