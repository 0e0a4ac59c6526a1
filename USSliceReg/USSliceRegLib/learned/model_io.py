"""The DeepRS2V model file: weights plus everything needed to trust and reproduce them.

A model file is ``torch.save`` of a dict (read back with ``weights_only=True``: tensors
and plain values, no code):

``format``              ``"USSliceReg-DeepRS2V"``
``format_version``      :data:`FORMAT_VERSION` (a newer file is refused)
``state_dict``          the network's weights
``network``             its constructor arguments (:meth:`DeepRS2VNet.config`)
``grid``                the sampling grids (:class:`~.geometry.GridSpec`)
``volume_fingerprint``  :func:`~.geometry.volume_fingerprint` of the training volume
``volume_shape``        ``[K, J, I]``
``frame_shape``         ``[H, W]`` of the training frames (or ``None``)
``fan_centre_px``       the fan centre used for the fan frame
``command``             the command line that trained it
``seed``                its seed
``range``               ``{"max_mm", "max_deg"}``: the start perturbations it was trained on
``loss``                the loss weights and LNCC kernel
``training``            steps, minutes, samples, validation errors before/after, data

A checkpoint (``--resume``) is a model file plus ``optimizer`` state, ``step``, elapsed
``minutes`` and the data generator's state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from SurgicalReg2D3DLib.errors import FileReadError, InputError

FORMAT = "USSliceReg-DeepRS2V"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "state_dict", "network", "grid",
            "volume_fingerprint", "volume_shape", "command", "seed", "range")


def save_model(path, payload: dict) -> Path:
    """Write ``payload`` (the keys above) atomically (temporary file, then rename)."""
    from SurgicalReg2D3DLib.models import save_torch_file  # noqa: PLC0415

    data = dict(payload)
    data["format"], data["format_version"] = FORMAT, FORMAT_VERSION
    return save_torch_file(data, path)


def load_model(path, map_location="cpu") -> dict:
    """Read and check a model (or checkpoint) file; :class:`FileReadError` naming the file
    when it is missing, corrupt, not a DeepRS2V model or of a newer format."""
    import torch  # noqa: PLC0415

    from SurgicalReg2D3DLib.models import load_torch_file  # noqa: PLC0415

    path = Path(path)
    where = f"model file {path}"
    # torch's version string type (a str subclass) is allowed too: early files of this
    # format recorded it as such.
    data = load_torch_file(path, where, FileReadError, map_location,
                           safe_types=(torch.torch_version.TorchVersion,))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FileReadError(f"{where}: not a DeepRS2V model (format "
                            f"{data.get('format') if isinstance(data, dict) else type(data).__name__!r})")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FileReadError(f"{where}: format version {version!r} is newer than this code "
                            f"reads ({FORMAT_VERSION})")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise FileReadError(f"{where}: missing {missing}")
    return data


def check_volume(model: dict, fingerprint, force: bool = False,
                 name: str = "model") -> Optional[str]:
    """:class:`InputError` when ``model`` was trained for another volume (unless
    ``force``, then a warning text is returned). ``fingerprint``: one, or a list of the
    accepted ones (:func:`~.geometry.volume_fingerprints`)."""
    accepted = [fingerprint] if isinstance(fingerprint, str) else list(fingerprint)
    if model["volume_fingerprint"] in accepted:
        return None
    fingerprint = accepted[0]
    msg = (f"{name}: trained for another volume (fingerprint "
           f"{str(model['volume_fingerprint'])[:12]}, shape {list(model['volume_shape'])}; "
           f"this volume {fingerprint[:12]})")
    if not force:
        raise InputError(msg + "; train one for this volume (surgreg us train) or pass "
                               "--force to use it anyway")
    return msg + "; used anyway (--force)"


def build_network(model: dict, device=None):
    """The network of a loaded model, weights in, in eval mode."""
    from .network import DeepRS2VNet  # noqa: PLC0415

    try:
        net = DeepRS2VNet(**model["network"])
        net.load_state_dict(model["state_dict"])
    except (TypeError, RuntimeError, ValueError, KeyError) as exc:
        raise FileReadError(f"model file: weights do not fit the network "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    return net.to(device or "cpu").eval()


def find_bundled_model(fingerprint) -> Optional[Path]:
    """The bundled USSliceReg model file (``USSliceRegLib/weights/*.pt`` listed in the hub's
    registry) trained for the volume with this fingerprint, or ``None``."""
    from SurgicalReg2D3DLib.models import list_models, verify  # noqa: PLC0415

    try:
        models = list_models(module="USSliceReg")
    except (InputError, FileReadError):
        return None
    accepted = [fingerprint] if isinstance(fingerprint, str) else list(fingerprint)
    for info in models:
        if info.metrics.get("volume_fingerprint") in accepted:
            return verify(info)
    return None


def write_bundle_manifest(model_path, name: str, payload: dict) -> Path:
    """The hub registry's manifest (:func:`SurgicalReg2D3DLib.models.write_manifest`) of a
    model file; ``metrics`` carry the volume fingerprint (how the ``deep`` method finds
    the bundled model of a volume), the training range and the validation errors."""
    from SurgicalReg2D3DLib.models import write_manifest  # noqa: PLC0415

    tr = payload.get("training", {})
    val = tr.get("validation") or [{}]
    metrics = {"volume_fingerprint": payload["volume_fingerprint"],
               "volume_shape": list(payload["volume_shape"]),
               "range_max_mm": payload["range"]["max_mm"],
               "range_max_deg": payload["range"]["max_deg"],
               "training_steps": tr.get("steps"), "training_minutes": tr.get("minutes"),
               "validation_start_translation_mm": val[0].get("start_translation_mm"),
               "validation_start_rotation_deg": val[0].get("start_rotation_deg"),
               "validation_translation_mm": val[-1].get("translation_mm"),
               "validation_rotation_deg": val[-1].get("rotation_deg"),
               "validation_note": "mean pose errors on a fixed set of start perturbations "
                                  "drawn with another seed, on the training distribution "
                                  "(slices of the training volume and the training frames); "
                                  "not a benchmark of held-out frames"}
    return write_manifest(
        model_path, name=name, module="USSliceReg",
        task="rigid correction of a 2D US frame's pose against one 3D US volume (DeepRS2V)",
        created_by_command=str(payload.get("command", "")), seed=payload.get("seed"),
        training_data=str(tr.get("data", "")), metrics=metrics,
        description=f"USSliceReg DeepRS2V model file (format {FORMAT} v{FORMAT_VERSION}); "
                    "used by --method deep / deep+lncc for the volume with this "
                    "fingerprint")
