"""Reading PLUS tracked ultrasound sequences, calibrations and reconstructed volumes.

PLUS (www.plustoolkit.org) records a tracked ultrasound sweep as one 3D image file whose
third axis is the frame index (``.igs.mha``, ``.igs.nrrd``, ``.seq.nrrd``) and whose header
holds, for every frame ``NNNN``, fields such as::

    Seq_Frame0003_ProbeToTrackerTransform = 16 numbers (row-major 4x4)
    Seq_Frame0003_ProbeToTrackerTransformStatus = OK | INVALID
    Seq_Frame0003_Timestamp = 215.36

(in NRRD the same fields are written ``key:=value``). Slicer's own readers drop the status
fields, so the header is parsed here, with the image payload (raw, zlib or gzip).

Frames and matrices (see docs/architecture.md):

``image``      pixel coordinates ``(col, row, 0, 1)`` of a frame as stored in the file after
               conversion to the ``MF`` orientation (column 0 = marked side, row 0 = near
               the transducer); rows/columns are flipped for ``UF``/``MN``/``UN`` files.
``probe``      the tracked marker on the probe (mm).
``tracker``    the tracking camera (mm).
``reference``  the tracked reference marker on the patient/phantom (mm). PLUS writes the
               reconstructed volume directly in this frame: voxel ``(i, j, k)`` lies at
               ``Offset + TransformMatrix @ (spacing * (i, j, k))`` millimetres of
               ``reference``. MetaImage readers (ITK, Slicer) call that space LPS, so a volume
               loaded by Slicer has ``ijk_to_ras = diag(-1, -1, 1, 1) @ ijk_to_reference``.

``image_to_reference = inv(ReferenceToTracker) @ ProbeToTracker @ image_to_probe``; the
``image_to_probe`` calibration (a general affine, mm per pixel, may carry skew) comes from
the PLUS device-set XML ``<Transform From="Image" To="Probe" Matrix="..."/>``.
"""

from __future__ import annotations

import gzip
import re
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from SurgicalReg2D3DLib.errors import FileReadError, GeometryError, InputError
from SurgicalReg2D3DLib.nodes import LPS_TO_RAS

_META_TYPES = {
    "MET_UCHAR": np.uint8, "MET_CHAR": np.int8, "MET_USHORT": np.uint16,
    "MET_SHORT": np.int16, "MET_UINT": np.uint32, "MET_INT": np.int32,
    "MET_FLOAT": np.float32, "MET_DOUBLE": np.float64,
}
_NRRD_TYPES = {
    "uchar": np.uint8, "unsigned char": np.uint8, "uint8": np.uint8, "uint8_t": np.uint8,
    "signed char": np.int8, "int8": np.int8, "int8_t": np.int8, "char": np.int8,
    "ushort": np.uint16, "unsigned short": np.uint16, "uint16": np.uint16,
    "uint16_t": np.uint16, "short": np.int16, "signed short": np.int16, "int16": np.int16,
    "int16_t": np.int16, "uint": np.uint32, "unsigned int": np.uint32, "uint32": np.uint32,
    "int": np.int32, "signed int": np.int32, "int32": np.int32, "float": np.float32,
    "double": np.float64,
}
_FRAME_FIELD = re.compile(r"^Seq_Frame(\d+)_(.+)$")


# --------------------------------------------------------------------------- data classes
@dataclass
class TrackedSequence:
    """A PLUS tracked frame list.

    ``images``: ``(N, H, W)`` array (MF orientation, row 0 = first row after flips);
    ``transforms[name]``: ``(N, 4, 4)`` float64, ``name`` as in the file without the
    ``Transform`` suffix (e.g. ``"ProbeToTracker"``), NaN where a frame lacks the field;
    ``statuses[name]``: ``(N,)`` bool, True where ``...TransformStatus = OK`` (a missing
    status field counts as OK, as in PLUS); ``timestamps``: ``(N,)`` (NaN when absent);
    ``image_ok``: ``(N,)`` bool from ``ImageStatus``/``Status``.
    """

    images: np.ndarray
    transforms: Dict[str, np.ndarray]
    statuses: Dict[str, np.ndarray]
    timestamps: np.ndarray
    image_ok: np.ndarray
    orientation: str = "MF"
    path: Optional[Path] = None
    header: Dict[str, str] = field(default_factory=dict)
    frame_fields: List[Dict[str, str]] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def frame_shape(self) -> Tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])


