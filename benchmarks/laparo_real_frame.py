"""The bundled landmark network on the one REAL P2ILF frame, scored with the P2ILF
challenge's Task 1 (2D contour detection) metric.

The repository ships one real frame with its label image
(``Resources/SampleData/p2ilf/2D_imageLabel_metrics/image_labels_GT/P2ILF22_patient1_12``
``.jpg`` and ``..._GT.jpg``, patient 1; the shipped mesh is patient 2's, so no 3D pose
can be scored here). This script runs the bundled landmark model (kind ``landmarks``,
``learned.modelfile.load_model(None, kind="landmarks")``) on the frame, turns each
probability map (ridge, ligament, silhouette; >= 0.5, bilinear upsampling to
1920 x 1080) into a 1-px centre line, and scores it against the decoded label image with
:mod:`LiverLaparoRegLib.learned.p2ilf_metric` (the challenge's definitions, plus our
curve-tolerance F1 for reading coarse maps).

The network needs a liver mask; none ships for this frame, so the masks are computed
here (no file written) and each is labelled:

- ``gt-derived``: LEAKS GROUND-TRUTH GEOMETRY. The annotated silhouette curves, each
  prolonged straight from its ends to the frame border, cut the frame into regions; the
  mask is the region(s) holding most of the annotated ridge and ligament pixels. Its
  outline follows the annotated silhouette, so silhouette scores with it are optimistic.
- ``auto-colour``: a crude automatic mask (no annotation used): median-smoothed frame,
  CIELAB b* (yellowness) below a threshold to drop fat, not dark, largest part, holes
  filled. It takes in parts of the abdominal wall (same colour as the liver here).
- ``none``: the mask channel set to 0 (the network saw this for 10 % of its training
  samples).

Also scored: the network's output as the registration reads it
(``landmarks_infer.observations``: ridge cells inside the mask, the mask outline where the
network sees a silhouette). Baselines for reading the numbers: the mask outline (frame border removed) as the
prediction of every class, the untrained network (random initial weights, seeds 0-2,
same pipeline), and the chance precision of a band (GT band area / frame area).

Writes ``benchmarks/results/laparo_real_frame.json`` and ``laparo_real_frame.png``
(frame, GT, predictions); the numbers go into ``laparo_real_frame.md`` by hand.

Run: ``python benchmarks/laparo_real_frame.py [--no-figure] [--seeds 3]`` (~1 min on one
CPU thread).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
P2ILF = ROOT / "Resources" / "SampleData" / "p2ilf"
FRAME = P2ILF / "2D_imageLabel_metrics" / "image_labels_GT" / "P2ILF22_patient1_12.jpg"
LABELS = P2ILF / "2D_imageLabel_metrics" / "image_labels_GT" / "P2ILF22_patient1_12_GT.jpg"
CAMERA = P2ILF / "cameraparams" / "acquisition-camera-metadata.json"
OUT_DIR = ROOT / "benchmarks" / "results"
CLASSES = ("ridge", "ligament", "silhouette")


def read_rgb(path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"image: cannot read {path}")
    return img[..., ::-1].copy()


# ----------------------------------------------------------------------------- masks
def _endpoints(curve: np.ndarray):
    import cv2

    c = curve.astype(np.uint8)
    nb = cv2.filter2D(c, -1, np.ones((3, 3), np.float32), borderType=cv2.BORDER_CONSTANT) - c
    r, k = np.nonzero((c > 0) & (nb == 1))
    return np.stack([k, r], 1)  # (x, y)


def gt_derived_mask(labels: dict, reach: float = 40.0) -> np.ndarray:
    """LEAKS GT: the frame cut by the annotated silhouette curves (prolonged straight from
    each end, direction from the curve points within ``reach`` px of the end, to the
    frame border); the regions that hold most of the annotated ridge + ligament pixels."""
    import cv2

    from LiverLaparoRegLib.learned.p2ilf_metric import thin

    H, W = labels["silhouette"].shape
    sil = thin(labels["silhouette"])
    wall = sil.astype(np.uint8)
    n, lab = cv2.connectedComponents(wall, connectivity=8)
    for i in range(1, n):
        part = lab == i
        ys, xs = np.nonzero(part)
        pts = np.stack([xs, ys], 1).astype(float)
        for e in _endpoints(part):
            near = pts[np.linalg.norm(pts - e, axis=1) <= reach]
            d = e - near.mean(0)
            if np.linalg.norm(d) < 1e-6:
                continue
            d = d / np.linalg.norm(d)
            far = e + d * (H + W) * 2
            cv2.line(wall, (int(e[0]), int(e[1])), (int(round(far[0])), int(round(far[1]))), 1, 1)
    wall = cv2.dilate(wall, np.ones((3, 3), np.uint8))
    n, lab = cv2.connectedComponents((wall == 0).astype(np.uint8), connectivity=4)
    on_liver = labels["ridge"] | labels["ligament"]
    votes = np.bincount(lab[on_liver], minlength=n)
    votes[0] = 0
    keep = votes >= 0.2 * votes.sum()
    mask = keep[lab]
    # give the cut line (3 px) back to the side it borders
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE,
                            np.ones((5, 5), np.uint8)).astype(bool)


def auto_colour_mask(rgb: np.ndarray, max_b: float = 150.0, min_l: float = 30.0) -> np.ndarray:
    """No annotation used: median-smoothed frame (31 px), CIELAB b* (OpenCV 8-bit scale,
    128 = neutral) below ``max_b`` (fat and the bright ligament fold are yellower), L
    above ``min_l`` (not the dark corners), opened / closed, largest part, holes
    filled."""
    import cv2

    from LiverLaparoRegLib.learned.p2ilf_metric import fill_small_holes

    sm = cv2.medianBlur(np.ascontiguousarray(rgb[..., ::-1]), 31)
    lab = cv2.cvtColor(sm, cv2.COLOR_BGR2LAB).astype(np.float32)
    m = ((lab[..., 2] < max_b) & (lab[..., 0] > min_l)).astype(np.uint8)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (25, 25))
    m = cv2.morphologyEx(cv2.morphologyEx(m, cv2.MORPH_OPEN, k), cv2.MORPH_CLOSE, k)
    n, lab_, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return np.zeros(m.shape, bool)
    big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return fill_small_holes(lab_ == big, m.size // 20)


def mask_outline(mask: np.ndarray, border: int = 3) -> np.ndarray:
    """1-px outline of a mask, the frame border removed."""
    import cv2

    m = mask.astype(np.uint8)
    edge = (m - cv2.erode(m, np.ones((3, 3), np.uint8))).astype(bool)
    edge[:border, :] = edge[-border:, :] = False
    edge[:, :border] = edge[:, -border:] = False
    return edge


# ----------------------------------------------------------------------------- network
def network_curves(net, rgb, mask, camera, threshold: float = 0.5, fractions=None):
    """Per class: the full-frame probability map and its thinned curve (map >=
    ``threshold``; or, with ``fractions`` = {class: share of the frame}, the map's top
    share of pixels: the untrained baseline marks as many pixels as the trained net)."""
    import cv2

    from LiverLaparoRegLib.learned.landmarks_infer import predict_maps
    from LiverLaparoRegLib.learned.p2ilf_metric import thin

    maps = predict_maps(net, rgb, mask, camera)
    H, W = rgb.shape[:2]
    out = {}
    for k, c in enumerate(CLASSES):
        full = cv2.resize(maps[k], (W, H), interpolation=cv2.INTER_LINEAR)
        if fractions is None:
            on = full >= threshold
        elif fractions[c] <= 0:
            on = np.zeros(full.shape, bool)
        else:
            on = full >= np.quantile(full, 1.0 - fractions[c])
        out[c] = (full, thin(on))
    return out


def observation_curves(net, rgb, mask, camera):
    """What the registration (``register_landmarks``) takes from the network: ridge /
    ligament = network cells >= 0.5 inside the mask (``landmarks_infer.observations``),
    silhouette = the mask outline where the network sees a silhouette; rasterised at full
    resolution (a cell as its rectangle, an outline sample as a 7 px square) and thinned."""
    import cv2

    from LiverLaparoRegLib.learned.landmarks_infer import observations, predict_maps
    from LiverLaparoRegLib.learned.p2ilf_metric import thin

    maps = predict_maps(net, rgb, mask, camera)
    obs = observations(maps, mask, camera)
    H, W = rgb.shape[:2]
    out = {}
    for k, c in ((0, "ridge"), (1, "ligament")):
        on = ((maps[k] >= 0.5) & (obs["mask_net"] > 0)).astype(np.uint8)
        out[c] = thin(cv2.resize(on, (W, H), interpolation=cv2.INTER_NEAREST) > 0)
    pts = np.zeros((H, W), np.uint8)
    uv = np.round(obs["silhouette"]).astype(int)
    ok = (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    pts[uv[ok, 1], uv[ok, 0]] = 1
    out["silhouette"] = thin(cv2.dilate(pts, np.ones((7, 7), np.uint8)) > 0)
    return out


def score_all(curves: dict, labels: dict, gt_curves: dict) -> dict:
    from LiverLaparoRegLib.learned.p2ilf_metric import score_class

    return {c: score_class(curves[c], labels[c], gt_curves[c]) for c in CLASSES}


def _row(name, mask_name, scores):
    return {"method": name, "mask": mask_name, "scores": scores}


# ----------------------------------------------------------------------------- figure
def figure(rgb, labels, masks, preds, path, scale: float = 0.2):
    """Tiles: the frame; the GT curves; the two computed masks; per mask the network's
    thinned curves (thickened for display) over the greyed frame, mask outline in white."""
    import cv2

    from LiverLaparoRegLib.learned.p2ilf_metric import thin

    col = {"ridge": (255, 40, 40), "ligament": (70, 110, 255), "silhouette": (255, 235, 0)}
    small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    grey = ((grey // 16) * 16 * 0.7).astype(np.uint8)  # quantised: a small PNG

    def shrink(m, dil=7):
        m = cv2.dilate(m.astype(np.uint8), np.ones((dil, dil), np.uint8))
        return cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA) > 0.15

    def outline(m):
        ms = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        return (ms - cv2.erode(ms, np.ones((3, 3), np.uint8))) > 0

    def tile(curves=None, mask=None, title="", photo=False):
        im = small.copy() if photo else np.repeat(grey[..., None], 3, -1)
        if mask is not None and mask.any():
            im[outline(mask)] = (255, 255, 255)
        for c in CLASSES if curves else ():
            im[shrink(curves[c])] = col[c]
        cv2.putText(im, title, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1,
                    cv2.LINE_AA)
        return im

    gtc = {c: thin(labels[c]) for c in CLASSES}
    tiles = [tile(title="real frame P2ILF22_patient1_12", photo=True),
             tile(gtc, title="GT: red ridge, blue ligament, yellow silh.")]
    mt = tile(title="masks: gt-derived red, auto-colour blue")
    for name, c in (("gt-derived", (255, 60, 60)), ("auto-colour", (80, 140, 255))):
        o = cv2.dilate(outline(masks[name]).astype(np.uint8), np.ones((2, 2), np.uint8)) > 0
        mt[o] = c
    tiles.append(mt)
    for name, mask in masks.items():
        tiles.append(tile(preds[name], mask, f"network, mask {name}" +
                          (" (white)" if mask.any() else " (no mask)")))
    while len(tiles) % 2:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i:i + 2], 1) for i in range(0, len(tiles), 2)]
    cv2.imwrite(str(path), np.concatenate(rows, 0)[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])


# ----------------------------------------------------------------------------- main
def main(argv=None):
    import torch

    from LiverLaparoRegLib.camera import load_camera
    from LiverLaparoRegLib.learned.landmarks_net import LandmarkNet
    from LiverLaparoRegLib.learned.modelfile import load_model
    from LiverLaparoRegLib.learned.p2ilf_metric import (decode_label_image,
                                                        decode_label_image_challenge, thin)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="untrained-network seeds")
    ap.add_argument("--no-figure", action="store_true")
    ap.add_argument("--out", default=str(OUT_DIR / "laparo_real_frame.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    load0 = [round(x, 2) for x in os.getloadavg()]

    rgb = read_rgb(FRAME)
    label_rgb = read_rgb(LABELS)
    labels = decode_label_image(label_rgb)
    strict = decode_label_image_challenge(label_rgb)
    gt_curves = {c: thin(labels[c]) for c in CLASSES}
    camera = load_camera(CAMERA)
    H, W = rgb.shape[:2]

    masks = {"gt-derived": gt_derived_mask(labels), "auto-colour": auto_colour_mask(rgb),
             "none": np.zeros((H, W), bool)}
    net, data = load_model(None, kind="landmarks")
    net.eval()

    rows, preds = [], {}
    for mname, mask in masks.items():
        t = time.time()
        cur = network_curves(net, rgb, mask.astype(np.float32), camera)
        dt = time.time() - t
        preds[mname] = {c: cur[c][1] for c in CLASSES}
        frac = {c: float(np.mean(cur[c][0] >= 0.5)) for c in CLASSES}
        r = _row("bundled network", mname, score_all(preds[mname], labels, gt_curves))
        r["seconds"] = round(dt, 2)
        r["map_max"] = {c: float(cur[c][0].max()) for c in CLASSES}
        r["positive_fraction"] = frac
        rows.append(r)
        if mask.any():
            rows.append(_row("network as the registration reads it", mname,
                             score_all(observation_curves(net, rgb, mask.astype(np.float32),
                                                          camera), labels, gt_curves)))
            edge = mask_outline(mask)
            rows.append(_row("mask outline (baseline)", mname,
                             score_all({c: edge for c in CLASSES}, labels, gt_curves)))
        for s in range(a.seeds):
            torch.manual_seed(s)
            rnd = LandmarkNet(**dict(net.config)).eval()
            cur = network_curves(rnd, rgb, mask.astype(np.float32), camera, fractions=frac)
            rows.append(_row(f"untrained network seed {s} (baseline)", mname,
                             score_all({c: cur[c][1] for c in CLASSES}, labels, gt_curves)))
        print(f"mask {mname}: done ({time.time() - t0:.0f} s)", flush=True)

    gm, am = masks["gt-derived"], masks["auto-colour"]
    inter = float((gm & am).sum())
    info = {
        "frame": str(FRAME.relative_to(ROOT)), "labels": str(LABELS.relative_to(ROOT)),
        "model": Path(data["path"]).name, "model_command": data.get("command", ""),
        "model_data": data.get("data", ""),
        "gt_band_px": {c: int(labels[c].sum()) for c in CLASSES},
        "gt_band_px_challenge_rule": {c: int(strict[c].sum()) for c in CLASSES},
        "gt_curve_px": {c: int(gt_curves[c].sum()) for c in CLASSES},
        "chance_band_precision": {c: float(labels[c].sum()) / (H * W) for c in CLASSES},
        "mask_fraction": {k: float(m.mean()) for k, m in masks.items()},
        "mask_dice_auto_vs_gt_derived": 2 * inter / max(1.0, float(gm.sum() + am.sum())),
        "load_average_start": load0, "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "torch_threads": 1, "wall_s": round(time.time() - t0, 1),
    }
    for r in rows:
        r["leaderboard"] = leaderboard(r["scores"])
    out = {"info": info, "rows": rows}
    Path(a.out).write_text(json.dumps(out, indent=1, default=float))
    if not a.no_figure:
        figure(rgb, labels, masks, preds, Path(a.out).with_suffix(".png"))
    print_table(out)
    return 0


def _nan0(x):
    return 0.0 if x != x else x


def leaderboard(scores) -> dict:
    """The challenge leaderboard's two 2D numbers: mean over the classes of the band
    precision (an empty prediction counts 0, as in the challenge's ``precision``) and of
    the François symmetric distance score."""
    return {"av_precision": float(np.mean([_nan0(scores[c]["band"]["precision"])
                                           for c in CLASSES])),
            "sym_dist_mean": float(np.mean([scores[c]["sym_dist"] for c in CLASSES]))}


def _groups(rows):
    """Rows grouped by (mask, method), the untrained seeds together."""
    out = {}
    for r in rows:
        name = r["method"].split(" seed ")[0] + (" (baseline)" if " seed " in r["method"] else "")
        out.setdefault((r["mask"], name), []).append(r["scores"])
    return out


def _fmt(vals, nd):
    vals = [v for v in vals]
    if len(vals) == 1:
        v = vals[0]
        return "n/a" if v != v else f"{v:.{nd}f}"
    ok = [v for v in vals if v == v]
    if not ok:
        return "n/a"
    return f"{np.median(ok):.{nd}f} ({min(ok):.{nd}f}-{max(ok):.{nd}f})"


def print_table(out):
    """Markdown tables (untrained seeds: median (min-max))."""
    g = _groups(out["rows"])
    print("| mask | method | ridge P / R / DSC | ligament P / R / DSC | silhouette P / R / DSC"
          " | symDist r / l / s | av. precision | mean symDist |")
    print("|---|---|---|---|---|---|---|---|")
    for (mask, name), sc in g.items():
        cells = []
        for c in CLASSES:
            cells.append(" / ".join(_fmt([s[c]["band"][k] for s in sc], 3)
                                    for k in ("precision", "recall", "dice")))
        sd = " / ".join(_fmt([s[c]["sym_dist"] for s in sc], 2) for c in CLASSES)
        lb = [leaderboard(s) for s in sc]
        print(f"| {mask} | {name} | " + " | ".join(cells) + f" | {sd} | "
              f"{_fmt([x['av_precision'] for x in lb], 3)} | "
              f"{_fmt([x['sym_dist_mean'] for x in lb], 2)} |")
    print()
    print("| mask | method | thin P r / l / s | symDiff r / l / s | F1 @15 px r / l / s"
          " | F1 @45 px r / l / s |")
    print("|---|---|---|---|---|---|")
    for (mask, name), sc in g.items():
        tp = " / ".join(_fmt([s[c]["thin"]["precision"] for s in sc], 3) for c in CLASSES)
        sdf = " / ".join(_fmt([s[c]["sym_diff"] for s in sc], 2) for c in CLASSES)
        f15 = " / ".join(_fmt([s[c]["tolerance"][15.0]["f1"] for s in sc], 2) for c in CLASSES)
        f45 = " / ".join(_fmt([s[c]["tolerance"][45.0]["f1"] for s in sc], 2) for c in CLASSES)
        print(f"| {mask} | {name} | {tp} | {sdf} | {f15} | {f45} |")


if __name__ == "__main__":
    raise SystemExit(main())
