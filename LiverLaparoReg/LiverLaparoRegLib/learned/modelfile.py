"""Model files of the learned registration: kind, format version, training record.

A model file is ``torch.save`` of a plain dict (read back with ``weights_only=True``, so
it holds tensors and plain values, never code)::

    {"format": "surgreg-laparo-learned", "version": 1, "kind": "stage1",
     "config": {...network constructor arguments...},
     "state_dict": {...},
     "training": {"data": "...", "command": "...", "seed": 0, "steps": ..., ...}}

:func:`load_model` refuses (``FileReadError``, message starting with ``model``) a file
that is missing, not a torch file (corrupt), of another format, of another version or of
another kind. The bundled model is found through the hub registry
(:mod:`SurgicalReg2D3DLib.models`, name :data:`BUNDLED_STAGE1`), fingerprint checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

from SurgicalReg2D3DLib.errors import FileReadError

FORMAT = "surgreg-laparo-learned"
VERSION = 1
KINDS = ("stage1", "landmarks")
BUNDLED_STAGE1 = "laparo_learned_stage1_v1"
#: the bundled landmark segmentation model (kind "landmarks"), used by --method learned
BUNDLED_LANDMARKS = "laparo_learned_landmarks_v5"


def save_model(path, model, kind: str, training: dict) -> Path:
    """Write ``model`` (a :class:`.net.StageOne`) with its record to ``path``."""
    from SurgicalReg2D3DLib.models import save_torch_file  # noqa: PLC0415

    net = getattr(model, "module", model)          # unwrap DDP
    data = {"format": FORMAT, "version": VERSION, "kind": kind, "config": dict(net.config),
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "training": dict(training)}
    return save_torch_file(data, path)


def read_model_file(path, kind: str = "stage1") -> dict:
    """The checked content of a model file (see the module docstring)."""
    from SurgicalReg2D3DLib.models import load_torch_file  # noqa: PLC0415

    path = Path(path)
    data = load_torch_file(path, f"model: {path}")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FileReadError(f"model: {path} is not a LiverLaparoReg learned model "
                            f"(format {data.get('format') if isinstance(data, dict) else None!r}, "
                            f"expected {FORMAT!r})")
    if data.get("version") != VERSION:
        raise FileReadError(f"model: {path} has format version {data.get('version')!r}; this "
                            f"code reads version {VERSION} (retrain it with `surgreg laparo "
                            f"train`)")
    if data.get("kind") != kind:
        raise FileReadError(f"model: {path} is a {data.get('kind')!r} model, expected {kind!r}")
    for key in ("config", "state_dict", "training"):
        if not isinstance(data.get(key), dict):
            raise FileReadError(f"model: {path} lacks its {key!r} section")
    return data


def model_kind(path) -> str:
    """The kind recorded in a model file (``"stage1"`` or ``"landmarks"``); the same
    checks as :func:`read_model_file` except the kind."""
    from SurgicalReg2D3DLib.models import load_torch_file  # noqa: PLC0415

    data = load_torch_file(Path(path), f"model: {path}")
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in KINDS:
        # let read_model_file name the problem (format, version or kind)
        read_model_file(path, "stage1")
    return str(kind)


def load_model(path=None, kind: str = "stage1", device=None) -> Tuple[object, dict]:
    """``(network in eval mode, training record)``; ``path=None`` -> the bundled model
    of that kind."""
    from .landmarks_net import LandmarkNet  # noqa: PLC0415
    from .net import StageOne  # noqa: PLC0415

    if path is None:
        path = bundled_model_path(BUNDLED_LANDMARKS if kind == "landmarks" else None)
    data = read_model_file(path, kind)
    try:
        net = (LandmarkNet if kind == "landmarks" else StageOne)(**data["config"])
        net.load_state_dict(data["state_dict"])
    except (TypeError, RuntimeError, KeyError) as exc:
        raise FileReadError(f"model: {path} does not fit this network "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    net.eval()
    if device is not None:
        net.to(device)
    return net, dict(data["training"], path=str(path))


def bundled_model_path(name: Optional[str] = None) -> Path:
    """The bundled Stage I model file (fingerprint checked by the hub registry)."""
    from SurgicalReg2D3DLib.models import get_model, verify  # noqa: PLC0415

    return verify(get_model(name or BUNDLED_STAGE1))


def bundle_model(src, metrics: dict, name: str = BUNDLED_STAGE1, dest_dir=None,
                 kind: str = "stage1") -> Path:
    """Copy a trained model file into ``LiverLaparoRegLib/weights/`` as ``<name>.pt`` and
    write its hub manifest (command, seed and training data from the file's record).
    Returns the manifest path."""
    import shutil  # noqa: PLC0415

    from SurgicalReg2D3DLib.models import write_manifest  # noqa: PLC0415

    data = read_model_file(src, kind)
    rec = data["training"]
    dest_dir = Path(dest_dir) if dest_dir else Path(__file__).resolve().parents[1] / "weights"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dst = dest_dir / f"{name}.pt"
    shutil.copyfile(src, dst)
    return write_manifest(
        dst, name=name, module="LiverLaparoReg",
        task=("Stage I 2D-3D correspondences (pixel/point descriptors, overlap and landmark "
              "classes) between a laparoscopic frame + liver mask and a liver mesh"
              if kind == "stage1" else
              "Stage I landmark segmentation (per-pixel ridge / falciform ligament / "
              "silhouette probabilities"
              + (") and camera-frame surface normal map" if data["config"].get("normals")
                 else ")")
              + (" with its per-pixel uncertainty" if data["config"].get("normal_scale")
                 else "")
              + " of a laparoscopic frame + liver mask; the 3D side (mesh ridges, occluding "
              "contour" + (", mesh normals" if data["config"].get("normals") else "")
              + ") is geometric"),
        created_by_command=str(rec.get("command", "")), seed=rec.get("seed"),
        training_data=str(rec.get("data", "")), metrics=dict(metrics),
        description=(f"LiverLaparoRegLib.learned."
                     f"{'net.StageOne' if kind == 'stage1' else 'landmarks_net.LandmarkNet'} "
                     f"{data['config']}; "
                     f"{rec.get('steps')} steps, batch {rec.get('batch')}, "
                     f"{rec.get('wall_s', 0) / 60:.1f} min wall on a shared CPU "
                     f"(load average {rec.get('load_average')}); file format "
                     f"{FORMAT} v{VERSION}"))
