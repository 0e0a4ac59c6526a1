"""Test helper: minimal X-ray DICOM files written with pydicom (shared by the camera and the
FluoroReg tests; pytest puts this folder on ``sys.path`` through ``Testing/conftest.py``)."""

from __future__ import annotations

import numpy as np


def write_xray_dicom(path, pixels=None, **tags):
    """Write an X-ray angiography (XA) file: 16-bit unsigned MONOCHROME2 ``pixels``
    (default 24 x 32 zeros) and then ``tags`` (pydicom keywords, e.g.
    ``DistanceSourceToDetector``, ``ImagerPixelSpacing``, ``PhotometricInterpretation``),
    which may override the defaults. Returns ``path``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.zeros((24, 32), np.uint16) if pixels is None else np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"  # X-ray angiography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "XA"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(str(path), enforce_file_format=True)
    return path
