"""P2ILF contour formats (MICCAI 2022 Preoperative-to-Intraoperative Liver registration).

2D contours JSON (image points, pixels; ``x`` = column, ``y`` = row)::

    {"numOfContours": 2, "contour": [
        {"contourType": "Ridge", "imagePoints": {"x": [...], "y": [...]}}, ...]}

3D contours JSON (indices of vertices of the liver mesh, 0-based, in the mesh file's
vertex order)::

    {"numOfContours": 1, "contour": [
        {"contourType": "Ligament", "modelPoints": {"vertices": [...]}}, ...]}

Labels are ``Ridge`` (anterior ridge), ``Ligament`` (falciform ligament) and
``Silhouette`` (occluding contour; 2D only in practice). The camera JSON is read by
:meth:`SurgicalReg2D3DLib.cameras.PinholeCamera.from_p2ilf_json` (see ``camera.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Union

import numpy as np

from SurgicalReg2D3DLib.errors import FileReadError, InputError

PathLike = Union[str, Path]

#: The P2ILF contour labels, in a fixed order (index = label id in label images).
LABELS = ("Ridge", "Ligament", "Silhouette")
#: Display colours (RGB 0-255) used in overlays, matching the P2ILF label pictures
#: (ridge red, ligament blue, silhouette yellow).
LABEL_COLORS = {"Ridge": (220, 30, 30), "Ligament": (40, 80, 255), "Silhouette": (255, 220, 0)}
MIN_POINTS = 4


@dataclass
class Contour2D:
    """An image contour: ``points (N, 2)`` pixels ``(u, v)`` = (column, row), in order."""

    label: str
    points: np.ndarray


@dataclass
class Contour3D:
    """A model contour: ``vertices (N,)`` indices into the mesh vertices, in order."""

    label: str
    vertices: np.ndarray

    def points(self, mesh_vertices: np.ndarray) -> np.ndarray:
        """The contour's 3D points ``(N, 3)`` taken from ``mesh_vertices (V, 3)``."""
        return np.asarray(mesh_vertices)[self.vertices]


def _check_label(label, where: str) -> str:
    if not isinstance(label, str):
        raise InputError(f"{where}: contour label must be a string, got {label!r}")
    for known in LABELS:
        if label.lower() == known.lower():
            return known
    raise InputError(f"{where}: unknown contour label {label!r} (expected one of "
                     f"{', '.join(LABELS)})")


