"""Entry points of USSliceReg shared by the Slicer module, the console and the CLI.

File level (PLUS files, the reference frame of :mod:`plus_io`):
    ``load_inputs`` -> ``register_tracked`` -> ``SequenceRegistration.to_json``.
Node level (a Slicer scene, everything in RAS):
    ``register_nodes`` (a browsable frame sequence) and ``LiveNodeRegistration`` (one frame
    node at a time, updating one correction transform node).

Correction = ``tracked_reference_to_reference`` (``_ras`` in the node-level API): the rigid
4x4 that moves the tracked frame onto the volume, ``image_to_X = correction @
tracked_image_to_X``. Inputs (files, nodes, arrays) are never modified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from SurgicalReg2D3DLib.errors import FileReadError, InputError
from SurgicalReg2D3DLib.progress import report, sub_progress
from SurgicalReg2D3DLib.quality import Quality, warning_line

from .config import FrameResult, RegistrationConfig
from .methods import METHODS, make_method
from .plus_io import (ReferenceChain, ReferenceVolume, TrackedSequence,
                      image_to_reference_chain, read_calibration, read_reference_volume,
                      read_sequence)
from .pose_utils import pose_errors
from .slicing import fan_mask
from .temporal import LiveRegistration, register_sequence


@dataclass
class SequenceRegistration:
    """Results of a sweep: ``indices[n]`` is the sequence frame number of ``results[n]``."""

    method: str
    temporal: bool
    indices: List[int]
    results: List[FrameResult]
    skipped: List[Tuple[int, str]] = field(default_factory=list)
    fan_centre_px: Optional[np.ndarray] = None
    #: ``qualities[n]``: the trust value of ``results[n]`` (:mod:`quality`; empty when
    #: the checks were off); ``skipped_quality``: that of each skipped frame.
    qualities: List[Quality] = field(default_factory=list)
    skipped_quality: Dict[int, Quality] = field(default_factory=dict)

    def frame_qualities(self) -> List[Optional[Quality]]:
        """The trust value of each registered frame: the checked one (``qualities``) when
        the checks ran, but a frame that ended worse than it started is ``failed`` with
        that reason in any case (``temporal.frame_quality``); None when nothing is known."""
        from .temporal import frame_quality  # noqa: PLC0415

        out = []
        for n, r in enumerate(self.results):
            checked = self.qualities[n] if n < len(self.qualities) else None
            plain = frame_quality(r)
            if plain is not None and plain.verdict == "failed" and (
                    checked is None or checked.verdict != "failed"):
                out.append(plain)
            else:
                out.append(checked if checked is not None else plain)
        return out

    def failed_indices(self) -> List[int]:
        """Frame numbers whose registration is judged ``failed``."""
        return [int(i) for i, q in zip(self.indices, self.frame_qualities())
                if q is not None and q.verdict == "failed"]

    def warnings(self) -> List[str]:
        """One line per ``doubtful`` / ``failed`` / skipped frame (the CLI prints them)."""
        out = []
        for i, q in zip(self.indices, self.frame_qualities()):
            line = warning_line(f"frame {i}", q) if q is not None else None
            if line:
                out.append(line)
        for i, why in self.skipped:
            q = self.skipped_quality.get(int(i))
            out.append(warning_line(f"frame {i}", q) if q is not None
                       else f"warning: frame {i}: skipped ({why})")
        return out

    def to_json(self) -> dict:
        """The ``OUT.json`` of ``surgreg us register`` (matrices as row lists)."""
        qualities = self.frame_qualities()
        frames = []
        for n, (i, r) in enumerate(zip(self.indices, self.results)):
            frames.append({
                "index": int(i),
                "image_to_reference": np.asarray(r.image_to_reference).tolist(),
                "start_image_to_reference": np.asarray(r.start_image_to_reference).tolist(),
                "correction": np.asarray(r.correction).tolist(),
                "time_s": float(r.seconds),
                "similarity": float(r.lncc),
                "similarity_start": float(r.lncc_start),
            })
            if qualities[n] is not None:
                frames[-1]["quality"] = qualities[n].to_dict()
        skipped = []
        for i, why in self.skipped:
            skipped.append({"index": int(i), "reason": why})
            if int(i) in self.skipped_quality:
                skipped[-1]["quality"] = self.skipped_quality[int(i)].to_dict()
        return {"method": self.method, "temporal": self.temporal, "frames": frames,
                "skipped": skipped,
                "similarity_metric": "masked LNCC (window 7 px at 1/8 resolution)"}

    def errors(self, truth: Dict[int, np.ndarray]) -> dict:
        """Rotation (deg) / translation (mm, at the fan centre) errors vs ground truth
        ``{frame index: image_to_reference}``; frames without a truth are left out."""
        rot, tra = [], []
        for i, r in zip(self.indices, self.results):
            if i in truth:
                a, t = pose_errors(r.image_to_reference, truth[i], self.fan_centre_px)
                rot.append(a)
                tra.append(t)
        if not rot:
            return {}
        return {"rotation_deg": rot, "translation_mm": tra,
                "mean_rotation_deg": float(np.mean(rot)),
                "mean_translation_mm": float(np.mean(tra)),
                "median_rotation_deg": float(np.median(rot)),
                "median_translation_mm": float(np.median(tra))}


def load_inputs(volume_path, sequence_path, calibration_path=None
                ) -> Tuple[ReferenceVolume, TrackedSequence, ReferenceChain]:
    """Read the volume, the tracked sweep and the calibration; build the chain.

    Without ``calibration_path`` the sequence itself must carry an ``ImageToProbe`` (or
    ``ImageToReference``) transform, else :class:`InputError` asks for the XML.
    """
    volume = read_reference_volume(volume_path)
    seq = read_sequence(sequence_path)
    if calibration_path is not None:
        image_to_probe = read_calibration(calibration_path)
    elif "ImageToReference" in seq.transforms:
        return volume, seq, _chain_from_image_to_reference(seq)
    elif "ImageToProbe" in seq.transforms:
        image_to_probe = seq.transforms["ImageToProbe"][0]
    else:
        raise InputError(f"calibration: missing; {Path(sequence_path).name} has no "
                         "ImageToProbe transform, pass the PLUS device-set XML "
                         "(--calibration) with <Transform From=\"Image\" To=\"Probe\">")
    return volume, seq, image_to_reference_chain(seq, image_to_probe)


def _chain_from_image_to_reference(seq: TrackedSequence) -> ReferenceChain:
    mats, idx, skipped = [], [], []
    for i in range(seq.num_frames):
        if not seq.statuses["ImageToReference"][i]:
            skipped.append((i, "ImageToReference status INVALID"))
            continue
        m = seq.transforms["ImageToReference"][i]
        if not np.all(np.isfinite(m)):
            raise InputError(f"sequence: frame {i} ImageToReferenceTransform contains NaN")
        mats.append(m)
        idx.append(i)
    return ReferenceChain(np.stack(mats) if mats else np.zeros((0, 4, 4)),
                          np.array(idx, dtype=int), skipped)


def read_init_json(path) -> Dict[int, np.ndarray]:
    """``{"frames": [{"index": i, "image_to_reference": 4x4}, ...]}`` -> ``{i: 4x4}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise FileReadError(f"init file {path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise FileReadError(f"init file {path}: not valid JSON ({exc})") from None
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list):
        raise InputError(f"init file {path.name}: expected {{\"frames\": [...]}}")
    out = {}
    for k, f in enumerate(frames):
        try:
            m = np.asarray(f["image_to_reference"], dtype=float)
            i = int(f["index"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"init file {path.name}: frame entry {k} needs 'index' and "
                             "'image_to_reference'") from None
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise InputError(f"init file {path.name}: frame {i} image_to_reference must be "
                             "a finite 4x4")
        out[i] = m
    return out


def register_tracked(volume: ReferenceVolume, seq: TrackedSequence, chain: ReferenceChain,
                     method: str = "lncc", init: Optional[Dict[int, np.ndarray]] = None,
                     temporal: Optional[bool] = None, frames: Optional[Sequence[int]] = None,
                     config: Optional[RegistrationConfig] = None, fan=None,
                     volume_mask=None, device=None, progress=None,
                     cancel=None, quality=True,
                     method_options: Optional[dict] = None) -> SequenceRegistration:
    """Register the usable frames of a tracked sweep to ``volume``.

    Starts: ``init[i]`` where given, else the tracked chain. ``temporal`` defaults to True
    without ``init`` and False with it (the CLI contract). ``frames`` restricts to some
    sequence frame numbers. Frames skipped by the chain (INVALID status) are reported in
    the result's ``skipped``. ``quality`` (True, a :class:`quality.QualityConfig`, or
    False): every frame gets a trust value (``qualities``), frames that cannot be
    registered (no overlap at the start, a search that does not move) are skipped with
    the reason, failed frames are retried, and a failed frame never seeds the next one
    (see :mod:`quality`).
    ``method_options``: extra arguments of the method's factory
    (``deep`` / ``deep+lncc``: ``model``, ``force``).
    """
    if method not in METHODS:
        raise InputError(f"method: unknown {method!r}; choose one of {', '.join(METHODS)}")
    if temporal is None:
        temporal = init is None
    usable = {int(i): k for k, i in enumerate(chain.indices)}
    skipped = list(chain.skipped)
    wanted = list(chain.indices) if frames is None else [int(i) for i in frames]
    if frames is not None:
        if not wanted:
            raise InputError("frames: the list of frames is empty (leave it out for all "
                             "usable frames)")
        dup = sorted({i for i in wanted if wanted.count(i) > 1})
        if dup:
            raise InputError(f"frames: frame {dup[0]} is listed more than once")
    for i in wanted:
        if i not in usable and not any(i == s for s, _ in skipped):
            raise InputError(f"frames: {i} is not a frame of the sequence "
                             f"(0..{seq.num_frames - 1})")
    indices = [i for i in wanted if i in usable]
    if not indices:
        raise InputError("sequence: no usable frame to register "
                         f"({len(skipped)} skipped for INVALID status)")
    if init is not None:
        missing = [i for i in indices if i not in init]
        if missing and len(missing) == len(indices):
            raise InputError("init file: has none of the frames to register "
                             f"(e.g. {missing[0]})")
    if fan is None:
        fan = fan_mask(seq.images[chain.indices])
    starts = np.stack([init[i] if init is not None and i in init
                       else chain.image_to_reference[usable[i]] for i in indices])
    report(progress, 0.02, "preparing the volume")
    fn = make_method(method, volume.array, volume.ijk_to_reference, seq.frame_shape, fan,
                     volume_mask=volume_mask, config=config, device=device,
                     **(method_options or {}))
    rows, cols = np.nonzero(fan)
    centre = np.array([cols.mean(), rows.mean(), 0.0, 1.0])
    if quality is not None and quality is not False:
        from .quality import QualityConfig  # noqa: PLC0415
        from .recovery import register_checked  # noqa: PLC0415

        qcfg = quality if isinstance(quality, QualityConfig) else QualityConfig()
        checked = register_checked(fn, seq.images[indices], starts, temporal=temporal,
                                   indices=indices, config=qcfg,
                                   progress=sub_progress(progress, 0.05, 1.0), cancel=cancel)
        done = [c for c in checked if c.result is not None]
        reg = SequenceRegistration(
            method=method, temporal=temporal, indices=[c.index for c in done],
            results=[c.result for c in done], skipped=skipped, fan_centre_px=centre,
            qualities=[c.quality for c in done])
        for c in checked:
            if c.result is None:
                reg.skipped.append((c.index, "; ".join(c.quality.reasons)))
                reg.skipped_quality[c.index] = c.quality
        return reg
    results = register_sequence(fn, seq.images[indices], starts, temporal=temporal,
                                indices=indices, progress=sub_progress(progress, 0.05, 1.0),
                                cancel=cancel)
    return SequenceRegistration(method=method, temporal=temporal, indices=indices,
                                results=results, skipped=skipped, fan_centre_px=centre)


# ----------------------------------------------------------------------------- MRML level
def load_sweep_to_scene(ctx, sequence_path, calibration_path=None, name: Optional[str] = None):
    """Read a PLUS sweep (+ calibration) and load its usable frames as a browsable
    sequence (frames in RAS, see ``plus_io.load_sequence_to_mrml``).

    Returns ``(browser, skipped)`` with ``skipped = [(frame, reason), ...]``.
    """
    from .plus_io import load_sequence_to_mrml  # noqa: PLC0415

    seq = read_sequence(sequence_path)
    if calibration_path:
        chain = image_to_reference_chain(seq, read_calibration(calibration_path))
    elif "ImageToReference" in seq.transforms:
        chain = _chain_from_image_to_reference(seq)
    elif "ImageToProbe" in seq.transforms:
        chain = image_to_reference_chain(seq, seq.transforms["ImageToProbe"][0])
    else:
        raise InputError(f"calibration: missing; {Path(sequence_path).name} has no "
                         "ImageToProbe transform, give the PLUS device-set XML")
    stem = Path(sequence_path).name.split(".")[0]
    _img, _tfm, browser = load_sequence_to_mrml(ctx, seq, chain, name or stem)
    return browser, list(chain.skipped)


def _frames_from_sequences(image_sequence, transform_sequence):
    from SurgicalReg2D3DLib.nodes import (image2d_from_node,  # noqa: PLC0415
                                          matrix_from_transform_node, sequence_items)

    images = sequence_items(image_sequence, "US frame sequence")
    tfms = sequence_items(transform_sequence, "US transform sequence")
    if not images:
        raise InputError("US frame sequence: has no frames")
    if len(tfms) != len(images):
        raise InputError(f"US transform sequence: has {len(tfms)} transforms for "
                         f"{len(images)} frames (a sequence without transforms?)")
    frames, poses = [], []
    for k, (img, tfm) in enumerate(zip(images, tfms)):
        arr, ijk_to_ras = image2d_from_node(img, f"US frame {k}")
        if arr.ndim == 3:
            arr = arr[..., :3].mean(axis=-1)
        m = matrix_from_transform_node(tfm, f"US frame {k} transform")
        if not np.all(np.isfinite(m)):
            raise InputError(f"US frame {k} transform: contains NaN")
        # Pixel (col, row) -> node IJK -> node RAS -> parent (the frame's transform).
        poses.append(m @ ijk_to_ras)
        frames.append(arr)
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise InputError(f"US frame sequence: frames have different sizes {sorted(shapes)}")
    return np.stack(frames), np.stack(poses)


def _volume_arrays(volume_node):
    from SurgicalReg2D3DLib.nodes import volume_from_node  # noqa: PLC0415

    vol = volume_from_node(volume_node, "US volume", require_3d=True)
    if vol.array.ndim != 3:
        raise InputError("US volume: expected a scalar volume")
    from SurgicalReg2D3DLib.checks import check_not_constant  # noqa: PLC0415

    check_not_constant(vol.array, "US volume")
    return vol.array, vol.ijk_to_ras


def browser_sequences(browser):
    """``(frame_sequence, transform_sequence)`` of a sequence browser: its master sequence
    (the frames) and the first synchronised sequence of linear transforms that is not a
    correction sequence made by this module. Raises :class:`InputError` when missing."""
    import vtk  # noqa: PLC0415

    if browser is None:
        raise InputError("US frame sequence: no sequence browser given")
    images = browser.GetMasterSequenceNode()
    synced = vtk.vtkCollection()
    browser.GetSynchronizedSequenceNodes(synced, False)
    transforms = None
    for i in range(synced.GetNumberOfItems()):
        seq = synced.GetItemAsObject(i)
        item = seq.GetNthDataNode(0) if seq.GetNumberOfDataNodes() else None
        if item is not None and item.IsA("vtkMRMLLinearTransformNode") \
                and not seq.GetName().startswith("USCorrection"):
            transforms = seq
            break
    if images is None or transforms is None:
        raise InputError("US frame sequence: the browser needs a frame sequence and a "
                         "synchronised transform sequence (a sequence without transforms?)")
    return images, transforms


def register_nodes(ctx, volume_node, image_sequence, transform_sequence, method: str = "lncc",
                   temporal: bool = True, browser=None, output_name: str = "USCorrection",
                   config: Optional[RegistrationConfig] = None, progress=None, cancel=None,
                   device=None, quality=True, apply_failed: bool = True,
                   method_options: Optional[dict] = None):
    """Register every frame of a browsable sweep (as made by ``load_sequence_to_mrml``).
    ``method_options``: extra factory arguments (``deep``: ``model``, ``force``).

    Returns ``(SequenceRegistration, correction_sequence)``: a new sequence of linear
    transform nodes (``tracked_ras_to_ras`` per frame), synchronised with ``browser`` when
    given. Frames and volume nodes are not modified. ``quality`` as in
    :func:`register_tracked`; a skipped frame's correction is the identity (its tracked
    pose), and so is a ``failed`` frame's unless ``apply_failed`` (the GUI asks first, then
    :func:`apply_corrections` writes them).
    """
    array, ijk_to_ras = _volume_arrays(volume_node)
    frames, poses = _frames_from_sequences(image_sequence, transform_sequence)
    fan = fan_mask(frames)
    fn = make_method(method, array, ijk_to_ras, frames.shape[1:], fan, config=config,
                     device=device, **(method_options or {}))
    rows, cols = np.nonzero(fan)
    centre = np.array([cols.mean(), rows.mean(), 0, 1.0])
    if quality is not None and quality is not False:
        from .quality import QualityConfig  # noqa: PLC0415
        from .recovery import register_checked  # noqa: PLC0415

        qcfg = quality if isinstance(quality, QualityConfig) else QualityConfig()
        checked = register_checked(fn, frames, poses, temporal=temporal, config=qcfg,
                                   progress=progress, cancel=cancel)
        done = [c for c in checked if c.result is not None]
        reg = SequenceRegistration(method=method, temporal=temporal,
                                   indices=[c.index for c in done],
                                   results=[c.result for c in done], fan_centre_px=centre,
                                   qualities=[c.quality for c in done])
        for c in checked:
            if c.result is None:
                reg.skipped.append((c.index, "; ".join(c.quality.reasons)))
                reg.skipped_quality[c.index] = c.quality
    else:
        results = register_sequence(fn, frames, poses, temporal=temporal, progress=progress,
                                    cancel=cancel)
        reg = SequenceRegistration(method=method, temporal=temporal,
                                   indices=list(range(len(results))), results=results,
                                   fan_centre_px=centre)
    out = ctx.add_node("vtkMRMLSequenceNode", output_name)
    out.SetIndexName(image_sequence.GetIndexName())
    out.SetIndexUnit(image_sequence.GetIndexUnit())
    apply_corrections(reg, out, image_sequence, output_name,
                      verdicts=("ok", "doubtful", "failed") if apply_failed else ("ok", "doubtful"),
                      num_frames=frames.shape[0])
    if browser is not None:
        browser.AddSynchronizedSequenceNodeID(out.GetID())
    return reg, out


def apply_corrections(reg: SequenceRegistration, correction_sequence, image_sequence,
                      output_name: str = "USCorrection",
                      verdicts: Sequence[str] = ("ok", "doubtful", "failed"),
                      num_frames: Optional[int] = None) -> List[int]:
    """Write one correction per frame into ``correction_sequence`` (at the frames'
    index values): the registered correction of frames whose verdict is in ``verdicts``
    (all registered frames when ``reg`` has no qualities), the identity otherwise.
    Returns the frame numbers that got the identity."""
    from SurgicalReg2D3DLib.nodes import numpy_to_vtk_matrix  # noqa: PLC0415
    import slicer  # noqa: PLC0415

    n = image_sequence.GetNumberOfDataNodes() if num_frames is None else num_frames
    corr = {}
    for k, (i, r) in enumerate(zip(reg.indices, reg.results)):
        q = reg.qualities[k] if k < len(reg.qualities) else None
        if q is None or q.verdict in verdicts:
            corr[int(i)] = r.correction
    identity = []
    for k in range(n):
        m = corr.get(k)
        if m is None:
            identity.append(k)
            m = np.eye(4)
        value = image_sequence.GetNthIndexValue(k)
        t = correction_sequence.GetDataNodeAtValue(value)
        if t is None:
            t = slicer.vtkMRMLLinearTransformNode()
            t.SetName(f"{output_name} {k}")
            t.SetMatrixTransformToParent(numpy_to_vtk_matrix(m))
            correction_sequence.SetDataNodeAtValue(t, value)
        else:
            t.SetMatrixTransformToParent(numpy_to_vtk_matrix(m))
    return identity


class LiveNodeRegistration:
    """Live mode on nodes: each :meth:`update` registers the current frame node and writes
    the correction into ``correction_node`` (a linear transform node, ``tracked_ras_to_ras``).

    The widget calls :meth:`update` from a sequence-browser or image-node observer.
    """

    def __init__(self, ctx, volume_node, frame_shape, fan=None, method: str = "lncc",
                 correction_node=None, config: Optional[RegistrationConfig] = None,
                 device=None, quality=True):
        array, ijk_to_ras = _volume_arrays(volume_node)
        if fan is None:
            fan = np.ones(tuple(frame_shape), dtype=bool)
        self.ctx = ctx
        fn = make_method(method, array, ijk_to_ras, frame_shape, fan, config=config,
                         device=device)
        if quality is not None and quality is not False:
            from .quality import QualityConfig  # noqa: PLC0415
            from .recovery import CheckedLive  # noqa: PLC0415

            self.live = CheckedLive(fn, quality if isinstance(quality, QualityConfig)
                                    else QualityConfig())
        else:
            self.live = LiveRegistration(fn)
        #: The quality of the last frame (None without checks): a failed or skipped frame
        #: leaves the correction node at the last good correction, and says so.
        self.last_quality: Optional[Quality] = None
        self.correction_node = correction_node or ctx.add_node(
            "vtkMRMLLinearTransformNode", "USLiveCorrection")

    def update(self, frame_node, tracked_image_to_ras=None) -> Optional[FrameResult]:
        """Register ``frame_node`` (single-slice volume). Its pose is
        ``tracked_image_to_ras`` if given, else its parent transform @ its ijk_to_ras.
        Returns the frame's result (``None`` when it was skipped; see
        :attr:`last_quality`); the correction node holds the last good correction."""
        from SurgicalReg2D3DLib.nodes import (image2d_from_node,  # noqa: PLC0415
                                              matrix_to_transform_node, world_matrix)

        arr, ijk_to_ras = image2d_from_node(frame_node, "US live frame")
        if arr.ndim == 3:
            arr = arr[..., :3].mean(axis=-1)
        if tracked_image_to_ras is None:
            tracked_image_to_ras = world_matrix(frame_node, "US live frame") @ ijk_to_ras
        out = self.live.update(arr, tracked_image_to_ras)
        if isinstance(out, tuple):  # with quality: (result or None, quality)
            res, self.last_quality = out
        else:
            res = out
        matrix_to_transform_node(self.ctx, self.live.correction, "USLiveCorrection",
                                 node=self.correction_node)
        return res


def summary_line(reg: SequenceRegistration) -> str:
    """One line for logs: frames, verdicts, mean LNCC before/after, ms per frame."""
    if not reg.results:
        return f"no frame registered ({len(reg.skipped)} skipped)"
    ms = 1000 * float(np.mean([r.seconds for r in reg.results]))
    a = float(np.mean([r.lncc_start for r in reg.results]))
    b = float(np.mean([r.lncc for r in reg.results]))
    verdicts = ""
    if reg.qualities:
        counts = {v: sum(q.verdict == v for q in reg.qualities)
                  for v in ("ok", "doubtful", "failed")}
        verdicts = ": " + ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    return (f"{len(reg.results)} frames{verdicts} ({len(reg.skipped)} skipped), LNCC {a:.3f} "
            f"-> {b:.3f}, {ms:.0f} ms/frame ({reg.method}"
            f"{', temporal' if reg.temporal else ''})")




def results_to_table(ctx, reg: SequenceRegistration, name: str = "USRegistrationResults",
                     truth: Optional[Dict[int, np.ndarray]] = None):
    """A table node (one row per frame: LNCC before/after, ms, correction size, errors
    when ``truth`` is given) and a plot chart of per-frame correction/error and latency.

    Returns ``(table_node, chart_node)``.
    """
    import vtk  # noqa: PLC0415

    table = ctx.add_node("vtkMRMLTableNode", name)
    errs = reg.errors(truth) if truth else {}
    cols = {"frame": [float(i) for i in reg.indices],
            "lncc_start": [r.lncc_start for r in reg.results],
            "lncc": [r.lncc for r in reg.results],
            "ms": [1000 * r.seconds for r in reg.results],
            "correction_mm": [], "correction_deg": []}
    centre = reg.fan_centre_px if reg.fan_centre_px is not None else np.array([0, 0, 0, 1.0])
    for r in reg.results:
        a, t = pose_errors(r.image_to_reference, r.start_image_to_reference, centre)
        cols["correction_deg"].append(a)
        cols["correction_mm"].append(t)
    if errs:
        cols["error_deg"] = errs["rotation_deg"]
        cols["error_mm"] = errs["translation_mm"]
    if reg.qualities:  # verdict 0 ok, 1 doubtful, 2 failed; estimated error
        rank = {"ok": 0, "doubtful": 1, "failed": 2, "skipped": 3}
        cols["verdict"] = [float(rank[q.verdict]) for q in reg.qualities]
        cols["estimate_mm"] = [float(q.estimate.get("translation_mm", np.nan))
                               for q in reg.qualities]
        cols["estimate_deg"] = [float(q.estimate.get("rotation_deg", np.nan))
                                for q in reg.qualities]
    for key, values in cols.items():
        arr = vtk.vtkDoubleArray()
        arr.SetName(key)
        for v in values:
            arr.InsertNextValue(float(v))
        table.AddColumn(arr)
    chart = ctx.add_node("vtkMRMLPlotChartNode", f"{name} chart")
    chart.SetTitle("USSliceReg: per-frame correction/error and latency")
    chart.SetXAxisTitle("frame")
    for key in ("error_mm" if errs else "correction_mm", "ms"):
        series = ctx.add_node("vtkMRMLPlotSeriesNode", f"{name} {key}")
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("frame")
        series.SetYColumnName(key)
        series.SetPlotType(series.PlotTypeScatter)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return table, chart


def reslice_to_frame_node(ctx, volume_node, image_to_ras, frame_shape, name: str = "USResliced",
                          node=None):
    """The volume resampled on a frame's plane, for overlay on the frame.

    A single-slice volume node with the frame's pixel grid: ``ijk_to_ras`` identity under
    a parent transform node holding ``image_to_ras`` (which may carry skew, as the US
    calibration does), exactly as the frames of ``frames_to_sequence``. Only the plane's
    points are sampled. Returns the node (new, or ``node`` updated).
    """
    import torch  # noqa: PLC0415

    from SurgicalReg2D3DLib.nodes import matrix_to_transform_node, volume_to_node  # noqa
    from .slicing import prepare_volume, slice_volume  # noqa: PLC0415

    array, ijk_to_ras = _volume_arrays(volume_node)
    pose = np.asarray(image_to_ras, dtype=float)
    vol = prepare_volume(array, ijk_to_ras)
    vals, inside = slice_volume(vol, torch.as_tensor(pose).float(), tuple(frame_shape),
                                channels=1)
    sl = (vals[0, 0] * inside[0]).numpy()
    node = volume_to_node(ctx, sl[None].astype(np.float32), np.eye(4), name, node=node)
    parent = node.GetParentTransformNode()
    parent = matrix_to_transform_node(ctx, pose, f"{name} image_to_ras", node=parent)
    node.SetAndObserveTransformNodeID(parent.GetID())
    return node
