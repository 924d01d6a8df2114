"""Small DICOM files for tests, written with pydicom (the `featx[dicom]` extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid  # noqa: E402

# RSNA's files say PatientAge "51", not "051Y": let the fakes bend the standard the same way
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE


def write_dicom(
    path,
    pixels: np.ndarray,
    *,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    patient_id: str = "",
    sex: str = "",
    age: str = "",
    view: str = "",
    transfer_syntax=None,
    pixel_data: bool = True,
) -> Path:
    """Write `pixels` ((h, w), (frames, h, w) or (h, w, 3)) as a DICOM file; the dtype sets bits and signedness."""
    pixels = np.asarray(pixels)
    rgb = pixels.ndim == 3 and pixels.shape[-1] == 3 and photometric == "RGB"
    frames = pixels.shape[0] if pixels.ndim == 3 and not rgb else 1
    height, width = pixels.shape[1:3] if frames > 1 else pixels.shape[:2]
    bits_allocated = pixels.dtype.itemsize * 8

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    for keyword, value in (("PatientID", patient_id), ("PatientSex", sex), ("PatientAge", age), ("ViewPosition", view)):
        if value:
            setattr(ds, keyword, value)
    if pixel_data:
        ds.Rows, ds.Columns = int(height), int(width)
        ds.SamplesPerPixel = 3 if rgb else 1
        ds.PhotometricInterpretation = photometric
        if rgb:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated = bits_allocated
        ds.BitsStored = bits_stored or bits_allocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
        if frames > 1:
            ds.NumberOfFrames = frames
        if slope is not None:
            ds.RescaleSlope = slope
            ds.RescaleIntercept = intercept or 0
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def unit_window() -> tuple[float, float]:
    """WindowCenter/WindowWidth mapping stored 16 * p (p = 0..255) exactly onto p / 255 (LINEAR, PS3.3 C.11.2.1.2)."""
    return 2040.5, 4081.0
