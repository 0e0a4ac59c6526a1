"""SYNTHETIC training and test frames for the learned registration, rendered here.

Everything this module makes is synthetic: real liver meshes (the shipped P2ILF and
SciKit-Surgery livers, or any mesh given to ``train --meshes``) are deformed, cut, posed
in front of a laparoscope model and drawn with a simple shading model. Nothing here is a
real laparoscopic image.

One sample (:func:`make_sample`):

1. **Shapes** (:mod:`.shapes`). The *preoperative* model ``Ms`` is a variant of the base
   mesh: a smooth random radial-basis warp (<= 8 mm, ``PREOP_WARP_MM``), an anisotropic
   scaling (0.85-1.15 per axis), with ``train --relief P`` a rounder or sharper copy
   (probability P) and, with probability 0.3, a planar cut removing 5-20 % of the vertices (partial models).
   The *intraoperative* liver ``Mi`` is ``Ms`` bent (a near-isometric bending about a
   random plane through the centroid, up to ~35 deg over 100 mm) plus a small warp
   (<= 4 mm). The network sees ``Ms``; the frame shows ``Mi``; both share vertex ids,
   so correspondences are exact by vertex id.
2. **Cameras.** The P2ILF camera (1920 x 1080, its distortion), the SciKit-Surgery
   left camera (1920 x 540) and random pinhole cameras (horizontal field of view
   55-95 deg, aspect 1.3-3.6, mild random radial distortion). The network image is
   always ``NET_H x NET_W`` (96 x 128): the intrinsics are scaled anisotropically to
   that grid (distortion, defined on normalised coordinates, is unchanged).
3. **Poses.** The camera looks along a direction drawn within 50 deg of the mesh's
   *view axis* (75 %) or from any direction (25 %), aims at a surface point that faces
   it, from 80-250 mm, with a random roll and a tilt of up to 15 deg so that the liver
   is often partly outside the frame. For the P2ILF mesh the view axis is the mean
   inward normal of its annotated ridge / ligament vertices (that surface is what the
   real frame shows: the anterior-inferior surface); for a mesh without annotations the
   direction is uniform.
4. **Appearance.** Tissue-coloured textured background, liver colour x low-frequency
   texture x Lambert shading from a light near the camera + Phong speculars, global
   gain and vignetting, 0-2 occluding instruments (grey shafts from the border; they
   are removed from the liver mask, as a user would paint it), Gaussian blur and noise.
5. **Ground truth.** A z-buffer (:func:`render_ids`, built on :mod:`..raster`'s
   face-pixel enumeration) gives per pixel the visible face and barycentrics; per
   vertex the visibility (depth test, not under an instrument); per point the landmark
   class (0 none, 1 ridge, 2 falciform ligament, 3 silhouette) with ridges from mesh
   curvature (:func:`ridge_vertices`), the ligament from the mesh's annotation, the
   silhouette where the view ray grazes the surface; per feature-grid pixel the index
   of the matching point (nearest of the first ``N_MATCH`` FPS points to the visible
   surface point, within the point spacing) and its class (mask outline -> silhouette).
   :func:`arc_length_pairs` gives the pseudo correspondences of a landmark curve
   (arc-length-aligned resampling of the 3D curve's projection and the 2D curve).

Point-encoder frame (:func:`point_inputs`): the mesh file's own axes (centred, in
decimetres, randomly rotated by up to 25 deg in training). This assumes the mesh is in
its CT's patient frame, as CT segmentations are (both shipped livers are: the real
laparoscope looks along about +y in both files). A mesh in an arbitrary frame must be
re-oriented first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from SurgicalReg2D3DLib.errors import InputError

from .shapes import PREOP_WARP_MM, bend, cut, principal_axes, random_unit, rbf_warp, relief

#: network image size (rows, columns) and the feature grid stride
NET_H, NET_W, STRIDE = 96, 128, 4
GRID_H, GRID_W = NET_H // STRIDE, NET_W // STRIDE
#: points given to the point encoder and the matching tokens (an FPS prefix)
N_POINTS, N_MATCH = 1024, 256
#: canonical frame unit (mm): the point encoder works in decimetres
CANON_SCALE_MM = 100.0
CLASS_NAMES = ("none", "ridge", "ligament", "silhouette")


# ----------------------------------------------------------------------------- geometry
def fps(points, k: int, start=0):
    """Farthest-point sampling in plain torch. ``points (B, N, D)`` or ``(N, D)``;
    ``start`` an int or ``(B,)`` long tensor. Returns ``(B, k)`` (or ``(k,)``) indices."""
    import torch  # noqa: PLC0415

    p = torch.as_tensor(points)
    single = p.dim() == 2
    if single:
        p = p[None]
    B, N, _ = p.shape
    k = min(int(k), N)
    idx = torch.zeros(B, k, dtype=torch.long, device=p.device)
    cur = torch.as_tensor(start, device=p.device).long().expand(B).clone()
    dist = torch.full((B, N), float("inf"), dtype=p.dtype, device=p.device)
    ar = torch.arange(B, device=p.device)
    for i in range(k):
        idx[:, i] = cur
        d = ((p - p[ar, cur][:, None]) ** 2).sum(-1)
        dist = torch.minimum(dist, d)
        cur = dist.argmax(1)
    return idx[0] if single else idx


def vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (unit)."""
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


