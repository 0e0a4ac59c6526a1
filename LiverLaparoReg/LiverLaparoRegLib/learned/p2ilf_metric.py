"""Scoring 2D landmark curves (ridge, falciform ligament, silhouette) the way the P2ILF
challenge scores its Task 1 2D contour detection (Qt-free; numpy, scipy, cv2).

The challenge's evaluation code (github.com/sharib-vision/P2ILF:
``teamEvaluations/metrics_2DContours_eval.py`` + ``teamEvaluations/metric_functions.py``,
and the earlier ``2D_imageLabel_metrics/metrics_2D_ContourSegmentation.py`` that ships
the label image used here) does, per class:

1. draw the ground-truth curves and the predicted curves as polylines **12 px thick**
   (``cv2.polylines(..., thickness=12)``; the shipped ``*_GT.jpg`` label image is such a
   drawing: red ridge, blue ligament, yellow silhouette on black);
2. **pixel classification** of the predicted band against the ground-truth band:
   precision, recall (sensitivity), Dice (DSC) and Jaccard; in the label-image script the
   prediction is first cleaned (holes and objects < 5 px) and thinned to a 1-px skeleton,
   which turns precision into "share of the predicted centre line within ~6 px of the
   ground truth";
3. a **symmetric distance score** with a 10 px cap (``dmax``), after François et al.
   (2022), on the two bands: ``(sum of capped distances of matched predicted pixels +
   sum for matched ground-truth pixels) / (2 |GT|) + dmax * missed GT / |GT| + dmax *
   outlying predicted pixels / (pixels - 2 dmax |GT|)``; a pixel is matched when the
   other band is nearer than ``dmax``. 0 is perfect; an empty prediction scores
   ``dmax`` = 10;
4. a **symmetric difference** ``symDiff``: both bands' distances to each other capped at
   50 px, summed, divided by ``50 |GT|`` (0 perfect, 1 for an empty prediction).

This module re-implements those definitions (no code taken over); see
``benchmarks/results/laparo_real_frame.md`` for where each one comes from and for the
quirks of the original scripts. :func:`curve_tolerance_scores` is ours (not the
challenge's): precision / recall / F1 of 1-px centre lines within a pixel tolerance, to
read coarse predictions (the landmark network's cells are 15 x 11 px of a 1920 x 1080
frame).

All masks are boolean ``(H, W)`` arrays of the full frame; inputs are never modified.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

#: the challenge draws every curve with this line thickness (px)
BAND_PX = 12
#: distance cap of the François symmetric distance score (px)
DMAX_PX = 10
#: distance cap of the symmetric difference score (px)
SYMDIFF_CAP_PX = 50
#: small holes filled and small objects dropped before thinning (px), as the challenge
MIN_PART_PX = 5
#: label colours (RGB) of the P2ILF label images
LABEL_COLOURS = {"ridge": (255, 0, 0), "ligament": (0, 0, 255), "silhouette": (255, 255, 0)}
CLASSES = ("ridge", "ligament", "silhouette")


# ----------------------------------------------------------------------------- decoding
def decode_label_image(rgb: np.ndarray, min_brightness: int = 100,
                       max_colour_distance: float = 160.0) -> Dict[str, np.ndarray]:
    """Class masks of a P2ILF label image (RGB, red ridge / blue ligament / yellow
    silhouette on black), robust to JPEG noise: each pixel whose brightest channel is at
    least ``min_brightness`` goes to the nearest label colour (Euclidean RGB) if it is
    within ``max_colour_distance``; 8-connected parts smaller than :data:`MIN_PART_PX`
    are dropped. (The challenge instead keeps a channel where it is > 230, which loses the
    JPEG-blurred rims of the lines.)"""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] < 3:
        raise ValueError(f"label image: expected (H, W, 3) RGB, got shape {a.shape}")
    px = a[..., :3].astype(np.float32)
    ref = np.array([LABEL_COLOURS[c] for c in CLASSES], np.float32)
    d = np.linalg.norm(px[:, :, None, :] - ref[None, None], axis=-1)
    near = d.argmin(-1)
    on = (px.max(-1) >= min_brightness) & (d.min(-1) <= max_colour_distance)
    return {c: _drop_small(on & (near == k), MIN_PART_PX) for k, c in enumerate(CLASSES)}


def decode_label_image_challenge(rgb: np.ndarray) -> Dict[str, np.ndarray]:
    """The challenge's own decoding rule, for comparison: a channel is on where it is
    > 230; ridge = red on and green off, ligament = blue on, silhouette = green on (a later
    class overrides an earlier one: ridge < ligament < silhouette)."""
    a = np.asarray(rgb)[..., :3] > 230
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    sil = g
    lig = b & ~sil
    ridge = r & ~g & ~lig
    return {"ridge": ridge, "ligament": lig, "silhouette": sil}


# ----------------------------------------------------------------------------- morphology
def _drop_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    import cv2  # noqa: PLC0415

    m = np.asarray(mask, bool)
    if min_px <= 1 or not m.any():
        return m.copy()
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_px
    return keep[lab]


def fill_small_holes(mask: np.ndarray, max_px: int) -> np.ndarray:
    """A copy of ``mask`` in which every 4-connected background part smaller than
    ``max_px`` pixels is set (also one touching the frame border)."""
    import cv2  # noqa: PLC0415

    m = np.asarray(mask, bool)
    inv = (~m).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    fill = np.zeros(n, bool)
    fill[1:] = stats[1:, cv2.CC_STAT_AREA] < max_px
    return m | fill[lab]


def thin(mask: np.ndarray, clean: bool = True) -> np.ndarray:
    """1-px skeleton (Zhang-Suen thinning, 8-connected) of a binary mask; with ``clean``
    holes and parts smaller than :data:`MIN_PART_PX` are removed first, as the challenge
    does before its skeletonisation."""
    m = np.asarray(mask, bool)
    if clean:
        m = _drop_small(fill_small_holes(m, MIN_PART_PX), MIN_PART_PX)
    if not m.any():
        return np.zeros_like(m)
    rows, cols = np.nonzero(m)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    img = np.zeros((r1 - r0 + 2, c1 - c0 + 2), np.uint8)
    img[1:-1, 1:-1] = m[r0:r1, c0:c1]
    while True:
        changed = False
        for step in (0, 1):
            p = img
            n2, n3, n4 = p[:-2, 1:-1], p[:-2, 2:], p[1:-1, 2:]
            n5, n6, n7 = p[2:, 2:], p[2:, 1:-1], p[2:, :-2]
            n8, n9 = p[1:-1, :-2], p[:-2, :-2]
            ring = (n2, n3, n4, n5, n6, n7, n8, n9, n2)
            nb = sum(x.astype(np.int16) for x in ring[:8])
            trans = sum(((ring[i] == 0) & (ring[i + 1] == 1)).astype(np.int16) for i in range(8))
            if step == 0:
                cond = ((n2 & n4 & n6) == 0) & ((n4 & n6 & n8) == 0)
            else:
                cond = ((n2 & n4 & n8) == 0) & ((n2 & n6 & n8) == 0)
            rm = (p[1:-1, 1:-1] == 1) & (nb >= 2) & (nb <= 6) & (trans == 1) & cond
            if rm.any():
                img[1:-1, 1:-1][rm] = 0
                changed = True
        if not changed:
            break
    out = np.zeros_like(m)
    out[r0:r1, c0:c1] = img[1:-1, 1:-1].astype(bool)
    return out


def distance_to(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (px) of every pixel to the nearest ``True`` pixel of ``mask``
    (``inf`` everywhere when the mask is empty)."""
    from scipy import ndimage  # noqa: PLC0415

    m = np.asarray(mask, bool)
    if not m.any():
        return np.full(m.shape, np.inf)
    return ndimage.distance_transform_edt(~m)


