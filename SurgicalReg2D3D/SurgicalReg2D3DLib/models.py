"""Registry of the trained network weights bundled with the extension.

A bundled model is two files side by side in a ``weights/`` folder of one of the four
``*Lib`` packages (``SurgicalReg2D3DLib``, ``FluoroRegLib``, ``LiverLaparoRegLib``,
``USSliceRegLib``)::

    FluoroRegLib/weights/pose_regressor_v1.pt     the weights (a torch state dict)
    FluoroRegLib/weights/pose_regressor_v1.json   its manifest

The manifest is a JSON object with these keys (all required):

``name``                unique model name, e.g. ``"fluoro_pose_regressor_v1"``
``module``              the module that uses it: ``"FluoroReg"``, ``"LiverLaparoReg"``,
                        ``"USSliceReg"`` or ``"SurgicalReg2D3D"``
``task``                what it predicts, one line
``file``                the weights file name, in the same folder as the manifest
``sha256``              hex SHA-256 of the weights file (its fingerprint)
``size_bytes``          size of the weights file
``framework``           e.g. ``"pytorch"``
``created_by_command``  the command that trained it, so anyone can reproduce it
``seed``                the random seed of that command (integer or null)
``training_data``       what it was trained on (say "synthetic" when it was)
``metrics``             an object of validation metrics, e.g. ``{"mTRE_mm": 2.1}``
``description``         free text

Loading always checks the fingerprint first: a weights file that does not match its
manifest is refused with :class:`~SurgicalReg2D3DLib.errors.FileReadError`. Weights are
read with ``torch.load(..., weights_only=True)`` so a file can hold tensors, not code.

Besides the bundled folders, more folders can be searched: pass ``extra_dirs`` or set the
environment variable ``SURGREG_MODEL_PATH`` (folders separated by ``os.pathsep``).
:func:`write_manifest` writes a manifest for freshly trained weights.

This module is Qt-free; torch is imported only by :func:`load_state_dict`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from .errors import FileReadError, InputError

PathLike = Union[str, os.PathLike]

MODEL_PATH_ENV = "SURGREG_MODEL_PATH"
WEIGHTS_FOLDER = "weights"

# Module name -> its Qt-free package, whose ``weights/`` folder holds bundled models.
MODULE_PACKAGES: Dict[str, str] = {
    "SurgicalReg2D3D": "SurgicalReg2D3DLib",
    "FluoroReg": "FluoroRegLib",
    "LiverLaparoReg": "LiverLaparoRegLib",
    "USSliceReg": "USSliceRegLib",
}

MANIFEST_KEYS = ("name", "module", "task", "file", "sha256", "size_bytes", "framework",
                 "created_by_command", "seed", "training_data", "metrics", "description")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """One bundled model, as described by its manifest.

    ``manifest_path`` is the absolute path of the JSON file; :attr:`weights_path` is the
    weights file next to it.
    """

    name: str
    module: str
    task: str
    file: str
    sha256: str
    size_bytes: int
    framework: str
    created_by_command: str
    seed: Optional[int]
    training_data: str
    metrics: Dict[str, Any] = field(default_factory=dict)
    description: str = ""
    manifest_path: Path = Path()

    @property
    def weights_path(self) -> Path:
        return self.manifest_path.parent / self.file

    def to_dict(self) -> Dict[str, Any]:
        """The manifest content (without ``manifest_path``)."""
        return {key: getattr(self, key) for key in MANIFEST_KEYS}


def fingerprint(path: PathLike) -> str:
    """Hex SHA-256 of the file at ``path`` (read in 1 MiB chunks).

    Raises :class:`FileReadError` when the file is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileReadError(f"model weights file {path}: does not exist")
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise FileReadError(f"model weights file {path}: cannot be read ({exc})") from None
    return digest.hexdigest()


def _is_hex_sha256(value: Any) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


