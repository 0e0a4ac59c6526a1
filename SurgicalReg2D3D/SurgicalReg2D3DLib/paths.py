"""Where the extension's files are: the bundled sample data and the module folders.

The sample data lives once, at the repository root (``Resources/SampleData``), and is shared
by all four modules. It is found in three places, tried in this order:

1. the folder named by the environment variable ``SURGREG_SAMPLE_DATA`` (if set);
2. the built or installed extension: Slicer's build (``slicerMacroBuildScriptedModule``)
   and its install put every scripted module of this extension into one folder
   (``<build or install>/lib/Slicer-X.Y/qt-scripted-modules``) next to
   ``SurgicalReg2D3DLib``, and the hub's CMake copies the data to
   ``<that folder>/Resources/SampleData`` in both trees;
3. the source tree: ``<repository>/Resources/SampleData``, i.e. ``../Resources/SampleData``
   relative to the hub module folder ``SurgicalReg2D3D/``.

:data:`SAMPLE_DATASETS` lists the data sets the hub registers with Slicer's SampleData
module (category ``"SurgicalReg2D3D"``); :func:`sample_data_sources` gives them with absolute
paths, ``file://`` URIs and SHA-256 checksums (SampleData copies a file into its cache
again when the cached copy's checksum differs). This module is Qt-free and imports
nothing heavy. The self-tests of all modules find their data through
:func:`sample_data_path`, in the source tree and in built / installed trees alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from .errors import FileReadError, InputError

SAMPLE_DATA_ENV = "SURGREG_SAMPLE_DATA"
SAMPLE_DATA_CATEGORY = "SurgicalReg2D3D"


def lib_dir() -> Path:
    """The ``SurgicalReg2D3DLib`` package folder."""
    return Path(__file__).resolve().parent


def hub_module_dir() -> Path:
    """The folder that holds ``SurgicalReg2D3D.py`` (source tree or installed tree)."""
    return lib_dir().parent


def sample_data_candidates() -> List[Path]:
    """The folders :func:`sample_data_dir` looks at, in order."""
    candidates = []
    env = os.environ.get(SAMPLE_DATA_ENV)
    if env:
        candidates.append(Path(env).expanduser())
    module_dir = hub_module_dir()
    candidates.append(module_dir / "Resources" / "SampleData")  # installed extension
    candidates.append(module_dir.parent / "Resources" / "SampleData")  # source tree
    return candidates


def sample_data_dir() -> Path:
    """The folder of the bundled sample data.

    Raises :class:`FileReadError` listing the places it looked when there is none.
    """
    candidates = sample_data_candidates()
    for folder in candidates:
        if folder.is_dir():
            return folder.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise FileReadError(f"sample data folder: not found; looked in {looked}")


def sample_data_path(relative: str) -> Path:
    """Absolute path of a file inside the sample data folder, e.g. ``"ct/x.nii.gz"``.

    Raises :class:`InputError` for absolute or ``..`` paths and :class:`FileReadError` when
    the file does not exist.
    """
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise InputError(f"sample data path: expected a relative path inside the sample data "
                         f"folder, got {relative!r}")
    path = sample_data_dir() / rel
    if not path.exists():
        raise FileReadError(f"sample data path: {path} does not exist")
    return path


@dataclass(frozen=True)
class SampleDataset:
    """One entry of Slicer's SampleData module (one or more files loaded together).

    ``files`` are paths relative to the sample data folder; ``node_names`` and
    ``file_types`` (Slicer IO file types such as ``"VolumeFile"``, ``"ModelFile"``) and
    ``sha256`` (hex digests of the files, checked by the tests) have the same length.
    ``licence`` is the licence file, relative to the data folder.
    """

    sample_name: str
    description: str
    files: Tuple[str, ...]
    node_names: Tuple[str, ...]
    file_types: Tuple[str, ...]
    licence: str
    thumbnail: str  # icon file name in the hub's Resources/Icons (make_icons.py)
    sha256: Tuple[str, ...] = ()


SAMPLE_DATASETS: Tuple[SampleDataset, ...] = (
    SampleDataset(
        sample_name="SurgRegThoraxCT",
        description="Thorax CT, cropped around the aorta (TotalSegmentator, Apache-2.0)",
        files=("ct/thorax_aorta_ct_cropped.nii.gz",),
        node_names=("SurgRegThoraxCT",),
        file_types=("VolumeFile",),
        licence="ct/LICENSE-TotalSegmentator",
        thumbnail="SurgRegThoraxCT.png",
        sha256=("f776ecfa1326e7e21a8c30e5530f517c16f16a59a68fc06e8119cefc7c3b87a0",),
    ),
    SampleDataset(
        sample_name="SurgRegLiverModel",
        description="Liver surface model and a laparoscopic video frame "
                    "(scikit-surgery, BSD-3-Clause)",
        files=("liver_sksurgery/models/liver.vtk", "liver_sksurgery/images/image0232.jpg"),
        node_names=("SurgRegLiverModel", "SurgRegLaparoscopicFrame"),
        file_types=("ModelFile", "VolumeFile"),
        licence="liver_sksurgery/LICENSE",
        thumbnail="SurgRegLiverModel.png",
        sha256=("05a0191ba9b60b37299e789301757261bd0f2f0e686bfe37e798f62316efe450",
                "ff894e0329c9a0a574d5ea5d0fefb0b8e802882805571a0c94ad68564e7e81bd"),
    ),
    SampleDataset(
        sample_name="SurgRegSpineUSVolume",
        description="Reconstructed 3D ultrasound volume of a spine phantom "
                    "(PLUS toolkit, BSD-3-Clause)",
        files=("ultrasound/SpinePhantomFreehandReconstructed.mha",),
        node_names=("SurgRegSpineUSVolume",),
        file_types=("VolumeFile",),
        licence="ultrasound/LICENSE",
        thumbnail="SurgRegSpineUSVolume.png",
        sha256=("7cec583252e961d2d3847828f3a6ad80001ca3808f7f23cc20a8b2f68d26bf32",),
    ),
)


def sample_data_sources() -> List[Dict[str, object]]:
    """The bundled data sets as keyword arguments for Slicer's SampleData registration.

    Each dict has the keys of ``SampleDataLogic.registerCustomSampleDataSource``
    (``category``, ``sampleName``, ``uris``, ``fileNames``, ``nodeNames``,
    ``loadFileTypes``, ``checksums`` as ``"SHA256:<hex>"``) plus ``paths`` (absolute paths), ``description`` and ``licence``
    (absolute path), and ``thumbnailFileName`` (icon file name; the caller makes it
    absolute). ``uris`` are ``file://`` URIs of the bundled files, so nothing is downloaded.
    ``fileNames`` are prefixed with ``SurgicalReg2D3D_`` because SampleData copies every
    file into one shared cache folder.
    """
    sources = []
    for dataset in SAMPLE_DATASETS:
        paths = [sample_data_path(f) for f in dataset.files]
        sources.append({
            "category": SAMPLE_DATA_CATEGORY,
            "sampleName": dataset.sample_name,
            "description": dataset.description,
            "paths": [str(p) for p in paths],
            "uris": [p.as_uri() for p in paths],
            "fileNames": [f"{SAMPLE_DATA_CATEGORY}_{p.name}" for p in paths],
            "nodeNames": list(dataset.node_names),
            "loadFileTypes": list(dataset.file_types),
            "checksums": [f"SHA256:{h}" for h in dataset.sha256],
            "licence": str(sample_data_path(dataset.licence)),
            "thumbnailFileName": dataset.thumbnail,
        })
    return sources


def find_sample_dataset(sample_name: str) -> SampleDataset:
    """The :class:`SampleDataset` called ``sample_name`` (InputError if unknown)."""
    for dataset in SAMPLE_DATASETS:
        if dataset.sample_name == sample_name:
            return dataset
    known = [d.sample_name for d in SAMPLE_DATASETS]
    raise InputError(f"sample name: unknown sample data set {sample_name!r}; known: {known}")

