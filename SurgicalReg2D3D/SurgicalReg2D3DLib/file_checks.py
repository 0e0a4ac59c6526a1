"""Files cut short: compare the bytes a file holds with what its header declares.

Readers such as ITK fill the missing voxels of a truncated ``.nii``/``.nii.gz``/``.mha``/
``.nrrd`` with zeros and report success; VTK's PLY reader crashes the process on a binary
PLY cut short. :func:`check_file_complete` is called by every reader before the real read
(see ``docs/input_checks.md``). Standard library + numpy only.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import FileReadError

_CHUNK = 1 << 22

_META_SIZES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2,
               "MET_UINT": 4, "MET_INT": 4, "MET_FLOAT": 4, "MET_DOUBLE": 8,
               "MET_ULONG_LONG": 8, "MET_LONG_LONG": 8}
_NRRD_SIZES = {}
for _names, _size in (
        (("uchar", "unsigned char", "uint8", "uint8_t", "signed char", "int8", "int8_t",
          "char"), 1),
        (("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t", "short",
          "short int", "signed short", "signed short int", "int16", "int16_t"), 2),
        (("uint", "unsigned int", "uint32", "uint32_t", "int", "signed int", "int32",
          "int32_t", "float"), 4),
        (("longlong", "long long", "long long int", "signed long long",
          "signed long long int", "ulonglong", "unsigned long long",
          "unsigned long long int", "int64", "int64_t", "uint64", "uint64_t", "double"), 8)):
    for _n in _names:
        _NRRD_SIZES[_n] = _size


def _truncated(what: str, path: Path, have: int, need: int) -> FileReadError:
    return FileReadError(f"{what}: file is truncated (cut short): the header declares "
                         f"{need} bytes of image data, only {have} are present: {path}")


def _stream_length(handle, what: str, path: Path) -> int:
    """Bytes a gzip stream decompresses to; FileReadError when it is cut short or corrupt."""
    total = 0
    try:
        while True:
            block = handle.read(_CHUNK)
            if not block:
                return total
            total += len(block)
    except EOFError:
        raise FileReadError(f"{what}: file is truncated (cut short; the compressed data ends "
                            f"before its end marker): {path}") from None
    except (OSError, zlib.error) as exc:
        raise FileReadError(f"{what}: compressed data is corrupt ({exc}): {path}") from None


def _zlib_length(path: Path, offset: int, what: str) -> int:
    """Decompressed size of a zlib (or gzip) payload starting at ``offset``."""
    d = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header
    total = 0
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            while True:
                block = fh.read(_CHUNK)
                if not block:
                    break
                total += len(d.decompress(block))
                if d.eof:
                    break
            total += len(d.flush())
    except zlib.error as exc:
        raise FileReadError(f"{what}: compressed data is corrupt ({exc}): {path}") from None
    if not d.eof:
        raise FileReadError(f"{what}: file is truncated (cut short; the compressed data ends "
                            f"before its end marker): {path}")
    return total


def _check_nifti(path: Path, what: str, compressed: bool) -> None:
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(540)
            if len(head) < 348:
                raise FileReadError(f"{what}: file is truncated (cut short): the NIfTI header "
                                    f"is incomplete: {path}")
            for endian in ("<", ">"):
                size = struct.unpack(endian + "i", head[:4])[0]
                if size in (348, 540):
                    break
            else:
                return  # not a NIfTI header we know: leave it to the reader
            if size == 348:
                dims = struct.unpack(endian + "8h", head[40:56])
                bitpix = struct.unpack(endian + "h", head[72:74])[0]
                offset = int(struct.unpack(endian + "f", head[108:112])[0])
            else:
                if len(head) < 540:
                    raise FileReadError(f"{what}: file is truncated (cut short): the NIfTI-2 "
                                        f"header is incomplete: {path}")
                bitpix = struct.unpack(endian + "h", head[14:16])[0]
                dims = struct.unpack(endian + "8q", head[16:80])
                offset = int(struct.unpack(endian + "q", head[168:176])[0])
            ndim = int(dims[0])
            if not 1 <= ndim <= 7 or bitpix <= 0 or bitpix % 8:
                return
            count = 1
            for d in dims[1:ndim + 1]:
                count *= max(int(d), 1)
            need = max(offset, size) + count * bitpix // 8
            if compressed:
                have = len(head) + _stream_length(fh, what, path)
            else:
                have = path.stat().st_size
    except EOFError:
        raise FileReadError(f"{what}: file is truncated (cut short; the compressed data ends "
                            f"before its end marker): {path}") from None
    except (OSError, zlib.error) as exc:
        if isinstance(exc, FileReadError):
            raise
        raise FileReadError(f"{what}: cannot read ({exc}): {path}") from None
    if have < need:
        raise _truncated(what, path, have, need)


def _check_metaimage(path: Path, what: str) -> None:
    header = {}
    pos = 0
    with open(path, "rb") as fh:
        raw = fh.read(1 << 20)
    while True:
        nl = raw.find(b"\n", pos)
        if nl < 0:
            return  # not a MetaImage header we can follow: leave it to the reader
        line = raw[pos:nl].decode("latin-1").strip()
        pos = nl + 1
        if "=" not in line:
            if line:
                return
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        header[key] = value
        if key == "ElementDataFile":
            break
    try:
        sizes = [int(v) for v in header["DimSize"].split()]
        channels = int(header.get("ElementNumberOfChannels", "1"))
    except (KeyError, ValueError):
        return
    itemsize = _META_SIZES.get(header.get("ElementType", ""))
    if itemsize is None:
        return
    need = int(np.prod(sizes, dtype=np.int64)) * channels * itemsize
    data_file = header["ElementDataFile"]
    if data_file == "LOCAL":
        data_path, offset = path, pos
    elif data_file.upper() == "LIST" or "%" in data_file or " " in data_file:
        return
    else:
        data_path, offset = path.parent / data_file, 0
        if not data_path.is_file():
            raise FileReadError(f"{what}: its data file {data_file!r} is missing: {path}")
    try:
        skip = int(header.get("HeaderSize", "0"))
    except ValueError:
        skip = 0
    if skip > 0:
        offset += skip
    if header.get("CompressedData", "False").lower() == "true":
        have = _zlib_length(data_path, offset, what)
    else:
        have = data_path.stat().st_size - offset
    if have < need:
        raise _truncated(what, path, have, need)


def _check_nrrd(path: Path, what: str) -> None:
    with open(path, "rb") as fh:
        raw = fh.read(1 << 20)
    if not raw.startswith(b"NRRD"):
        return
    end = raw.find(b"\n\n")
    crlf = raw.find(b"\r\n\r\n")
    if crlf >= 0 and (end < 0 or crlf < end):
        end, sep = crlf, 4
    else:
        sep = 2
    detached = path.suffix.lower() == ".nhdr"
    lines = (raw[:end] if end >= 0 else raw).decode("latin-1").splitlines()[1:]
    header = {}
    for line in lines:
        if line.startswith("#") or ": " not in line or ":=" in line.split(": ", 1)[0]:
            continue
        key, value = line.split(": ", 1)
        header[key.strip().lower()] = value.strip()
    data_file = header.get("data file", header.get("datafile"))
    if end < 0 and not data_file:
        raise FileReadError(f"{what}: file is truncated (cut short): the NRRD header has no "
                            f"end: {path}")
    try:
        sizes = [int(v) for v in header["sizes"].split()]
    except (KeyError, ValueError):
        return
    itemsize = _NRRD_SIZES.get(header.get("type", "").lower())
    if itemsize is None:
        return
    need = int(np.prod(sizes, dtype=np.int64)) * itemsize
    if data_file:
        if data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file:
            return
        data_path, offset = path.parent / data_file, 0
        if not data_path.is_file():
            raise FileReadError(f"{what}: its data file {data_file!r} is missing: {path}")
    elif detached:
        return
    else:
        data_path, offset = path, end + sep
    try:
        skip = int(header.get("byte skip", "0"))
        line_skip = int(header.get("line skip", "0"))
    except ValueError:
        return
    if skip < 0 or line_skip:
        return
    encoding = header.get("encoding", "raw").lower()
    if encoding == "raw":
        have = data_path.stat().st_size - offset - skip
    elif encoding in ("gz", "gzip"):
        have = _zlib_length(data_path, offset, what) - skip
    else:
        return
    if have < need:
        raise _truncated(what, path, have, need)


def _check_end_marker(path: Path, what: str, magic: bytes, marker: bytes, tail_bytes: int,
                      description: str) -> None:
    """A file that starts with ``magic`` must hold ``marker`` in its last ``tail_bytes``."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(len(magic)) != magic:
            return
        fh.seek(max(0, size - tail_bytes))
        tail = fh.read()
    if marker not in tail:
        raise FileReadError(f"{what}: file is truncated (cut short): {description}: {path}")


