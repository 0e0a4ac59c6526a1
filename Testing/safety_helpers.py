"""Test helpers for the data-safety tests (issue 16): file hashes, running ``surgreg`` in
process, cutting files short (pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Iterable

import numpy as np


def hashes(paths: Iterable) -> Dict[str, str]:
    """sha256 of every file given (folders: every file below them)."""
    out = {}
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def run_cli(argv, capsys):
    """``surgreg argv`` in process: (exit code, stdout, stderr). An exception that is not
    one of the project's named errors propagates (a traceback fails the test)."""
    from SurgicalReg2D3DLib.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def truncate(src, dst, fraction: float = 0.6) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst``."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def assert_refused(rc, err, *fragments):
    """Exit code 2, one ``surgreg: error:`` line containing every fragment, no traceback."""
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("surgreg: error:")]
    assert len(lines) == 1, err
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


def files_in(folder) -> set:
    """Names of every file (hidden temporary files included) below ``folder``."""
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file()}


def write_ct_series(folder, n: int = 8, rows: int = 12, cols: int = 14,
                    slice_mm: float = 2.0, skip=()):
    """A small SYNTHETIC CT DICOM series (pydicom): ``n`` axial slices ``slice_mm`` apart,
    pixel (r, c) of slice k = 10 k + r + c HU; slices whose index is in ``skip`` are not
    written. Returns the folder."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(n):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT image storage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"s{k:03d}.dcm"), {}, file_meta=meta,
                         preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = "CT", "SYNTHETIC"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, slice_mm * k]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = slice_mm
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        r, c = np.mgrid[:rows, :cols]
        ds.PixelData = (10 * k + r + c).astype(np.int16).tobytes()
        ds.save_as(str(folder / f"s{k:03d}.dcm"), enforce_file_format=True)
    return folder
