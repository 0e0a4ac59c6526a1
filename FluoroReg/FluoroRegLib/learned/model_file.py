"""Model files of the learned FluoroReg methods: what they record and how they are checked.

A model file is ``torch.save`` of a plain dict (read back with ``weights_only=True``, so
it holds tensors and numbers, never code)::

    format            "FluoroRegLearnedModel"
    format_version    FORMAT_VERSION (an int)
    kind              "regressor" (the pose regressor), "ppc" (the learned PPC update) or
                      "similarity" (the spherical deep similarity; it adds
                      ``similarity``: its settings)
    arch              the network's constructor arguments
    state_dict        the weights
    ct                the CT fingerprint: {"voxels_sha256", "shape", "ijk_to_ras"}
    geometry          the detector it was trained for (XRayCamera.to_dict())
    nominal_ct_to_camera   the nominal view (4x4)
    range             {"rotation_deg": [RX, RY, RZ], "translation_mm": [TX, TY, TZ]}
    input             {"image_size", "ct_downsample", "n_samples", "train_camera"}
    training          {"command", "seed", "steps", "images", "elapsed_s", "loss", ...}

A checkpoint is the same dict plus ``optimizer``, ``rng_state`` and ``step``.

Errors: :class:`ModelFileError` (a ``FileReadError``) for a missing, corrupt or
unknown-version file; :class:`ModelMismatchError` (an ``InputError``) for a model made
for another CT or another detector (``force=True`` turns that into a warning).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from SurgicalReg2D3DLib.errors import FileReadError, InputError

FORMAT = "FluoroRegLearnedModel"
FORMAT_VERSION = 1
KINDS = ("regressor", "ppc", "similarity")
REQUIRED = ("format", "format_version", "kind", "arch", "state_dict", "ct", "geometry",
            "nominal_ct_to_camera", "range", "input", "training")

_log = logging.getLogger(__name__)


class ModelFileError(FileReadError):
    """A model file that cannot be used: missing, corrupt, not a model, unknown version."""


class ModelMismatchError(InputError):
    """A model trained for another CT or another detector geometry."""


def ct_fingerprint(hu: np.ndarray, ijk_to_ras: np.ndarray) -> dict:
    """Fingerprint of a CT: SHA-256 of its voxels (float32, C order) and its geometry."""
    arr = np.ascontiguousarray(np.asarray(hu, dtype=np.float32))
    return {"voxels_sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
            "shape": [int(s) for s in arr.shape],
            "ijk_to_ras": np.asarray(ijk_to_ras, float).round(6).tolist()}


def save_model(data: dict, path) -> Path:
    """Write a model/checkpoint dict atomically (``models.save_torch_file``)."""
    from SurgicalReg2D3DLib.models import save_torch_file  # noqa: PLC0415

    return save_torch_file(data, path)


def load_model_file(path, map_location="cpu") -> dict:
    """Read and validate a model file; :class:`ModelFileError` naming what is wrong."""
    from SurgicalReg2D3DLib.models import load_torch_file  # noqa: PLC0415

    path = Path(path)
    where = f"model file {path}"
    data = load_torch_file(path, where, ModelFileError, map_location)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelFileError(f"{where}: not a FluoroReg learned model (no format "
                             f"'{FORMAT}')")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{where}: unknown format version {version!r} (this FluoroReg "
                             f"reads version {FORMAT_VERSION})")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ModelFileError(f"{where}: missing entries {missing}")
    if data["kind"] not in KINDS:
        raise ModelFileError(f"{where}: unknown model kind {data['kind']!r}; expected one of {KINDS}")
    return data


def check_model_matches(data: dict, hu: Optional[np.ndarray], ijk_to_ras, camera,
                        force: bool = False, name: str = "model") -> list:
    """Refuse a model made for another CT or detector (:class:`ModelMismatchError`).

    ``hu``/``ijk_to_ras``: the CT to register (``hu=None`` skips the voxel check);
    ``camera``: the X-ray camera of view 0. With ``force`` the differences are returned
    (and logged) instead of raised. Returns the list of differences (empty when none).
    """
    problems = []
    ct = data["ct"]
    if hu is not None:
        fp = ct_fingerprint(hu, ijk_to_ras)
        if fp["shape"] != list(ct["shape"]):
            problems.append(f"it was trained for a CT of shape {ct['shape']}, this CT has "
                            f"{fp['shape']}")
        elif fp["voxels_sha256"] != ct["voxels_sha256"]:
            problems.append("it was trained for another CT (voxel fingerprint differs)")
    if not np.allclose(np.asarray(ct["ijk_to_ras"], float), np.asarray(ijk_to_ras, float),
                       atol=1e-3):
        problems.append("it was trained for a CT with another position/spacing (ijk_to_ras "
                        "differs)")
    from SurgicalReg2D3DLib.cameras import XRayCamera  # noqa: PLC0415

    from ..geometry import camera_parameters  # noqa: PLC0415

    theirs = camera_parameters(XRayCamera.from_json(data["geometry"]))
    mine = camera_parameters(camera)
    for key, label in (("f", "source-to-detector mm"), ("sx", "pixel spacing x"),
                       ("sy", "pixel spacing y"), ("width", "width px"), ("height", "height px"),
                       ("cx", "principal point x"), ("cy", "principal point y")):
        a, b = getattr(theirs, key), getattr(mine, key)
        if not np.isclose(a, b, rtol=1e-4, atol=1e-4):
            problems.append(f"it was trained for another detector ({label} {a:g}, this one {b:g})")
    if problems and not force:
        raise ModelMismatchError(f"{name}: " + "; ".join(problems) +
                                 " (train one for this CT and detector, or pass --force)")
    for p in problems:
        _log.warning("%s: %s (used anyway: force)", name, p)
    return problems


def write_model_manifest(model_path, name: str, metrics: dict, description: str = "") -> Path:
    """The hub registry's manifest (``SurgicalReg2D3DLib.models``) next to a model file:
    command and seed from the model's own training record."""
    from SurgicalReg2D3DLib.models import write_manifest  # noqa: PLC0415

    data = load_model_file(model_path)
    tr = data["training"]
    rng = data["range"]
    task = (f"pose regressor: X-ray of the shipped CT -> ct_to_camera near the nominal AP view "
            f"(+-{rng['rotation_deg']} deg, +-{rng['translation_mm']} mm)")
    if data["kind"] == "ppc":
        task = ("learned PPC update: X-ray + DRR at the current pose -> flow and weights at the "
                "projected contour points -> weighted point-to-plane pose update (shipped CT, "
                f"poses in +-{rng['rotation_deg']} deg, +-{rng['translation_mm']} mm of the "
                "nominal AP view, starts 0-45 mm mTRE)")
    return write_manifest(
        model_path, name=name, module="FluoroReg", task=task,
        created_by_command=str(tr.get("command", "")), seed=tr.get("seed"),
        training_data=("synthetic: DRRs of Resources/SampleData/ct/thorax_aorta_ct_cropped.nii.gz "
                       f"(CT sha256 {data['ct']['voxels_sha256'][:12]}) rendered on the fly with "
                       "domain randomisation"),
        metrics=metrics, description=description)