#: how :func:`ridge_vertices` defines a ridge: ``ring`` the sharpest 8 % of the vertices
#: by a one-ring curvature (the bundled v5's labels; its band width follows the mesh's
#: resolution), ``scale`` a curvature at the physical scale ``RIDGE_RADIUS_MM`` above the
#: fixed sharpness ``RIDGE_SHARPNESS`` (a smooth liver has fewer ridges, a mesh of any
#: resolution the same ones)
RIDGE_DEFINITIONS = ("ring", "scale")
#: ``scale`` ridges: the radius (mm; the P2ILF training mesh's mean edge length) and the
#: sharpness threshold (the P2ILF mesh's sharpest 8 % of surface area at that radius)
RIDGE_RADIUS_MM, RIDGE_SHARPNESS = 6.4, 0.1194


def check_ridge_definition(name: str) -> str:
    """``name`` if it is one of :data:`RIDGE_DEFINITIONS`, else a one-line error."""
    if name not in RIDGE_DEFINITIONS:
        raise InputError(f"ridge definition: one of {', '.join(RIDGE_DEFINITIONS)}, got "
                         f"{name!r}")
    return name


def face_normals(v: np.ndarray, f: np.ndarray):
    """``(unit normals (F, 3), areas (F,))`` of the triangles."""
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    norm = np.linalg.norm(fn, axis=1, keepdims=True)
    return fn / np.maximum(norm, 1e-12), 0.5 * norm[:, 0]


def ridge_sharpness(v: np.ndarray, f: np.ndarray, radius_mm: float = RIDGE_RADIUS_MM):
    """``(sharpness (V,), vertex area (V,))``: per vertex, 1 - the smallest cosine between
    the area-weighted mean normal of the faces whose centroids lie within ``radius_mm``
    (and the vertex's own faces) and each of those faces' normals; the area is a third of
    the incident faces'. The same surface gives the same values at any resolution finer
    than the radius."""
    from scipy.spatial import cKDTree  # noqa: PLC0415

    v = np.asarray(v, np.float64)
    f = np.asarray(f, np.int64)
    fn, area = face_normals(v, f)
    varea = np.zeros(len(v))
    for k in range(3):
        np.add.at(varea, f[:, k], area / 3.0)
    near = cKDTree(v[f].mean(1)).query_ball_point(v, r=float(radius_mm))
    vi = np.repeat(np.arange(len(v)), [len(n) for n in near])
    fi = np.fromiter((j for n in near for j in n), np.int64, count=len(vi))
    F = len(f)
    pair = np.unique(np.concatenate([vi * F + fi] + [f[:, k] * F + np.arange(F)
                                                      for k in range(3)]))
    vi, fi = pair // F, pair % F
    mean_n = np.zeros((len(v), 3))
    np.add.at(mean_n, vi, fn[fi] * area[fi, None])
    mean_n /= np.maximum(np.linalg.norm(mean_n, axis=1, keepdims=True), 1e-12)
    sharp = np.zeros(len(v))
    np.maximum.at(sharp, vi, 1.0 - (mean_n[vi] * fn[fi]).sum(1))
    return sharp, varea