def _check_png(path: Path, what: str) -> None:
    _check_end_marker(path, what, b"\x89PNG\r\n\x1a\n", b"IEND", 64, "the PNG has no end chunk")


def _check_jpeg(path: Path, what: str) -> None:
    _check_end_marker(path, what, b"\xff\xd8", b"\xff\xd9", 4096, "the JPEG has no end marker")


_PLY_SIZES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2,
              "int16": 2, "uint16": 2, "int": 4, "uint": 4, "int32": 4, "uint32": 4,
              "float": 4, "float32": 4, "double": 8, "float64": 8}
_PLY_NUMPY = {"char": "i1", "uchar": "u1", "int8": "i1", "uint8": "u1", "short": "i2",
              "ushort": "u2", "int16": "i2", "uint16": "u2", "int": "i4", "uint": "u4",
              "int32": "i4", "uint32": "u4"}


def _ply_element_bytes(data: bytes, pos: int, count: int, props, endian: str):
    """End offset of ``count`` binary records of ``props`` starting at ``pos`` (None when
    the data end first)."""
    fixed = sum(_PLY_SIZES[p[1]] for p in props if p[0] == "scalar")
    lists = [p for p in props if p[0] == "list"]
    if not lists:
        end = pos + count * fixed
        return end if end <= len(data) else None
    if len(props) == 1 and count > 0:  # one list (faces): try a constant length first
        _, ctype, itype = lists[0]
        csize, isize = _PLY_SIZES[ctype], _PLY_SIZES[itype]
        if pos + csize > len(data):
            return None
        dt = np.dtype(endian + _PLY_NUMPY[ctype])
        first = int(np.frombuffer(data, dt, 1, pos)[0])
        stride = csize + first * isize
        end = pos + count * stride
        if first >= 0 and end <= len(data):
            counts = np.frombuffer(data[pos:end], np.uint8).reshape(count, stride)[:, :csize]
            if np.all(counts.copy().view(dt).ravel() == first):
                return end
    for _ in range(count):  # general case: walk the records
        for prop in props:
            if prop[0] == "scalar":
                pos += _PLY_SIZES[prop[1]]
            else:
                csize = _PLY_SIZES[prop[1]]
                if pos + csize > len(data):
                    return None
                n = int(np.frombuffer(data, np.dtype(endian + _PLY_NUMPY[prop[1]]), 1, pos)[0])
                pos += csize + max(n, 0) * _PLY_SIZES[prop[2]]
        if pos > len(data):
            return None
    return pos


