"""Shared checks of the camera models: numbers, points, depths, JSON and text files.

Where it sits in the flow: the first layer of :mod:`.cameras` (the public module that
re-exports the camera models). Every camera's parameters are validated here
(:func:`_to_float`, :func:`_positive`, :func:`_pair`, ...), points and depths given to a
projection become checked tensors (:func:`_as_points`, :func:`_as_depth`), files and
JSON become dicts (:func:`_read_json`), and image pyramids map pixels and sizes
(:func:`_pyramid_pixel`, :func:`_scaled_size`). :mod:`.cameras_pinhole` and
:mod:`.cameras_xray` build on it. Conventions (frames, pixel centres, pyramids): see
:mod:`.cameras`.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any, Mapping, Sequence, Tuple, Union

import numpy as np
import torch

from .errors import FileReadError, GeometryError, InputError

PathLike = Union[str, Path]


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    """Format a user value for an error message: ints as ints, floats as Python floats."""
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_fmt(v) for v in list(np.asarray(value, dtype=object).ravel()))\
            + "]"
    return repr(value)


def _to_float(value: Any, what: str, owner: str) -> float:
    """Convert a number (or a numeric string, as in P2ILF files) to float, or raise."""
    if isinstance(value, bool) or value is None:
        raise GeometryError(f"{owner}: {what} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise GeometryError(f"{owner}: {what} must be a number, got {value!r}") from None
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.detach().cpu().reshape(()).item()
    if not isinstance(value, numbers.Real):
        raise GeometryError(f"{owner}: {what} must be a number, got {value!r}")
    return float(value)


def _positive(value: Any, what: str, owner: str) -> float:
    number = _to_float(value, what, owner)
    if not math.isfinite(number):
        raise GeometryError(f"{owner}: {what} must be finite, got {_fmt(number)}")
    if number <= 0:
        raise GeometryError(f"{owner}: {what} must be positive, got {_fmt(value)}")
    return number


def _as_points(points: Any, name: str, last: int) -> torch.Tensor:
    """Return ``points`` as a float tensor (..., N, last), checking its shape and values.

    The input is never modified: numpy arrays are wrapped (``torch.as_tensor``) and only
    read; tensors keep their device, dtype and autograd graph.
    """
    if isinstance(points, torch.Tensor):
        tensor = points
    else:
        try:
            tensor = torch.as_tensor(np.asarray(points))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"{name}: expected an array of numbers, got "
                             f"{type(points).__name__} ({exc})") from None
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise InputError(f"{name}: expected real numbers, got dtype {tensor.dtype}")
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    if tensor.dim() < 2 or tensor.shape[-1] != last:
        raise InputError(f"{name}: expected shape (..., N, {last}), got "
                         f"{tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise InputError(f"{name}: contains NaN or infinite values")
    return tensor


def _as_depth(depth: Any, like: torch.Tensor, name: str = "depth") -> torch.Tensor:
    """Depth (z, mm) broadcastable to ``like[..., 0]``; returned as a tensor like ``like``."""
    if isinstance(depth, torch.Tensor):
        tensor = depth.to(device=like.device, dtype=like.dtype)
    else:
        try:
            tensor = torch.as_tensor(np.asarray(depth, dtype=np.float64),
                                     dtype=like.dtype, device=like.device)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: expected numbers, got {type(depth).__name__} "
                             f"({exc})") from None
    try:
        torch.broadcast_shapes(tensor.shape, like.shape[:-1])
    except RuntimeError:
        raise InputError(f"{name}: shape {tuple(tensor.shape)} does not broadcast to the "
                         f"pixels' shape {tuple(like.shape[:-1])}") from None
    if not bool(torch.isfinite(tensor).all()):
        raise InputError(f"{name}: contains NaN or infinite values")
    if bool((tensor <= 0).any()):
        raise InputError(f"{name}: must be positive (z in front of the camera)")
    return tensor


def _read_text(path: PathLike, what: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise FileReadError(f"{what}: cannot read '{path}': {exc}") from None


def _read_json(source: Union[PathLike, Mapping[str, Any]], what: str) -> dict:
    """A dict from a mapping, a JSON text (starting with '{') or a JSON file path."""
    if isinstance(source, Mapping):
        return dict(source)
    if isinstance(source, str) and source.lstrip().startswith("{"):
        text, where = source, "JSON text"
    elif isinstance(source, (str, Path)):
        text, where = _read_text(source, what), f"'{source}'"
    else:
        raise InputError(f"{what}: expected a path, a JSON text or a dict, got "
                         f"{type(source).__name__}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileReadError(f"{what}: {where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise FileReadError(f"{what}: {where} must hold a JSON object, got "
                            f"{type(data).__name__}")
    return data


def _check_keys(data: Mapping[str, Any], required: Sequence[str],
                optional: Sequence[str], owner: str) -> None:
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise GeometryError(f"{owner}: unknown keys {unknown}; allowed keys are "
                            f"{list(required) + list(optional)}")
    missing = [key for key in required if key not in data]
    if missing:
        raise GeometryError(f"{owner}: missing keys {missing}")


def _pair(value: Any, what: str, owner: str) -> Tuple[Any, Any]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise GeometryError(f"{owner}: {what} must be a pair of numbers, got {value!r}")
    items = list(np.asarray(value, dtype=object).ravel()) \
        if isinstance(value, np.ndarray) else list(value)
    if len(items) != 2:
        raise GeometryError(f"{owner}: {what} must be a pair of numbers, got {_fmt(items)}")
    return items[0], items[1]


def _pyramid_pixel(coordinate: float, ratio: float) -> float:
    """Map a pixel coordinate (integer = pixel centre) to an image resampled by ``ratio``."""
    return (coordinate + 0.5) * ratio - 0.5


def _scaled_size(size: int, factor: float, owner: str) -> int:
    new = int(math.floor(size / factor + 1e-9))
    if new < 1:
        raise GeometryError(f"{owner}: scale factor {_fmt(factor)} leaves no pixel of an "
                            f"image {size} pixels wide")
    return new


def _check_factor(factor: Any, owner: str) -> float:
    return _positive(factor, "scale factor", owner)