def ridge_vertices(v: np.ndarray, f: np.ndarray, fraction: float = 0.08,
                   definition: str = "ring") -> np.ndarray:
    """Boolean ``(V,)``: the mesh's curvature ridges (:data:`RIDGE_DEFINITIONS`).
    ``ring``: the sharpest ``fraction`` of vertices, sharpness = 1 - the smallest cosine
    between the vertex normal and its incident face normals (a discrete curvature of the
    surface), smoothed once over the one-ring. ``scale``: :func:`ridge_sharpness` at
    least :data:`RIDGE_SHARPNESS` (``fraction`` unused)."""
    if check_ridge_definition(definition) == "scale":
        return ridge_sharpness(v, f)[0] >= RIDGE_SHARPNESS
    fn = face_normals(v, f)[0]
    vn = vertex_normals(v, f)
    sharp = np.zeros(len(v))
    for k in range(3):
        c = 1.0 - (vn[f[:, k]] * fn).sum(1)
        np.maximum.at(sharp, f[:, k], c)
    acc, cnt = sharp.copy(), np.ones(len(v))
    for a, b in ((0, 1), (1, 2), (2, 0)):
        np.add.at(acc, f[:, a], sharp[f[:, b]])
        np.add.at(cnt, f[:, a], 1.0)
    s = acc / cnt
    return s >= np.quantile(s, 1.0 - fraction)