@dataclass
class ReferenceChain:
    """Result of :func:`image_to_reference_chain`.

    ``image_to_reference``: ``(M, 4, 4)`` for the usable frames ``indices`` (``(M,)`` frame
    numbers in the sequence); ``skipped``: ``[(frame_index, reason), ...]`` for the others.
    """

    image_to_reference: np.ndarray
    indices: np.ndarray
    skipped: List[Tuple[int, str]]


@dataclass
class ReferenceVolume:
    """A 3D volume with ``array`` ``(K, J, I)`` and ``ijk_to_reference`` (4x4, mm)."""

    array: np.ndarray
    ijk_to_reference: np.ndarray
    path: Optional[Path] = None

    @property
    def ijk_to_ras(self) -> np.ndarray:
        """The matrix Slicer uses once the file is read as LPS (see module docstring)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.ijk_to_reference


# --------------------------------------------------------------------------- low-level I/O
def _read_header_and_payload(path: Path, what: str = "sequence file"):
    """Split a MetaImage (.mha) or NRRD (.nrrd) file into (format, header dict, payload).
    ``what`` names the input in error messages ("sequence file", "volume")."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FileReadError(f"{what} {path}: cannot read ({exc.strerror})") from None
    if raw.startswith(b"NRRD"):
        end = raw.find(b"\n\n")
        if end < 0:
            raise FileReadError(f"{what} {path}: NRRD header has no blank-line end")
        lines = raw[:end].decode("latin-1").splitlines()[1:]
        header: Dict[str, str] = {}
        for line in lines:
            if not line or line.startswith("#"):
                continue
            if ":=" in line:
                key, value = line.split(":=", 1)
            elif ": " in line:
                key, value = line.split(": ", 1)
            else:
                continue
            header[key.strip()] = value.strip()
        return "nrrd", header, raw[end + 2:]
    header = {}
    pos = 0
    while True:
        nl = raw.find(b"\n", pos)
        if nl < 0:
            raise FileReadError(
                f"{what} {path}: not a MetaImage or NRRD file (no ElementDataFile line)")
        line = raw[pos:nl].decode("latin-1").strip()
        pos = nl + 1
        if not line:
            continue
        if "=" not in line:
            raise FileReadError(f"{what} {path}: malformed header line {line[:60]!r}")
        key, value = line.split("=", 1)
        header[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
        if pos > 50_000_000:
            raise FileReadError(f"{what} {path}: header too long")
    return "mha", header, raw[pos:]


def _decode_payload(path: Path, fmt: str, header: Dict[str, str], payload: bytes,
                    what: str = "sequence file"):
    """Return (array in file order (slowest first), sizes (fastest first))."""
    if fmt == "mha":
        try:
            sizes = [int(v) for v in header["DimSize"].split()]
            dtype = np.dtype(_META_TYPES[header.get("ElementType", "")])
        except (KeyError, ValueError):
            raise FileReadError(
                f"{what} {path}: missing or unsupported DimSize/ElementType") from None
        try:
            channels = int(header.get("ElementNumberOfChannels", "1"))
        except ValueError:
            raise FileReadError(f"{what} {path}: malformed ElementNumberOfChannels") from None
        if channels < 1 or any(v < 0 for v in sizes):
            raise FileReadError(f"{what} {path}: negative DimSize or channel count")
        data_file = header.get("ElementDataFile", "LOCAL")
        if data_file != "LOCAL":
            try:
                payload = (path.parent / data_file).read_bytes()
            except OSError:
                raise FileReadError(
                    f"{what} {path}: cannot read data file {data_file!r}") from None
        if header.get("CompressedData", "False").lower() == "true":
            try:
                payload = zlib.decompress(payload)
            except zlib.error as exc:
                raise FileReadError(f"{what} {path}: compressed data is truncated or corrupt "
                                    f"({exc})") from None
        big = header.get("BinaryDataByteOrderMSB", header.get("ElementByteOrderMSB", "False"))
        dtype = dtype.newbyteorder(">" if big.lower() == "true" else "<")
    else:
        try:
            sizes = [int(v) for v in header["sizes"].split()]
            dtype = np.dtype(_NRRD_TYPES[header["type"]])
        except (KeyError, ValueError):
            raise FileReadError(f"{what} {path}: missing or unsupported sizes/type") from None
        channels = 1
        kinds = header.get("kinds", "").split()
        if len(sizes) == 4 and kinds and kinds[0] not in ("domain", "space"):
            channels = sizes[0]
            sizes = sizes[1:]
        data_file = header.get("data file", header.get("datafile"))
        if data_file:
            try:
                payload = (path.parent / data_file).read_bytes()
            except OSError:
                raise FileReadError(
                    f"{what} {path}: cannot read data file {data_file!r}") from None
        encoding = header.get("encoding", "raw")
        if encoding in ("gz", "gzip"):
            try:
                payload = gzip.decompress(payload)
            except (OSError, EOFError, zlib.error) as exc:
                raise FileReadError(f"{what} {path}: gzip data is truncated or corrupt "
                                    f"({exc})") from None
        elif encoding != "raw":
            raise FileReadError(f"{what} {path}: unsupported NRRD encoding {encoding!r}")
        dtype = dtype.newbyteorder(">" if header.get("endian", "little") == "big" else "<")
    count = int(np.prod(sizes)) * channels
    if len(payload) < count * dtype.itemsize:
        raise FileReadError(
            f"{what} {path}: image data is truncated ({len(payload)} bytes, "
            f"expected {count * dtype.itemsize})")
    array = np.frombuffer(payload, dtype=dtype, count=count)
    shape = tuple(reversed(sizes)) + ((channels,) if channels > 1 else ())
    array = array.reshape(shape).astype(dtype.newbyteorder("="))
    if channels > 1:  # colour frames -> grey (mean of the channels)
        array = array.mean(axis=-1).astype(np.float32)
    return array, sizes


def _parse_matrix(text: str, what: str) -> np.ndarray:
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise InputError(f"{what}: expected 16 numbers, got {text[:80]!r}") from None
    if len(values) != 16:
        raise InputError(f"{what}: expected 16 numbers, got {len(values)}")
    return np.array(values, dtype=np.float64).reshape(4, 4)


# --------------------------------------------------------------------------- public API
def read_sequence(path) -> TrackedSequence:
    """Read a PLUS tracked sequence (``.igs.mha``, ``.igs.nrrd``, ``.seq.nrrd``, ``.seq.mha``).

    Returns a :class:`TrackedSequence` with every ``Seq_FrameNNNN_*Transform`` field and its
    status. Raises :class:`FileReadError` for unreadable files and :class:`InputError` for a
    file that is not a frame sequence (not 3D) or has malformed transform fields.
    """
    path = Path(path)
    if not path.is_file():
        raise FileReadError(f"sequence file {path}: no such file")
    fmt, header, payload = _read_header_and_payload(path)
    array, sizes = _decode_payload(path, fmt, header, payload)
    if array.ndim == 2:  # a single frame
        array = array[None]
    if array.ndim != 3:
        raise InputError(f"sequence file {path}: expected frames of shape (N, H, W), "
                         f"got image of shape {array.shape}")
    n = array.shape[0]
    if n == 0 or array.shape[1] == 0 or array.shape[2] == 0:
        raise InputError(f"sequence file {path}: the sequence has no frames")
    frame_fields: List[Dict[str, str]] = [dict() for _ in range(n)]
    other: Dict[str, str] = {}
    for key, value in header.items():
        m = _FRAME_FIELD.match(key)
        if m is None:
            other[key] = value
            continue
        idx = int(m.group(1))
        if idx >= n:
            continue
        frame_fields[idx][m.group(2)] = value
    names = sorted({k[: -len("Transform")] for f in frame_fields for k in f
                    if k.endswith("Transform")})
    transforms: Dict[str, np.ndarray] = {}
    statuses: Dict[str, np.ndarray] = {}
    for name in names:
        mats = np.full((n, 4, 4), np.nan)
        ok = np.zeros(n, dtype=bool)
        for i, f in enumerate(frame_fields):
            text = f.get(name + "Transform")
            if text is None:
                continue
            mats[i] = _parse_matrix(text, f"sequence file {path.name}: frame {i} {name}Transform")
            ok[i] = f.get(name + "TransformStatus", "OK").strip().upper() == "OK"
        transforms[name] = mats
        statuses[name] = ok
    timestamps = np.array([float(f.get("Timestamp", "nan")) for f in frame_fields])
    image_ok = np.array([f.get("ImageStatus", f.get("Status", "OK")).strip().upper() == "OK"
                         for f in frame_fields])
    orientation = (other.get("UltrasoundImageOrientation")
                   or other.get("ultrasound image orientation") or "MF").strip().upper()
    images = array
    if orientation[:1] == "U":  # columns start at the unmarked side -> flip to MF
        images = images[:, :, ::-1]
    if orientation[1:2] == "N":
        images = images[:, ::-1, :]
    images = np.ascontiguousarray(images)
    return TrackedSequence(images=images, transforms=transforms, statuses=statuses,
                           timestamps=timestamps, image_ok=image_ok, orientation=orientation,
                           path=path, header=other, frame_fields=frame_fields)


def read_calibration(path, from_frame: str = "Image", to_frame: str = "Probe") -> np.ndarray:
    """The ``from_frame`` -> ``to_frame`` 4x4 of a PLUS device-set XML (full affine kept).

    Raises :class:`FileReadError` when the file is missing or not XML, and
    :class:`InputError` when the transform is absent, not 16 finite numbers, singular or
    has a last row other than ``0 0 0 1``.
    """
    path = Path(path)
    what = f"calibration {path.name}"
    if not path.is_file():
        raise FileReadError(f"calibration {path}: no such file")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise FileReadError(f"{what}: not a valid XML file ({exc})") from None
    found = []
    for elem in root.iter("Transform"):
        found.append(f"{elem.get('From')}To{elem.get('To')}")
        if elem.get("From") == from_frame and elem.get("To") == to_frame:
            text = elem.get("Matrix")
            if text is None:
                raise InputError(f"{what}: {from_frame}To{to_frame} has no Matrix attribute")
            mat = _parse_matrix(text, f"{what}: {from_frame}To{to_frame} Matrix")
            if not np.all(np.isfinite(mat)):
                raise InputError(f"{what}: {from_frame}To{to_frame} Matrix contains NaN or inf")
            if not np.allclose(mat[3], [0, 0, 0, 1], atol=1e-6):
                raise GeometryError(
                    f"{what}: {from_frame}To{to_frame} last row must be 0 0 0 1, got {mat[3]}")
            if abs(np.linalg.det(mat[:3, :3])) < 1e-12:
                raise GeometryError(f"{what}: {from_frame}To{to_frame} Matrix is singular")
            return mat
    raise InputError(f"{what}: no {from_frame}To{to_frame} transform "
                     f"(found: {', '.join(found) or 'none'})")


def image_to_reference_chain(seq: TrackedSequence, image_to_probe: np.ndarray,
                             reference: str = "Reference", probe: str = "Probe",
                             tracker: str = "Tracker") -> ReferenceChain:
    """``image_to_reference`` for every usable frame of ``seq``.

    Uses ``{probe}To{reference}`` when the sequence has it, else
    ``inv({reference}To{tracker}) @ {probe}To{tracker}``; then right-multiplies
    ``image_to_probe``. Frames whose needed transforms have an INVALID status (or whose
    image status is not OK) are skipped and listed in ``skipped``; a frame with an OK status
    but NaN/inf values raises :class:`InputError`, as does a sequence without the needed
    transforms.
    """
    image_to_probe = np.asarray(image_to_probe, dtype=np.float64)
    if image_to_probe.shape != (4, 4) or not np.all(np.isfinite(image_to_probe)):
        raise InputError("calibration: image_to_probe must be a finite 4x4 matrix, "
                         f"got shape {image_to_probe.shape}")
    where = f"sequence {seq.path.name if seq.path else ''}".strip()
    direct = f"{probe}To{reference}"
    if direct in seq.transforms:
        needed = [direct]
    else:
        needed = [f"{probe}To{tracker}", f"{reference}To{tracker}"]
        missing = [n for n in needed if n not in seq.transforms]
        if missing:
            have = ", ".join(seq.transforms) or "none"
            raise InputError(f"{where}: no {direct} or {probe}To{tracker}+{reference}To{tracker}"
                             f" transforms (missing {', '.join(missing)}; found: {have})")
    mats, indices, skipped = [], [], []
    for i in range(seq.num_frames):
        bad = [n for n in needed if not seq.statuses[n][i]]
        if bad:
            skipped.append((i, f"{'/'.join(bad)} status INVALID"))
            continue
        if not seq.image_ok[i]:
            skipped.append((i, "image status INVALID"))
            continue
        for n in needed:
            if not np.all(np.isfinite(seq.transforms[n][i])):
                raise InputError(f"{where}: frame {i} {n}Transform contains NaN or inf "
                                 "although its status is OK")
        if direct in seq.transforms:
            probe_to_reference = seq.transforms[direct][i]
        else:
            ref_to_tracker = seq.transforms[f"{reference}To{tracker}"][i]
            if abs(np.linalg.det(ref_to_tracker[:3, :3])) < 1e-9 \
                    or np.linalg.cond(ref_to_tracker) > 1e12:
                raise GeometryError(f"{where}: frame {i} {reference}To{tracker}Transform is "
                                    "singular (not invertible) although its status is OK")
            probe_to_reference = (np.linalg.inv(ref_to_tracker)
                                  @ seq.transforms[f"{probe}To{tracker}"][i])
        mats.append(probe_to_reference @ image_to_probe)
        indices.append(i)
    arr = np.stack(mats) if mats else np.zeros((0, 4, 4))
    return ReferenceChain(image_to_reference=arr, indices=np.array(indices, dtype=int),
                          skipped=skipped)


def read_reference_volume(path) -> ReferenceVolume:
    """Read a PLUS reconstructed volume (``.mha``/``.nrrd``) with its ``ijk_to_reference``.

    MetaImage: ``ijk_to_reference = [TransformMatrix * spacing | Offset]`` (the MetaImage
    ``TransformMatrix`` is stored column by column: the first three numbers are the
    direction of the i axis). NRRD: ``space directions`` and ``space origin`` as written;
    an NRRD whose ``space`` is a RAS space is converted to the LPS-named convention used by
    PLUS. Raises :class:`InputError` for volumes that are not 3D.
    """
    from SurgicalReg2D3DLib.checks import check_geometry, check_not_constant  # noqa: PLC0415

    path = Path(path)
    what = "volume"
    if not path.is_file():
        raise FileReadError(f"volume {path}: no such file")
    fmt, header, payload = _read_header_and_payload(path, what)
    array, sizes = _decode_payload(path, fmt, header, payload, what)
    if array.ndim != 3 or min(array.shape) < 2:
        raise InputError(f"volume {path.name}: expected a 3D volume, got shape {array.shape}")
    m = np.eye(4)
    if fmt == "mha":
        spacing = _header_numbers(header, ("ElementSpacing",), "1 1 1", 3, path)
        offset = _header_numbers(header, ("Offset", "Position", "Origin"), "0 0 0", 3, path)
        direction = _header_numbers(header, ("TransformMatrix", "Rotation"),
                                    "1 0 0 0 1 0 0 0 1", 9, path)
        direction = direction.reshape(3, 3).T  # column i = direction of axis i
        check_geometry(spacing, direction, offset, f"volume {path.name}")
        m[:3, :3] = direction * spacing[None, :]
        m[:3, 3] = offset
    else:
        dirs = re.findall(r"\(([^)]*)\)", header.get("space directions", ""))
        if len(dirs) < 3:
            raise InputError(f"volume {path.name}: NRRD has no 3D space directions")
        try:
            for c, d in enumerate(dirs[:3]):
                m[:3, c] = [float(v) for v in d.split(",")]
            origin = re.findall(r"\(([^)]*)\)", header.get("space origin", "(0,0,0)"))[0]
            m[:3, 3] = [float(v) for v in origin.split(",")]
        except (ValueError, IndexError):
            raise GeometryError(f"volume {path.name}: malformed 'space directions' or "
                                "'space origin' (expected three numbers in each "
                                "parenthesis)") from None
        if header.get("space", "").lower() in ("right-anterior-superior", "ras"):
            m = np.diag([-1.0, -1.0, 1.0, 1.0]) @ m
    from SurgicalReg2D3DLib.checks import check_index_matrix  # noqa: PLC0415

    check_index_matrix(m, f"volume {path.name}")
    check_not_constant(array, f"volume {path.name}")
    return ReferenceVolume(array=np.ascontiguousarray(array), ijk_to_reference=m, path=path)


def _header_numbers(header: Dict[str, str], keys, default: str, count: int,
                    path: Path) -> np.ndarray:
    """``count`` numbers of the first of ``keys`` present in a MetaImage header."""
    key = next((k for k in keys if k in header), keys[0])
    text = header.get(key, default)
    try:
        values = np.array([float(v) for v in text.split()], dtype=np.float64)
    except ValueError:
        raise GeometryError(f"volume {path.name}: malformed {key} {text[:60]!r} (expected "
                            f"{count} numbers)") from None
    if values.size != count:
        raise GeometryError(f"volume {path.name}: {key} must have {count} numbers, got "
                            f"{values.size} ({text[:60]!r})")
    return values




def load_sequence_to_mrml(ctx, seq: TrackedSequence, chain: ReferenceChain,
                          name: str = "USFrames"):
    """Load a sweep into the scene as a browsable volume + transform sequence.

    The usable frames (``chain.indices``) go through ``SurgicalReg2D3DLib.nodes.
    frames_to_sequence``; each frame's "to parent" matrix is
    ``image_to_ras = LPS_TO_RAS @ image_to_reference`` (the reference frame is LPS-named,
    see the module docstring), so the frame lies on the volume loaded by Slicer from the
    PLUS ``.mha`` as the browser plays. Returns ``(image_sequence, transform_sequence,
    browser)``.
    """
    from SurgicalReg2D3DLib.nodes import frames_to_sequence  # noqa: PLC0415

    if len(chain.indices) == 0:
        raise InputError(f"sequence {name}: no usable frame (all transforms INVALID)")
    image_to_ras = np.einsum("ij,njk->nik", LPS_TO_RAS, chain.image_to_reference)
    return frames_to_sequence(ctx, seq.images[chain.indices], image_to_ras, name)