def _check_ply(path: Path, what: str) -> None:
    data = path.read_bytes()
    if not data.startswith(b"ply"):
        return
    end = data.find(b"end_header")
    if end < 0:
        raise FileReadError(f"{what}: file is truncated (cut short): the PLY header has no "
                            f"end_header: {path}")
    nl = data.find(b"\n", end)
    if nl < 0:
        raise FileReadError(f"{what}: file is truncated (cut short) after the PLY header: "
                            f"{path}")
    fmt, elements = None, []
    for line in data[:end].decode("latin-1").splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "format" and len(parts) > 1:
            fmt = parts[1]
        elif parts[0] == "element" and len(parts) == 3:
            elements.append((parts[1], int(parts[2]), []))
        elif parts[0] == "property" and elements:
            if len(parts) == 5 and parts[1] == "list":
                elements[-1][2].append(("list", parts[2], parts[3]))
            elif len(parts) == 3:
                elements[-1][2].append(("scalar", parts[1]))
    body = data[nl + 1:]
    if fmt == "ascii":
        lines = sum(1 for ln in body.splitlines() if ln.strip())
        need = sum(n for _, n, _ in elements)
        if lines < need:
            raise FileReadError(f"{what}: file is truncated (cut short): the PLY header "
                                f"declares {need} records, only {lines} lines are present: "
                                f"{path}")
        return
    if fmt not in ("binary_little_endian", "binary_big_endian"):
        return
    endian = "<" if fmt == "binary_little_endian" else ">"
    pos = 0
    for name, count, props in elements:
        if any(p[1] not in _PLY_SIZES or (p[0] == "list" and (p[2] not in _PLY_SIZES
                                                               or p[1] not in _PLY_NUMPY))
               for p in props):
            return  # a type we do not know: leave it to the reader
        nxt = _ply_element_bytes(body, pos, count, props, endian)
        if nxt is None:
            raise FileReadError(f"{what}: file is truncated (cut short): the PLY data end "
                                f"inside its {count} '{name}' records: {path}")
        pos = nxt