def validate_contours_2d(contours: Sequence[Contour2D], name: str = "2D contours",
                         image_size=None) -> List[Contour2D]:
    """Check labels, point count (>= 4), finiteness; returns copies with canonical labels."""
    out = []
    for i, c in enumerate(contours):
        where = f"{name}: contour {i}"
        label = _check_label(c.label, where)
        p = np.asarray(c.points, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 2:
            raise InputError(f"{where} ({label}): points must have shape (N, 2), got {p.shape}")
        if p.shape[0] < MIN_POINTS:
            raise InputError(f"{where} ({label}) has {p.shape[0]} points; at least {MIN_POINTS} "
                             f"are needed")
        if not np.all(np.isfinite(p)):
            raise InputError(f"{where} ({label}): points contain NaN or infinite values")
        out.append(Contour2D(label, p.copy()))
    return out


def validate_contours_3d(contours: Sequence[Contour3D], n_vertices: int,
                         name: str = "3D contours") -> List[Contour3D]:
    """Check labels, point count (>= 4) and vertex indices against the mesh size."""
    out = []
    for i, c in enumerate(contours):
        where = f"{name}: contour {i}"
        label = _check_label(c.label, where)
        idx = np.asarray(c.vertices)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise InputError(f"{where} ({label}): vertices must be a 1D list of integers")
        if idx.size < MIN_POINTS:
            raise InputError(f"{where} ({label}) has {idx.size} points; at least {MIN_POINTS} "
                             f"are needed")
        if idx.min() < 0 or idx.max() >= n_vertices:
            raise InputError(f"{where} ({label}): vertex index out of range [0, {n_vertices - 1}]")
        out.append(Contour3D(label, idx.astype(np.int64).copy()))
    return out


def _load_json(path: PathLike, name: str):
    path = Path(path)
    if not path.is_file():
        raise FileReadError(f"{name}: file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileReadError(f"{name}: cannot read JSON from {path} ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("contour"), list):
        raise FileReadError(f"{name}: {path} is not a P2ILF contour file (no 'contour' list)")
    return data["contour"]


def read_contours_2d(path: PathLike, name: str = "2D contours") -> List[Contour2D]:
    """Read a P2ILF 2D contour JSON file."""
    items = _load_json(path, name)
    out = []
    for i, item in enumerate(items):
        try:
            pts = item["imagePoints"]
            xy = np.stack([np.asarray(pts["x"], dtype=float), np.asarray(pts["y"], dtype=float)], 1)
            label = item["contourType"]
        except (KeyError, TypeError, ValueError) as exc:
            raise FileReadError(f"{name}: contour {i} in {path} is malformed ({exc})") from None
        out.append(Contour2D(label, xy))
    return validate_contours_2d(out, name)


def read_contours_3d(path: PathLike, n_vertices: int, name: str = "3D contours") -> List[Contour3D]:
    """Read a P2ILF 3D contour JSON file (vertex indices checked against ``n_vertices``)."""
    items = _load_json(path, name)
    out = []
    for i, item in enumerate(items):
        try:
            idx = np.asarray(item["modelPoints"]["vertices"])
            label = item["contourType"]
        except (KeyError, TypeError, ValueError) as exc:
            raise FileReadError(f"{name}: contour {i} in {path} is malformed ({exc})") from None
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise FileReadError(f"{name}: contour {i} in {path} has non-integer vertex indices")
        out.append(Contour3D(label, idx.astype(np.int64)))
    return validate_contours_3d(out, n_vertices, name)


def contours_2d_to_json(contours: Sequence[Contour2D]) -> dict:
    """The P2ILF 2D contour schema: image points are integers (pixel coordinates
    truncated towards zero, as the challenge's own code does with ``int()``)."""
    return {"numOfContours": len(contours),
            "contour": [{"contourType": c.label,
                         "imagePoints": {"x": [int(v) for v in c.points[:, 0]],
                                         "y": [int(v) for v in c.points[:, 1]]}}
                        for c in contours]}


def contours_3d_to_json(contours: Sequence[Contour3D]) -> dict:
    return {"numOfContours": len(contours),
            "contour": [{"contourType": c.label,
                         "modelPoints": {"vertices": [int(v) for v in c.vertices]}}
                        for c in contours]}


def write_contours_2d(contours: Sequence[Contour2D], path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(contours_2d_to_json(contours)))
    return path


def write_contours_3d(contours: Sequence[Contour3D], path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(contours_3d_to_json(contours)))
    return path


def group_by_label(contours) -> Dict[str, list]:
    """``{label: [contours...]}`` keeping file order."""
    out: Dict[str, list] = {}
    for c in contours:
        out.setdefault(c.label, []).append(c)
    return out


def contours_from_label_image(rgb: np.ndarray, min_pixels: int = 20) -> List[Contour2D]:
    """P2ILF label picture (RGB ``(H, W, 3)``, ridge red, ligament blue, silhouette yellow,
    JPEG-compressed) -> unordered pixel contours, one per connected component.

    Points are pixel centres of the thin drawn lines, ordered along the curve by a greedy
    walk (:func:`order_polyline`).
    """
    import cv2  # noqa: PLC0415

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"label image: expected an RGB image (H, W, 3), got shape {rgb.shape}")
    r, g, b = (rgb[..., k].astype(int) for k in range(3))
    masks = {"Ridge": (r > 128) & (g < 100) & (b < 100),
             "Ligament": (b > 128) & (r < 100) & (g < 100),
             "Silhouette": (r > 128) & (g > 128) & (b < 100)}
    out = []
    for label in LABELS:
        n, lab = cv2.connectedComponents(masks[label].astype(np.uint8), connectivity=8)
        for k in range(1, n):
            vv, uu = np.nonzero(lab == k)
            if vv.size < min_pixels:
                continue
            out.append(Contour2D(label, order_polyline(np.stack([uu, vv], 1).astype(float))))
    return out


def order_polyline(points: np.ndarray) -> np.ndarray:
    """Order unordered curve samples ``(N, D)``: start at one end of the point set's
    diameter, then walk to the nearest unvisited point (O(N^2), for N up to a few 1000)."""
    p = np.asarray(points, dtype=float)
    n = p.shape[0]
    if n < 3:
        return p.copy()
    if n > 4000:
        p = p[np.linspace(0, n - 1, 4000).astype(int)]
        n = p.shape[0]
    d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    start = int(np.unravel_index(np.argmax(d2), d2.shape)[0])
    visited = np.zeros(n, bool)
    order = [start]
    visited[start] = True
    for _ in range(n - 1):
        row = np.where(visited, np.inf, d2[order[-1]])
        nxt = int(np.argmin(row))
        order.append(nxt)
        visited[nxt] = True
    return p[order]
