"""Simulated (synthetic) X-ray evaluation cases from a real CT.

Everything this module makes is SYNTHETIC: X-ray images are DRRs of the CT at a known
pose with realistic detector effects added; the ground-truth pose and the landmarks are
known exactly, which is what an accuracy evaluation needs. Cases carry
``"synthetic": True`` in their ``info``.

X-ray effects (:func:`xray_effects`), applied to the DRR line integrals ``L``:

1. photon counting: ``I = I0 * exp(-L)`` with Poisson noise (``photons`` = I0 per pixel
   of unattenuated beam), plus Gaussian electronic noise (``electronic_sigma`` counts);
2. detector blur: Gaussian point spread (``blur_sigma_px``);
3. output: the negative log ``-log(I / I0)`` (what registration compares with DRRs), or
   the raw detector counts (``negative_log=False``);
4. an intensity remapping ``a * x**gamma + b`` of the negative-log image (vendor
   post-processing), which NCC ignores in its affine part.

Reproducibility: :func:`simulate_cases` gives case ``i`` its own random generators,
derived from ``(seed, i)`` only (:func:`case_generators`): one for the true pose and the
start, one for the image noise. numpy's Poisson sampler draws a data-dependent number of
random numbers, so with one shared stream a last-bit change of the DRR would change every
later case; with the split streams the poses of case ``i`` depend only on ``(seed, i)``,
and the case is the same whether it is generated alone or as part of ``n`` cases.

Frames: ``ct_to_camera`` maps CT RAS mm to the X-ray camera (origin at the source, +z to
the detector); landmarks are CT RAS mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from SurgicalReg2D3DLib.errors import FileReadError, InputError
from SurgicalReg2D3DLib.nodes import LPS_TO_RAS

from .geometry import look_at_pose



def read_ct(path: Union[str, Path], allow_uneven_slices: bool = False
            ) -> Tuple[np.ndarray, np.ndarray]:
    """Read a CT file (NIfTI/NRRD/MHA) or a DICOM folder without MRML.

    Returns ``(hu, ijk_to_ras)``: ``hu`` float32 (K, J, I), ``ijk_to_ras`` (4, 4). The
    checks are the core's (:mod:`SurgicalReg2D3DLib.checks`): a file cut short, a DICOM
    series with a missing/unreadable/duplicated slice (unless ``allow_uneven_slices``) and
    bad geometry (spacing, direction, origin) are errors naming the CT.
    """
    import SimpleITK as sitk  # noqa: PLC0415

    from SurgicalReg2D3DLib import checks  # noqa: PLC0415

    path = Path(path)
    if not path.exists():
        raise FileReadError(f"CT file: not found: {path}")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            names = reader.GetGDCMSeriesFileNames(str(path))
            if not names:
                raise FileReadError(f"CT file: no DICOM series in folder {path}")
            reader.SetFileNames(names)
            reader.MetaDataDictionaryArrayUpdateOn()
            image = reader.Execute()
            warning = checks.check_sitk_series(reader, "CT DICOM series", path,
                                               allow_uneven_slices)
            if warning:
                import sys  # noqa: PLC0415

                print(f"warning: {warning}; going on as asked (--allow-uneven-slices)",
                      file=sys.stderr)
        else:
            checks.check_file_complete(path, "CT file")
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            # the header as written (ITK turns a negative spacing into a flipped axis)
            checks.check_sitk_geometry(reader, "CT volume", path)
            image = reader.Execute()
    except RuntimeError as exc:
        raise FileReadError(f"CT file: cannot read {path}: {str(exc).strip().splitlines()[-1]}") from None
    if image.GetDimension() != 3 or image.GetSize()[2] == 1:
        raise InputError(f"CT volume: expected a 3D volume, got an image of size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("CT volume: expected a scalar volume, got "
                         f"{image.GetNumberOfComponentsPerPixel()} components per voxel")
    checks.check_sitk_geometry(image, "CT volume", path)
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    d = np.array(image.GetDirection()).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = d @ np.diag(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return hu, LPS_TO_RAS @ ijk_to_lps


def downsample_ct(hu: np.ndarray, ijk_to_ras: np.ndarray, factor: int) -> Tuple[np.ndarray, np.ndarray]:
    """Block-average a CT by an integer ``factor`` (edge voxels that do not fill a block
    are dropped). Returns the new ``(hu, ijk_to_ras)``; voxel ``i'`` is the mean of old
    voxels ``f i' .. f i' + f - 1``, centred at old index ``f i' + (f - 1) / 2``."""
    f = int(factor)
    if f < 1:
        raise InputError(f"downsample factor: must be an integer >= 1, got {factor}")
    if f == 1:
        return np.asarray(hu, np.float32).copy(), np.asarray(ijk_to_ras, float).copy()
    k, j, i = (s // f for s in hu.shape)
    if min(k, j, i) < 2:
        raise InputError(f"downsample factor: {f} leaves fewer than 2 voxels of shape {hu.shape}")
    a = np.asarray(hu, np.float32)[: k * f, : j * f, : i * f]
    a = a.reshape(k, f, j, f, i, f).mean(axis=(1, 3, 5))
    m = np.asarray(ijk_to_ras, float) @ np.array(
        [[f, 0, 0, (f - 1) / 2], [0, f, 0, (f - 1) / 2], [0, 0, f, (f - 1) / 2], [0, 0, 0, 1.0]])
    return a.astype(np.float32), m


def sample_landmarks(hu: np.ndarray, ijk_to_ras: np.ndarray, n: int = 20, seed: int = 0,
                     bone_hu: float = 250.0, body_hu: float = -300.0) -> np.ndarray:
    """``(n, 3)`` RAS landmarks for mTRE: half on bone surfaces (voxels above ``bone_hu``
    with a neighbour below it), half anywhere inside the body (above ``body_hu``)."""
    from scipy import ndimage  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    bone = hu > bone_hu
    surface = bone & ~ndimage.binary_erosion(bone)
    body = hu > body_hu
    picks = []
    for mask, count in ((surface, n // 2), (body, n - n // 2)):
        idx = np.argwhere(mask)
        if len(idx) == 0:
            idx = np.argwhere(body) if body.any() else np.argwhere(np.ones_like(body))
        picks.append(idx[rng.choice(len(idx), size=count, replace=len(idx) < count)])
    kji = np.concatenate(picks).astype(float)
    ijk1 = np.c_[kji[:, ::-1], np.ones(len(kji))]
    return (ijk1 @ np.asarray(ijk_to_ras).T)[:, :3]


def random_view_pose(center_ras, rng: np.random.Generator, view: str = "AP",
                     source_to_center_mm: float = 600.0, rotation_jitter_deg: float = 10.0,
                     translation_jitter_mm: float = 10.0) -> np.ndarray:
    """A random ``ct_to_camera`` near a standard AP or lateral C-arm view."""
    rot = rng.uniform(-rotation_jitter_deg, rotation_jitter_deg, size=3)
    pose = look_at_pose(center_ras, view, source_to_center_mm, rot)
    pose[:3, 3] += rng.uniform(-translation_jitter_mm, translation_jitter_mm, size=3)
    return pose


def perturb_pose(ct_to_camera: np.ndarray, center_ras, rotation_deg: Sequence[float],
                 translation_mm: Sequence[float]) -> np.ndarray:
    """``ct_to_camera`` moved by a rotation (rotation vector, degrees, camera axes) about
    the CT point ``center_ras`` followed by a translation (camera frame, mm)."""
    from scipy.spatial.transform import Rotation  # noqa: PLC0415

    pose = np.asarray(ct_to_camera, float)
    c = (pose @ np.r_[np.asarray(center_ras, float), 1.0])[:3]
    delta = np.eye(4)
    delta[:3, :3] = Rotation.from_rotvec(np.deg2rad(rotation_deg)).as_matrix()
    delta[:3, 3] = c - delta[:3, :3] @ c + np.asarray(translation_mm, float)
    return delta @ pose


def mtre_np(pose_a: np.ndarray, pose_b: np.ndarray, points_ras: np.ndarray) -> float:
    """Mean 3D distance (mm) between ``points_ras`` mapped by two poses."""
    p = np.c_[points_ras, np.ones(len(points_ras))]
    return float(np.linalg.norm((p @ pose_a.T - p @ pose_b.T)[:, :3], axis=1).mean())


def random_initial_pose(true_pose: np.ndarray, center_ras, landmarks_ras: np.ndarray,
                        rng: np.random.Generator, mtre_range_mm=(10.0, 30.0),
                        rotation_range_deg=(5.0, 15.0), max_tries: int = 200) -> np.ndarray:
    """A start pose whose mTRE to ``true_pose`` lies in ``mtre_range_mm``: a random
    rotation (angle drawn in ``rotation_range_deg``) about the CT centre and a random
    translation, scaled until the landmark error is in range."""
    lo, hi = (float(v) for v in mtre_range_mm)
    if not (0 <= lo <= hi):
        raise InputError(f"mtre_range_mm: expected 0 <= low <= high, got {mtre_range_mm}")
    target = rng.uniform(lo, hi)
    for _ in range(max_tries):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = rng.uniform(*rotation_range_deg)
        tdir = rng.normal(size=3)
        tdir /= np.linalg.norm(tdir)
        rot_only = mtre_np(perturb_pose(true_pose, center_ras, axis * angle, (0, 0, 0)),
                           true_pose, landmarks_ras)
        if rot_only > target:
            angle *= target / max(rot_only, 1e-9) * rng.uniform(0.5, 0.9)
        # Choose the translation length by bisection so that the total mTRE hits target.
        a, b = 0.0, 2.0 * target + 1.0
        for _ in range(40):
            mid = 0.5 * (a + b)
            e = mtre_np(perturb_pose(true_pose, center_ras, axis * angle, tdir * mid),
                        true_pose, landmarks_ras)
            a, b = (mid, b) if e < target else (a, mid)
        init = perturb_pose(true_pose, center_ras, axis * angle, tdir * 0.5 * (a + b))
        if lo - 1e-6 <= mtre_np(init, true_pose, landmarks_ras) <= hi + 1e-6:
            return init
    raise InputError(f"mtre_range_mm: could not reach an mTRE in {mtre_range_mm}")


def xray_effects(line_integrals, rng: np.random.Generator, photons: Optional[float] = 1e4,
                 electronic_sigma: float = 2.0, blur_sigma_px: float = 0.7,
                 negative_log: bool = True, gamma: float = 1.0, scale: float = 1.0,
                 offset: float = 0.0) -> np.ndarray:
    """Realistic (synthetic) detector image from DRR line integrals ``(H, W)``.

    Returns float32 (H, W): ``scale * (-log(I / I0))**gamma + offset`` when
    ``negative_log`` else raw counts ``I``. ``photons=None`` disables quantum noise.
    """
    from scipy.ndimage import gaussian_filter  # noqa: PLC0415

    L = np.asarray(line_integrals, dtype=np.float64)
    if L.ndim != 2:
        raise InputError(f"line integrals: expected a 2D image, got shape {L.shape}")
    i0 = float(photons) if photons else 1e4
    counts = i0 * np.exp(-L)
    if photons:
        counts = rng.poisson(counts).astype(np.float64)
    if electronic_sigma > 0:
        counts = counts + rng.normal(0.0, electronic_sigma, size=counts.shape)
    if blur_sigma_px > 0:
        counts = gaussian_filter(counts, blur_sigma_px)
    counts = np.clip(counts, 0.5, None)
    if not negative_log:
        return counts.astype(np.float32)
    nl = -np.log(counts / i0)
    nl = np.clip(nl, 0.0, None)
    return (scale * nl ** gamma + offset).astype(np.float32)


@dataclass
class SimulatedCase:
    """One synthetic evaluation case (one or more views of the same CT pose).

    ``images``: list of (H, W) float32 negative-log X-rays; ``cameras``: their cameras;
    ``true_ct_to_camera`` / ``init_ct_to_camera``: per-view (4, 4) poses (the relative
    C-arm motion between views is the same in both); ``landmarks_ras`` (N, 3).
    """

    images: List[np.ndarray]
    cameras: list
    true_ct_to_camera: List[np.ndarray]
    init_ct_to_camera: List[np.ndarray]
    landmarks_ras: np.ndarray
    info: Dict[str, object] = field(default_factory=lambda: {"synthetic": True})

    @property
    def initial_mtre_mm(self) -> float:
        return mtre_np(self.init_ct_to_camera[0], self.true_ct_to_camera[0], self.landmarks_ras)


def case_generators(seed: int, index: int) -> Tuple[np.random.Generator, np.random.Generator]:
    """``(pose_rng, noise_rng)`` of case ``index`` of a simulation with ``seed``.

    Both come from ``np.random.SeedSequence(seed).spawn(...)[index]`` (built directly from
    its spawn key, so they do not depend on how many cases are made), split once more into
    a pose/start stream and an image-noise stream.
    """
    if int(index) < 0:
        raise InputError(f"case index: must be >= 0, got {index}")
    case_seq = np.random.SeedSequence(int(seed), spawn_key=(int(index),))
    pose_seq, noise_seq = case_seq.spawn(2)
    return np.random.default_rng(pose_seq), np.random.default_rng(noise_seq)


def simulate_case(volume, camera, rng: np.random.Generator, landmarks_ras: np.ndarray,
                  views: Sequence[str] = ("AP",), mtre_range_mm=(10.0, 30.0),
                  rotation_range_deg=(5.0, 15.0), source_to_center_mm: float = 600.0,
                  effects: Optional[dict] = None, drr_method: str = "siddon",
                  n_samples: Optional[int] = None,
                  noise_rng: Optional[np.random.Generator] = None) -> SimulatedCase:
    """One synthetic case: random true pose near the first view, further views at fixed
    C-arm angles from it (e.g. ``("AP", "LAT")``), a random start with an mTRE in
    ``mtre_range_mm``, and images rendered with X-ray effects.

    ``volume``: a :class:`~FluoroRegLib.drr.DRRVolume`. ``rng`` draws the poses;
    ``noise_rng`` the image noise (default: ``rng`` too, which makes later draws depend
    on the image content — use :func:`simulate_cases` for reproducible sets).
    """
    import torch  # noqa: PLC0415

    from .drr import render_drr  # noqa: PLC0415

    center = volume.center_ras()
    true0 = random_view_pose(center, rng, views[0], source_to_center_mm)
    # Relative C-arm motion view0 -> view k, identical for truth and start.
    ref0 = look_at_pose(center, views[0], source_to_center_mm)
    trues = [true0]
    for view in views[1:]:
        refk = look_at_pose(center, view, source_to_center_mm)
        cam0_to_camk = refk @ np.linalg.inv(ref0)
        trues.append(cam0_to_camk @ true0)
    init0 = random_initial_pose(true0, center, landmarks_ras, rng, mtre_range_mm,
                                rotation_range_deg)
    inits = [t @ np.linalg.inv(true0) @ init0 for t in trues]
    images = []
    effects = dict(effects or {})
    with torch.no_grad():
        for pose in trues:
            L = render_drr(volume, camera, pose, method=drr_method, n_samples=n_samples)[0]
            images.append(xray_effects(L.cpu().numpy(),
                                       rng if noise_rng is None else noise_rng, **effects))
    info = {"synthetic": True, "views": list(views), "drr_method": drr_method,
            "effects": effects}
    case = SimulatedCase(images, [camera] * len(views), trues, inits, np.asarray(landmarks_ras), info)
    case.info["initial_mtre_mm"] = case.initial_mtre_mm
    return case


def simulate_cases(volume, camera, landmarks_ras: np.ndarray, n_cases: int, seed: int = 0,
                   first_case: int = 0, progress=None, **kwargs) -> List[SimulatedCase]:
    """Cases ``first_case .. first_case + n_cases - 1`` of the simulation with ``seed``.

    Case ``i`` uses :func:`case_generators` ``(seed, i)``, so its true and initial poses
    depend only on ``(seed, i)`` (not on the noise settings, the DRR's last bits or the
    number of cases), and its noise only on ``(seed, i)`` and the image. ``kwargs`` go
    to :func:`simulate_case`. ``progress(fraction, message)`` is called after each case.
    """
    if int(n_cases) < 1:
        raise InputError(f"cases: must be >= 1, got {n_cases}")
    cases = []
    for i in range(int(first_case), int(first_case) + int(n_cases)):
        pose_rng, noise_rng = case_generators(seed, i)
        case = simulate_case(volume, camera, pose_rng, landmarks_ras, noise_rng=noise_rng, **kwargs)
        case.info.update(seed=int(seed), case_index=i)
        cases.append(case)
        if progress is not None:
            progress(len(cases) / int(n_cases), f"case {i}")
    return cases