def _check_stl(path: Path, what: str) -> None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(84)
    if head[:5].lower() == b"solid":
        with open(path, "rb") as fh:
            fh.seek(max(0, size - 256))
            tail = fh.read()
        if b"endsolid" in tail:
            return
        if len(head) == 84 and 84 + 50 * struct.unpack("<I", head[80:84])[0] == size:
            return  # a binary STL whose header starts with "solid"
        raise FileReadError(f"{what}: file is truncated (cut short): the ASCII STL has no "
                            f"'endsolid': {path}")
    if len(head) < 84:
        raise FileReadError(f"{what}: file is truncated (cut short): the STL header is "
                            f"incomplete: {path}")
    n = struct.unpack("<I", head[80:84])[0]
    if size < 84 + 50 * n:
        raise _truncated(what, path, size - 84, 50 * n)


def check_file_complete(path, what: str) -> None:
    """FileReadError when an image file holds less data than its header declares.

    Handles NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mha``, ``.mhd`` + data file),
    NRRD (``.nrrd``, ``.nhdr``; raw or gzip), PNG, JPEG, PLY (ASCII or binary; VTK's
    reader crashes the process on a binary PLY cut short) and STL; other formats pass
    unchecked.
    """
    p = Path(path)
    name = p.name.lower()
    try:
        if name.endswith(".nii"):
            _check_nifti(p, what, compressed=False)
        elif name.endswith(".nii.gz"):
            _check_nifti(p, what, compressed=True)
        elif name.endswith((".mha", ".mhd")):
            _check_metaimage(p, what)
        elif name.endswith((".nrrd", ".nhdr")):
            _check_nrrd(p, what)
        elif name.endswith(".png"):
            _check_png(p, what)
        elif name.endswith((".jpg", ".jpeg")):
            _check_jpeg(p, what)
        elif name.endswith(".ply"):
            _check_ply(p, what)
        elif name.endswith(".stl"):
            _check_stl(p, what)
    except FileReadError:
        raise
    except OSError as exc:
        raise FileReadError(f"{what}: cannot read ({exc.strerror or exc}): {p}") from None


__all__ = ["check_file_complete"]