def read_manifest(path: PathLike) -> ModelInfo:
    """Parse and validate one manifest file (does not read the weights).

    Raises :class:`FileReadError` naming the manifest when it is missing, not JSON, lacks
    keys or has values of the wrong kind.
    """
    path = Path(path).resolve()
    where = f"model manifest {path}"
    if not path.is_file():
        raise FileReadError(f"{where}: does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileReadError(f"{where}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise FileReadError(f"{where}: expected a JSON object, got {type(data).__name__}")
    missing = [key for key in MANIFEST_KEYS if key not in data]
    if missing:
        raise FileReadError(f"{where}: missing keys {missing}")
    for key in ("name", "module", "task", "file", "framework", "created_by_command",
                "training_data", "description"):
        if not isinstance(data[key], str):
            raise FileReadError(f"{where}: '{key}' must be a string, got {data[key]!r}")
    if not data["name"].strip():
        raise FileReadError(f"{where}: 'name' is empty")
    if data["module"] not in MODULE_PACKAGES:
        raise FileReadError(f"{where}: 'module' must be one of {sorted(MODULE_PACKAGES)}, "
                            f"got {data['module']!r}")
    file_name = data["file"]
    if not file_name or Path(file_name).name != file_name or file_name in (".", ".."):
        raise FileReadError(f"{where}: 'file' must be a file name in the manifest's folder, "
                            f"got {file_name!r}")
    if not _is_hex_sha256(data["sha256"]):
        raise FileReadError(f"{where}: 'sha256' must be 64 lower-case hex digits, "
                            f"got {data['sha256']!r}")
    size = data["size_bytes"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise FileReadError(f"{where}: 'size_bytes' must be a non-negative integer, got {size!r}")
    seed = data["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise FileReadError(f"{where}: 'seed' must be an integer or null, got {seed!r}")
    if not isinstance(data["metrics"], dict):
        raise FileReadError(f"{where}: 'metrics' must be a JSON object, got {data['metrics']!r}")
    return ModelInfo(manifest_path=path, **{key: data[key] for key in MANIFEST_KEYS})


def bundled_weights_dirs() -> List[Path]:
    """The ``weights/`` folders of the four ``*Lib`` packages that exist.

    Packages are located with :func:`importlib.util.find_spec`, without importing them.
    """
    folders = []
    for package in MODULE_PACKAGES.values():
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            folder = Path(location) / WEIGHTS_FOLDER
            if folder.is_dir():
                folders.append(folder.resolve())
    return folders


def _env_dirs() -> List[Path]:
    value = os.environ.get(MODEL_PATH_ENV, "")
    folders = []
    for entry in value.split(os.pathsep):
        if not entry.strip():
            continue
        folder = Path(entry).expanduser()
        if folder.is_dir():
            folders.append(folder.resolve())
        else:
            _log.warning("%s: folder %s does not exist; ignored", MODEL_PATH_ENV, folder)
    return folders


def search_dirs(extra_dirs: Optional[Iterable[PathLike]] = None,
                include_bundled: bool = True) -> List[Path]:
    """The folders searched for manifests, without duplicates, in this order:
    ``extra_dirs``, then ``$SURGREG_MODEL_PATH``, then the bundled ``weights/`` folders.

    Raises :class:`FileReadError` when a folder in ``extra_dirs`` does not exist.
    """
    if isinstance(extra_dirs, (str, os.PathLike)):
        extra_dirs = [extra_dirs]
    folders: List[Path] = []
    for entry in extra_dirs or []:
        folder = Path(entry).expanduser()
        if not folder.is_dir():
            raise FileReadError(f"model search folder {folder}: does not exist")
        folders.append(folder.resolve())
    folders += _env_dirs()
    if include_bundled:
        folders += bundled_weights_dirs()
    unique: List[Path] = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return unique


def list_models(module: Optional[str] = None,
                extra_dirs: Optional[Iterable[PathLike]] = None,
                include_bundled: bool = True) -> List[ModelInfo]:
    """All models whose manifests are in the search folders, sorted by name.

    ``module`` keeps only the models of that module (``"FluoroReg"``...). Raises
    :class:`InputError` for an unknown module and when two manifests use the same name,
    and :class:`FileReadError` for a broken manifest.
    """
    if module is not None and module not in MODULE_PACKAGES:
        raise InputError(f"module: expected one of {sorted(MODULE_PACKAGES)}, got {module!r}")
    by_name: Dict[str, ModelInfo] = {}
    for folder in search_dirs(extra_dirs, include_bundled):
        for manifest in sorted(folder.glob("*.json")):
            info = read_manifest(manifest)
            other = by_name.get(info.name)
            if other is not None and other.manifest_path != info.manifest_path:
                raise InputError(f"model name: {info.name!r} is defined twice, in "
                                 f"{other.manifest_path} and {info.manifest_path}")
            by_name[info.name] = info
    models = sorted(by_name.values(), key=lambda m: m.name)
    if module is not None:
        models = [m for m in models if m.module == module]
    return models


def get_model(name: str, extra_dirs: Optional[Iterable[PathLike]] = None,
              include_bundled: bool = True) -> ModelInfo:
    """The model called ``name``; :class:`InputError` listing the known names if none."""
    if not isinstance(name, str) or not name:
        raise InputError(f"model name: expected a non-empty string, got {name!r}")
    models = list_models(extra_dirs=extra_dirs, include_bundled=include_bundled)
    for info in models:
        if info.name == name:
            return info
    raise InputError(f"model name: no model called {name!r}; available: "
                     f"{[m.name for m in models]}")


def verify(info: ModelInfo) -> Path:
    """Check that the weights file of ``info`` exists and matches its fingerprint.

    Returns the weights path. Raises :class:`FileReadError` naming the file, the expected
    and the actual SHA-256 on a mismatch.
    """
    path = info.weights_path
    if not path.is_file():
        raise FileReadError(f"model weights file {path}: does not exist "
                            f"(listed by {info.manifest_path})")
    actual = fingerprint(path)
    if actual != info.sha256:
        size = path.stat().st_size
        raise FileReadError(
            f"model weights file {path}: sha256 mismatch: manifest says {info.sha256} "
            f"({info.size_bytes} bytes), file has {actual} ({size} bytes)")
    return path


def load_state_dict(name: Union[str, ModelInfo], map_location=None,
                    extra_dirs: Optional[Iterable[PathLike]] = None,
                    include_bundled: bool = True) -> Dict[str, Any]:
    """The state dict of model ``name`` (or of a :class:`ModelInfo`), fingerprint checked.

    ``map_location`` is passed to ``torch.load`` (e.g. ``"cpu"`` or a ``torch.device``).
    Raises :class:`FileReadError` when the file is missing, does not match its manifest,
    cannot be read by ``torch.load(weights_only=True)`` or does not hold a dict.
    """
    info = name if isinstance(name, ModelInfo) else get_model(name, extra_dirs, include_bundled)
    path = verify(info)
    import torch  # noqa: PLC0415  (heavy; only when weights are really loaded)

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many kinds (UnpicklingError, RuntimeError...)
        raise FileReadError(f"model weights file {path}: cannot be loaded as torch weights "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                            ) from None
    if not isinstance(state, dict):
        raise FileReadError(f"model weights file {path}: expected a state dict, "
                            f"got {type(state).__name__}")
    return state


def write_manifest(weights_path: PathLike, *, name: str, module: str, task: str,
                   created_by_command: str, seed: Optional[int], training_data: str,
                   metrics: Dict[str, Any], description: str = "",
                   framework: str = "pytorch",
                   manifest_path: Optional[PathLike] = None) -> Path:
    """Write the manifest of a weights file (fingerprint and size computed here).

    The manifest goes next to the weights as ``<weights stem>.json`` unless
    ``manifest_path`` (in the same folder) is given. Returns the manifest path; the
    manifest is read back with :func:`read_manifest` to make sure it is valid.
    """
    weights_path = Path(weights_path).resolve()
    sha = fingerprint(weights_path)
    if manifest_path is None:
        manifest_path = weights_path.with_suffix(".json")
    manifest_path = Path(manifest_path).resolve()
    if manifest_path.parent != weights_path.parent:
        raise InputError(f"manifest path: must be in the weights folder "
                         f"{weights_path.parent}, got {manifest_path}")
    if manifest_path == weights_path:
        raise InputError(f"manifest path: would overwrite the weights file {weights_path}")
    data = {
        "name": name, "module": module, "task": task, "file": weights_path.name,
        "sha256": sha, "size_bytes": weights_path.stat().st_size, "framework": framework,
        "created_by_command": created_by_command, "seed": seed,
        "training_data": training_data, "metrics": dict(metrics), "description": description,
    }
    manifest_path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n",
                             encoding="utf-8")
    try:
        read_manifest(manifest_path)
    except FileReadError:
        manifest_path.unlink()
        raise
    return manifest_path


def save_torch_file(data: dict, path: PathLike) -> Path:
    """``torch.save`` a model or checkpoint dict atomically (temporary file in the same
    folder, then rename), so an interrupted write never leaves half a file. The learned
    methods of every module write their model files with it."""
    import torch  # noqa: PLC0415

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_torch_file(path: PathLike, where: str, error=FileReadError, map_location="cpu",
                    safe_types: Sequence[type] = ()):
    """``torch.load(path, weights_only=True)`` (tensors and plain values, never code) with
    named errors: ``"<where>: does not exist"`` and ``"<where>: corrupt or not a torch file
    (...)"``, raised as ``error`` (a :class:`FileReadError` subclass). ``safe_types``: extra
    classes allowed in the file (``torch.serialization.safe_globals`` where torch has it).
    The learned methods' model-file readers check the format of what this returns."""
    import torch  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise error(f"{where}: does not exist")
    try:
        safe = getattr(torch.serialization, "safe_globals", None)
        if safe is not None and safe_types:
            with safe(list(safe_types)):
                return torch.load(path, map_location=map_location, weights_only=True)
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001  (pickle, zip and torch errors alike)
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise error(f"{where}: corrupt or not a torch file ({type(exc).__name__}: "
                    f"{first[:120]})") from None


def models_table(models: Sequence[ModelInfo]) -> List[List[str]]:
    """Rows ``[name, module, task, size, sha256 prefix, training data]`` for a GUI table."""
    rows = []
    for m in models:
        rows.append([m.name, m.module, m.task, f"{m.size_bytes / 1024:.1f} KiB",
                     m.sha256[:12], m.training_data])
    return rows