def canonical_frame(v: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(R, c)``: principal axes of the vertices (rows of ``R``, largest first), each
    axis' sign chosen so that the third moment along it is positive, right-handed.
    ``canon = (p - c) @ R.T / CANON_SCALE_MM`` (metric scale is kept)."""
    R, c = principal_axes(v)
    x = v - c
    for i in range(2):
        if np.mean((x @ R[i]) ** 3) < 0:
            R[i] = -R[i]
    R[2] = np.cross(R[0], R[1])
    return R, c


def to_canonical(v: np.ndarray, R: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (v - c) @ R.T / CANON_SCALE_MM


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    a = np.asarray(axis, float) / max(np.linalg.norm(axis), 1e-12)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def within_cone(axis: np.ndarray, max_deg: float, rng) -> np.ndarray:
    """A random unit vector within ``max_deg`` of ``axis`` (uniform on the cap)."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    cos_t = rng.uniform(np.cos(np.radians(max_deg)), 1.0)
    perp = np.cross(a, random_unit(rng))
    perp /= max(np.linalg.norm(perp), 1e-12)
    return cos_t * a + np.sqrt(max(0.0, 1 - cos_t ** 2)) * perp


# ----------------------------------------------------------------------------- meshes
@dataclass
class TrainMesh:
    """A base mesh with its landmark labels (per vertex) and optional view axis."""

    vertices: np.ndarray
    faces: np.ndarray
    ridge: np.ndarray                     # (V,) bool
    ligament: np.ndarray                  # (V,) bool
    view_axis: Optional[np.ndarray]       # camera viewing direction, model frame
    name: str = "mesh"
    extras: Dict[str, object] = field(default_factory=dict)


def ligament_from_contours(v: np.ndarray, f: np.ndarray, contours3d, radius_mm: float = 6.0,
                           label: str = "Ligament") -> np.ndarray:
    """Vertices within ``radius_mm`` of the mesh paths through annotated 3D contours."""
    from scipy.spatial import cKDTree  # noqa: PLC0415

    from ..synthetic import mesh_edge_path  # noqa: PLC0415

    out = np.zeros(len(v), bool)
    pts = []
    for c in contours3d or ():
        if c.label != label:
            continue
        ids = list(c.vertices)
        for a, b in zip(ids[:-1], ids[1:]):
            pts.append(v[mesh_edge_path(v, f, int(a), int(b))])
    if pts:
        p = np.concatenate(pts)
        d, _ = cKDTree(p).query(v)
        out = d <= radius_mm
    return out


def train_mesh(mesh, contours3d=None, view_axis=None) -> TrainMesh:
    """A :class:`TrainMesh` from a :class:`..mesh.MeshData` (+ optional P2ILF 3D contours:
    ligament labels and, without ``view_axis``, the view axis = mean inward normal of the
    annotated vertices)."""
    v = np.asarray(mesh.vertices, np.float64)
    f = np.asarray(mesh.faces, np.int64)
    lig = ligament_from_contours(v, f, contours3d)
    if view_axis is None and contours3d:
        ids = np.unique(np.concatenate([np.asarray(c.vertices) for c in contours3d]))
        n = vertex_normals(v, f)[ids].mean(0)
        if np.linalg.norm(n) > 1e-6:
            view_axis = -n / np.linalg.norm(n)
    return TrainMesh(v, f, ridge_vertices(v, f), lig,
                     None if view_axis is None else np.asarray(view_axis, float),
                     getattr(mesh, "name", "mesh"))


def p2ilf_train_mesh() -> TrainMesh:
    """The shipped real P2ILF patient mesh with its annotated ligament and view axis."""
    from ..sample_data import real_p2ilf_case  # noqa: PLC0415

    mesh, _, _, c3 = real_p2ilf_case()
    tm = train_mesh(mesh, c3)
    tm.name = "p2ilf_patient2"
    return tm


def sksurgery_mesh_and_pose():
    """The shipped SciKit-Surgery liver (HELD OUT of training) and its real shipped
    laparoscope pose (``model_to_camera``) and camera."""
    from SurgicalReg2D3DLib.io import read_matrix_txt  # noqa: PLC0415

    from ..sample_data import sample_data_dir  # noqa: PLC0415
    from ..camera import SKSURGERY_SIZE, load_camera  # noqa: PLC0415
    from ..mesh import load_mesh  # noqa: PLC0415

    d = sample_data_dir() / "liver_sksurgery" / "liver"
    mesh = load_mesh(d / "liver_sub.ply")
    cam = load_camera(d / "calib.left.intrinsics.txt", *SKSURGERY_SIZE)
    return mesh, read_matrix_txt(d / "model_to_camera.txt"), cam


# ----------------------------------------------------------------------------- cameras
def net_camera(cam):
    """The camera of the ``NET_W x NET_H`` network image (anisotropic resize)."""
    from SurgicalReg2D3DLib.cameras import PinholeCamera  # noqa: PLC0415

    rx, ry = NET_W / cam.width, NET_H / cam.height
    return PinholeCamera(fx=cam.fx * rx, fy=cam.fy * ry, cx=(cam.cx + 0.5) * rx - 0.5,
                         cy=(cam.cy + 0.5) * ry - 0.5, width=NET_W, height=NET_H,
                         skew=cam.skew * rx, dist=cam.dist)


def net_to_full_px(uv_net: np.ndarray, cam) -> np.ndarray:
    """Network-image pixel coordinates -> pixels of the full frame of ``cam``."""
    uv = np.asarray(uv_net, float)
    return np.stack([(uv[:, 0] + 0.5) * cam.width / NET_W - 0.5,
                     (uv[:, 1] + 0.5) * cam.height / NET_H - 0.5], 1)


def full_to_net_px(uv_full: np.ndarray, cam) -> np.ndarray:
    """Pixels of the full frame of ``cam`` -> network-image pixel coordinates (the inverse
    of :func:`net_to_full_px`)."""
    uv = np.asarray(uv_full, float).reshape(-1, 2)
    return np.stack([(uv[:, 0] + 0.5) * NET_W / cam.width - 0.5,
                     (uv[:, 1] + 0.5) * NET_H / cam.height - 0.5], 1)


def grid_centres_net() -> np.ndarray:
    """``(GRID_H * GRID_W, 2)`` network-pixel ``(u, v)`` of the feature-grid cell centres
    (row-major)."""
    gv, gu = np.meshgrid(np.arange(GRID_H), np.arange(GRID_W), indexing="ij")
    return np.stack([gu.ravel() * STRIDE + (STRIDE - 1) / 2.0,
                     gv.ravel() * STRIDE + (STRIDE - 1) / 2.0], 1)


_CAMERAS: Dict[str, object] = {}


def training_camera(rng):
    """A full-size camera: P2ILF (40 %), SciKit-Surgery left (20 %), random (40 %)."""
    from SurgicalReg2D3DLib.cameras import PinholeCamera  # noqa: PLC0415

    r = rng.uniform()
    if r < 0.6:
        key = "p2ilf" if r < 0.4 else "sks"
        if key not in _CAMERAS:
            from ..sample_data import sample_data_dir  # noqa: PLC0415
            from ..camera import SKSURGERY_SIZE, load_camera  # noqa: PLC0415

            d = sample_data_dir()
            _CAMERAS[key] = (load_camera(d / "p2ilf" / "cameraparams" /
                                         "acquisition-camera-metadata.json") if key == "p2ilf"
                             else load_camera(d / "liver_sksurgery" / "liver" /
                                              "calib.left.intrinsics.txt", *SKSURGERY_SIZE))
        return _CAMERAS[key]
    w = 1280
    h = int(round(w / rng.uniform(1.3, 3.6)))
    fx = w / 2 / np.tan(np.radians(rng.uniform(55, 95)) / 2)
    fy = fx * (rng.uniform(0.45, 0.55) if w / h > 3 else 1.0)   # interlaced-like half frames
    return PinholeCamera(fx=fx, fy=fy, cx=w / 2 + rng.normal(0, 15), cy=h / 2 + rng.normal(0, 10),
                         width=w, height=h, dist=(rng.uniform(-0.25, 0.05), 0.0, 0.0, 0.0))


def look_at(cam_centre: np.ndarray, forward: np.ndarray, roll: float) -> np.ndarray:
    """``model_to_camera`` of a camera at ``cam_centre`` (model frame) looking along
    ``forward`` with a roll angle (rad) about it."""
    z = forward / np.linalg.norm(forward)
    up = np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    R = rotation(np.array([0, 0, 1.0]), roll) @ R
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ cam_centre
    return T


def sample_pose(v: np.ndarray, normals: np.ndarray, rng, view_axis=None,
                cone_deg: float = 50.0, dist_mm=(80.0, 250.0), tilt_deg: float = 15.0):
    """A laparoscope-like ``model_to_camera`` (see the module docstring)."""
    if view_axis is not None and rng.uniform() < 0.75:
        w = within_cone(view_axis, cone_deg, rng)
    else:
        w = random_unit(rng)
    facing = np.nonzero(normals @ w < -0.5)[0]
    aim = v[rng.choice(facing)] if len(facing) else v.mean(0)
    centre = aim - rng.uniform(*dist_mm) * w
    look = within_cone(w, tilt_deg, rng)
    return look_at(centre, look, rng.uniform(-np.pi, np.pi))


# rendering and appearance live in .render (re-exported for callers of this module)
from .render import _instrument, render_ids, shade, vertex_visibility  # noqa: E402,F401


# ----------------------------------------------------------------------------- samples
@dataclass
class Sample:
    """One SYNTHETIC frame and its ground truth (arrays ready for the network)."""

    image: np.ndarray            # (3, NET_H, NET_W) float32 RGB in [0, 1]
    mask: np.ndarray             # (NET_H, NET_W) float32 liver mask (instruments removed)
    points: np.ndarray           # (N_POINTS, 6) canonical xyz + normal, FPS order
    point_vid: np.ndarray        # (N_POINTS,) vertex ids in the preoperative mesh
    overlap: np.ndarray          # (N_MATCH,) float32 visible
    point_class: np.ndarray      # (N_MATCH,) int64
    pix_match: np.ndarray        # (GRID_H * GRID_W,) index into the N_MATCH points, -1 none
    pix_class: np.ndarray        # (GRID_H * GRID_W,) int64
    pix_liver: np.ndarray        # (GRID_H * GRID_W,) float32 liver fraction of the cell
    model_to_camera: np.ndarray  # (4, 4) preop model -> camera (intraop shape, rigid part)
    camera: object = None        # the full-size camera
    preop_vertices: Optional[np.ndarray] = None
    intraop_vertices: Optional[np.ndarray] = None
    faces: Optional[np.ndarray] = None
    full_mask: Optional[np.ndarray] = None
    extras: Dict[str, object] = field(default_factory=dict)


def point_inputs(vertices: np.ndarray, faces: np.ndarray, start: int = 0,
                 augment_rng=None, rotate_deg: float = 0.0, order=None):
    """FPS-ordered point-encoder input of a mesh: ``(points (N, 6), vertex ids (N,))``.

    Frame: the mesh's own axes, centred at the vertex mean, in decimetres, with an
    optional random rotation (augmentation). The mesh is assumed to be in the patient
    frame of its CT (as both shipped livers are: the laparoscope's viewing direction is
    about +y in both files); principal axes (:func:`canonical_frame`) were tried first
    and are NOT consistent between livers (the two shipped livers' real viewing
    directions end up 150 deg apart in their principal frames)."""
    import torch  # noqa: PLC0415

    R, c = np.eye(3), vertices.mean(0)
    if augment_rng is not None and rotate_deg > 0:
        R = rotation(random_unit(augment_rng), np.radians(augment_rng.uniform(0, rotate_deg))) @ R
    if order is not None and len(order) >= N_POINTS:
        idx = np.asarray(order[:N_POINTS], np.int64)
    else:
        idx = fps(torch.as_tensor(vertices), N_POINTS, start).numpy()
    if len(idx) < N_POINTS:
        idx = np.concatenate([idx, idx[np.arange(N_POINTS - len(idx)) % len(idx)]])
    pts = to_canonical(vertices[idx], R, c)
    nrm = vertex_normals(vertices, faces)[idx] @ R.T
    return np.concatenate([pts, nrm], 1).astype(np.float32), idx


def render_frame(tm: TrainMesh, rng, camera=None, model_to_camera=None, preop: bool = True,
                 bend_curvature: float = 1 / 160.0, instruments: bool = True,
                 max_tries: int = 20, warp_mm: float = PREOP_WARP_MM,
                 ridge_definition: str = "ring", relief_prob: float = 0.0) -> dict:
    """The frame every SYNTHETIC training sample starts from (shared by :func:`make_sample`
    and the landmark samples of :mod:`.landmarks_data`): the preoperative shape (warped,
    scaled, maybe cut) bent into the intraoperative one, a laparoscope pose and camera,
    the rendered ids (``depth``, ``face``, ``bary``, ``uv``, ``z``), the liver mask with
    instruments removed and the shaded image; ``warp_mm``: the largest amplitude of the
    preoperative shape's random warp (:func:`rbf_warp`); ``ridge_definition``: ``ring``
    carries the base mesh's ridge labels (``tm.ridge``) by vertex id, another definition
    (:func:`ridge_vertices`) labels the warped, scaled preoperative shape itself;
    ``relief_prob``: the probability of a :func:`relief` change of the preoperative shape
    (with the ``ring`` definition the base mesh's labels would no longer fit it, so it
    needs another definition). Returns the local variables by name."""
    v0, f0 = tm.vertices, tm.faces
    ids0 = np.arange(len(v0))
    if preop:
        vs = rbf_warp(v0, rng, rng.uniform(0, warp_mm))
        vs = (vs - vs.mean(0)) * rng.uniform(0.85, 1.15, 3) + vs.mean(0)
        if relief_prob > 0 and rng.uniform() < relief_prob:
            vs = relief(vs, f0, rng)
    else:
        vs = v0.copy()
    fs = f0
    ridge0 = (tm.ridge if ridge_definition == "ring"     # labels of this frame's shape
              else ridge_vertices(vs, f0, definition=ridge_definition))
    if preop and rng.uniform() < 0.3:
        vs, fs, ids0 = cut(vs, f0, rng)
    ridge, lig = ridge0[ids0], tm.ligament[ids0]
    vi = bend(vs, rng, bend_curvature) if bend_curvature > 0 else vs.copy()
    if preop:
        vi = rbf_warp(vi, rng, rng.uniform(0, 4.0))
    ni = vertex_normals(vi, fs)
    for _ in range(max_tries):
        cam = camera if camera is not None else training_camera(rng)
        ncam = net_camera(cam)
        T = (np.asarray(model_to_camera, float) if model_to_camera is not None
             else sample_pose(vi, ni, rng, tm.view_axis))
        vc = vi @ T[:3, :3].T + T[:3, 3]
        if model_to_camera is None and vc[:, 2].min() < 5.0:
            continue
        depth, face, bary, uv, z = render_ids(vi, fs, T, ncam)
        liver = face >= 0
        if model_to_camera is None and liver.mean() < 0.04:
            continue
        break
    occ = []
    if instruments:
        occ = [_instrument(rng, NET_H, NET_W) for _ in range(rng.choice(3, p=[0.4, 0.4, 0.2]))]
    mask = liver.copy()
    for o in occ:
        mask &= ~o
    img = shade(face, bary, vc, ni @ T[:3, :3].T, fs, rng, occ)
    return dict(v0=v0, vs=vs, ids0=ids0, ridge=ridge, lig=lig, vi=vi, fs=fs, ni=ni, cam=cam,
                ncam=ncam, T=T,
                vc=vc, depth=depth, face=face, bary=bary, uv=uv, z=z, liver=liver, occ=occ,
                mask=mask, img=img)


def make_sample(tm: TrainMesh, rng, camera=None, model_to_camera=None, preop: bool = True,
                bend_curvature: float = 1 / 160.0, instruments: bool = True,
                keep_meshes: bool = False, max_tries: int = 20) -> Sample:
    """One SYNTHETIC frame of ``tm`` (see the module docstring). ``camera`` /
    ``model_to_camera`` fix the camera and pose (test frames); ``preop=False`` keeps the
    base shape as the preoperative model (no warp / scaling / cut)."""
    from scipy.spatial import cKDTree  # noqa: PLC0415

    fr = render_frame(tm, rng, camera, model_to_camera, preop, bend_curvature, instruments,
                      max_tries)
    v0, vs, ids0, ridge, lig, vi, fs, ni, cam, T, vc, depth, face, bary, uv, z, occ, mask, \
        img = (fr[k] for k in ("v0", "vs", "ids0", "ridge", "lig", "vi", "fs", "ni", "cam", "T",
                               "vc", "depth", "face", "bary", "uv", "z", "occ", "mask", "img"))
    # --- per-vertex ground truth
    vis = vertex_visibility(uv, z, depth, mask)
    view = vc / np.linalg.norm(vc, axis=1, keepdims=True)
    graze = np.abs((ni @ T[:3, :3].T * view).sum(1)) < 0.25
    cls_v = np.where(lig, 2, np.where(ridge, 1, np.where(graze & vis, 3, 0)))
    order = None
    if preop:
        # FPS orders of the base mesh are cached (8 random starts); a cut keeps the
        # order of the remaining vertices (still well spread): FPS per sample would
        # cost more than the rendering
        cache = tm.extras.setdefault("fps_orders", {})
        key = int(rng.integers(8))
        if key not in cache:
            cache[key] = fps(v0, min(len(v0), 2 * N_POINTS),
                             int(np.random.default_rng(key).integers(len(v0)))).numpy()
        new_id = -np.ones(len(v0), np.int64)
        new_id[ids0] = np.arange(len(ids0))
        order = new_id[cache[key]]
        order = order[order >= 0]
    pts, pidx = point_inputs(vs, fs, start=int(rng.integers(len(vs))), augment_rng=rng,
                             rotate_deg=25.0, order=order)
    m_ids = pidx[:N_MATCH]
    # --- per grid cell ground truth
    gc = grid_centres_net()
    gu = np.clip(np.round(gc[:, 0]).astype(int), 0, NET_W - 1)
    gr = np.clip(np.round(gc[:, 1]).astype(int), 0, NET_H - 1)
    fcell = face[gr, gu]
    incell = mask[gr, gu] & (fcell >= 0)
    surf = np.zeros((len(gc), 3))
    surf[incell] = (vs[fs[fcell[incell]]] * bary[gr[incell], gu[incell]][..., None]).sum(1)
    tree = cKDTree(vs[m_ids])
    nnd, _ = tree.query(vs[m_ids], k=2)
    spacing = float(np.median(nnd[:, 1]))
    d, j = tree.query(surf)
    pix_match = np.where(incell & (d <= 0.75 * spacing), j, -1)
    import cv2  # noqa: PLC0415

    m8 = mask.astype(np.uint8)
    edge = (m8 - cv2.erode(m8, np.ones((3, 3), np.uint8))).astype(bool)
    edge[:2, :] = edge[-2:, :] = False
    edge[:, :2] = edge[:, -2:] = False
    edge_cell = cv2.resize(edge.astype(np.float32), (GRID_W, GRID_H),
                           interpolation=cv2.INTER_AREA).ravel() > 0
    liver_cell = cv2.resize(mask.astype(np.float32), (GRID_W, GRID_H),
                            interpolation=cv2.INTER_AREA).ravel()
    near_vid = np.full(len(gc), -1)
    near_vid[incell] = fs[fcell[incell]][np.arange(incell.sum()),
                                         bary[gr[incell], gu[incell]].argmax(1)]
    pix_class = np.zeros(len(gc), np.int64)
    ok = near_vid >= 0
    pix_class[ok] = np.where(lig[near_vid[ok]], 2, np.where(ridge[near_vid[ok]], 1, 0))
    pix_class[edge_cell & (pix_class == 0)] = 3
    s = Sample(image=np.transpose(img, (2, 0, 1)).copy(), mask=mask.astype(np.float32),
               points=pts, point_vid=pidx, overlap=vis[m_ids].astype(np.float32),
               point_class=cls_v[m_ids].astype(np.int64), pix_match=pix_match.astype(np.int64),
               pix_class=pix_class, pix_liver=liver_cell.astype(np.float32),
               model_to_camera=T, camera=cam)
    if keep_meshes:
        s.preop_vertices, s.intraop_vertices, s.faces = vs, vi, fs
        s.extras["occluders"] = occ
    return s


def arc_length_pairs(curve3d: np.ndarray, curve2d: np.ndarray, n: int = 20,
                     projected3d: Optional[np.ndarray] = None):
    """Pseudo correspondences along one landmark curve: the 3D polyline ``(M, 3)`` and
    the 2D polyline ``(K, 2)`` are resampled at ``n`` equal arc-length fractions and
    paired in order. With ``projected3d`` (the 3D samples projected by a pose, ``(n, 2)``
    or the projection of ``curve3d``) the 2D direction that fits it better is used.
    Returns ``(p3 (n, 3), p2 (n, 2))``."""
    from ..metrics import resample_curve  # noqa: PLC0415

    a = resample_curve(np.asarray(curve3d, float), n)
    b = resample_curve(np.asarray(curve2d, float), n)
    if projected3d is not None:
        q = resample_curve(np.asarray(projected3d, float), n)
        if np.linalg.norm(q - b[::-1], axis=1).mean() < np.linalg.norm(q - b, axis=1).mean():
            b = b[::-1]
    return a, b


def collate(samples: List[Sample]):
    """Stack samples into torch tensors (a dict)."""
    import torch  # noqa: PLC0415

    def st(name, dtype=torch.float32):
        return torch.as_tensor(np.stack([getattr(s, name) for s in samples]), dtype=dtype)

    return {"image": st("image"), "mask": st("mask"), "points": st("points"),
            "overlap": st("overlap"), "point_class": st("point_class", torch.long),
            "pix_match": st("pix_match", torch.long), "pix_class": st("pix_class", torch.long),
            "pix_liver": st("pix_liver")}