def band(curve: np.ndarray, thickness: int = BAND_PX) -> np.ndarray:
    """The pixels within ``thickness / 2`` of a curve mask: the curve drawn with a line
    of that thickness, as the challenge draws both ground truth and prediction."""
    return distance_to(curve) <= thickness / 2.0


# ----------------------------------------------------------------------------- metrics
def classification_scores(pred: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
    """Pixel precision, recall, Dice and Jaccard of ``pred`` against ``gt`` (NaN where a
    denominator is 0)."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    tp = float(np.sum(p & g))
    fp = float(np.sum(p & ~g))
    fn = float(np.sum(~p & g))

    def div(a, b):
        return a / b if b > 0 else float("nan")

    return {"precision": div(tp, tp + fp), "recall": div(tp, tp + fn),
            "dice": div(2 * tp, 2 * tp + fp + fn), "jaccard": div(tp, tp + fp + fn)}


def symmetric_distance_score(pred: np.ndarray, gt: np.ndarray, dmax: float = DMAX_PX) -> float:
    """The François symmetric distance score with cap ``dmax`` (lower is better; 0 for a
    perfect prediction, ``dmax`` for an empty one; NaN without ground truth)."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    n_gt = int(g.sum())
    if n_gt == 0:
        return float("nan")
    dp = distance_to(g)[p]  # predicted pixels -> GT
    dg = distance_to(p)[g]  # GT pixels -> prediction
    match_p, match_g = dp < dmax, dg < dmax
    d_match = (dp[match_p].sum() + dg[match_g].sum()) / (2.0 * n_gt)
    d_miss = dmax * float((~match_g).sum()) / n_gt
    free = g.size - 2.0 * dmax * n_gt
    d_out = dmax * float((~match_p).sum()) / free if free > 0 else float("nan")
    return float(d_match + d_miss + d_out)


def symmetric_difference_score(pred: np.ndarray, gt: np.ndarray,
                               cap: float = SYMDIFF_CAP_PX) -> float:
    """Capped distances both ways, summed, over ``cap * |GT|`` (0 perfect, 1 for an
    empty prediction; NaN without ground truth)."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    n_gt = int(g.sum())
    if n_gt == 0:
        return float("nan")
    dp = np.minimum(distance_to(g)[p], cap)
    dg = np.minimum(distance_to(p)[g], cap)
    return float((dp.sum() + dg.sum()) / (cap * n_gt))


def curve_tolerance_scores(pred_curve: np.ndarray, gt_curve: np.ndarray,
                           tol: float) -> Dict[str, float]:
    """Ours, not the challenge's: share of the predicted 1-px curve within ``tol`` px of
    the ground-truth curve (precision), share of the ground-truth curve within ``tol`` px
    of the prediction (recall), and their F1 (NaN where undefined)."""
    p, g = np.asarray(pred_curve, bool), np.asarray(gt_curve, bool)
    prec = float(np.mean(distance_to(g)[p] <= tol)) if p.any() else float("nan")
    rec = float(np.mean(distance_to(p)[g] <= tol)) if g.any() and p.any() else (
        0.0 if g.any() else float("nan"))
    if prec == prec and rec == rec:
        f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    else:  # an empty prediction of an annotated class scores 0
        f1 = 0.0 if g.any() else float("nan")
    return {"precision": prec, "recall": rec, "f1": f1}


def score_class(pred_curve: np.ndarray, gt_band: np.ndarray,
                gt_curve: Optional[np.ndarray] = None,
                tolerances=(15.0, 45.0)) -> Dict[str, object]:
    """All scores of one class. ``pred_curve``: the predicted curve as a 1-px centre line
    (e.g. :func:`thin` of a thresholded probability map); ``gt_band``: the ground-truth
    curve drawn :data:`BAND_PX` thick (the decoded label image); ``gt_curve``: its centre
    line (computed with :func:`thin` when not given).

    Returns ``band`` (classification of the predicted band vs the GT band, as
    ``teamEvaluations`` does), ``thin`` (classification of the predicted centre line vs
    the GT band, as the label-image script does), ``sym_dist`` (François, 10 px cap, on
    the bands), ``sym_diff`` (50 px cap, on the bands), ``tolerance`` (ours:
    ``{tol: curve_tolerance_scores}``) and pixel counts."""
    pc = np.asarray(pred_curve, bool)
    gb = np.asarray(gt_band, bool)
    gc = thin(gb) if gt_curve is None else np.asarray(gt_curve, bool)
    pb = band(pc)
    return {
        "band": classification_scores(pb, gb),
        "thin": classification_scores(pc, gb),
        "sym_dist": symmetric_distance_score(pb, gb),
        "sym_diff": symmetric_difference_score(pb, gb),
        "tolerance": {float(t): curve_tolerance_scores(pc, gc, t) for t in tolerances},
        "pred_curve_px": int(pc.sum()), "gt_curve_px": int(gc.sum()),
        "gt_band_px": int(gb.sum()),
    }
