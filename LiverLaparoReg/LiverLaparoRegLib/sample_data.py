"""Where LiverLaparoReg's shipped data lie (``Resources/SampleData`` of the extension) and
the cases built from them: the real P2ILF patient (mesh, camera, contours), the meshes
of the synthetic benchmark and the mesh held out from every tuning. Used by the demo,
the benchmarks, the learned methods' training and evaluation and the tests; it imports
no registration code.
"""

from __future__ import annotations

from pathlib import Path
from typing import List


def sample_data_dir() -> Path:
    """``Resources/SampleData`` (core ``paths.sample_data_dir``)."""
    from SurgicalReg2D3DLib.paths import sample_data_dir as _dir  # noqa: PLC0415

    return Path(_dir())


def default_meshes() -> List[Path]:
    d = sample_data_dir()
    return [d / "p2ilf" / "evaluation_GT" / "3d-liver-model.obj",
            d / "liver_sksurgery" / "liver" / "liver_sub.ply"]


def held_out_mesh() -> Path:
    """The mesh held out from every tuning (see ``docs/laparo.md``)."""
    return sample_data_dir() / "liver_sksurgery" / "models" / "liver.vtk"


def real_p2ilf_case(distortion: str = "auto"):
    """The shipped real P2ILF case: (mesh, camera, 2D contours, 3D contours); the camera
    as :func:`.camera.load_camera` gives it with ``distortion`` (default ``"auto"``:
    ``K`` only, the file's distortion folds over inside the frame)."""
    from .camera import load_camera  # noqa: PLC0415
    from .mesh import load_mesh  # noqa: PLC0415
    from .p2ilf import read_contours_2d, read_contours_3d  # noqa: PLC0415

    d = sample_data_dir() / "p2ilf"
    mesh = load_mesh(d / "evaluation_GT" / "3d-liver-model.obj")
    cam = load_camera(d / "cameraparams" / "acquisition-camera-metadata.json",
                      distortion=distortion)
    c2 = read_contours_2d(d / "evaluation_GT" / "patient2_1_2D-contours.json")
    c3 = read_contours_3d(d / "evaluation_GT" / "patient2_1_3D-contours.json", len(mesh.vertices))
    return mesh, cam, c2, c3
