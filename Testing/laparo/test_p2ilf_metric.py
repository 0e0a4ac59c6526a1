"""The P2ILF Task 1 2D contour metric (``learned.p2ilf_metric``) against hand-computed
values on synthetic curves (SYNTHETIC: straight lines across the whole image, so every
distance is a row difference), and the decoding of a JPEG label image."""

from __future__ import annotations

import math

import numpy as np
import pytest

H, W = 400, 300


def _row_line(row):
    m = np.zeros((H, W), bool)
    m[row, :] = True
    return m


@pytest.mark.parametrize("d", [0, 4, 9])
def test_band_scores_of_offset_lines(d):
    """GT at row 200, prediction at row 200 + d, both drawn 12 px thick (13 rows: the
    width cv2.polylines gives): overlap 13 - d rows."""
    from LiverLaparoRegLib.learned import p2ilf_metric as pm

    gt, pred = pm.band(_row_line(200)), pm.band(_row_line(200 + d))
    assert gt.sum() == 13 * W
    s = pm.classification_scores(pred, gt)
    assert s["precision"] == pytest.approx((13 - d) / 13)
    assert s["recall"] == pytest.approx((13 - d) / 13)
    assert s["dice"] == pytest.approx((13 - d) / 13)
    assert s["jaccard"] == pytest.approx((13 - d) / (13 + d))
    # every pixel outside the other band lies 1..d rows from it, all below the 10 px cap
    assert pm.symmetric_distance_score(pred, gt) == pytest.approx(d * (d + 1) / 26.0)
    assert pm.symmetric_difference_score(pred, gt) == pytest.approx(d * (d + 1) / (50.0 * 13))


def test_distance_score_counts_misses_and_outliers():
    """Offset 20: bands 8..20 rows apart; rows at 8 and 9 px are matched (< 10), 11 rows
    of each band are missed GT / outlying prediction."""
    from LiverLaparoRegLib.learned import p2ilf_metric as pm

    gt, pred = pm.band(_row_line(200)), pm.band(_row_line(220))
    expected = (17 + 17) / 26.0 + 10 * 11 / 13.0 + 10 * 11 * W / (H * W - 2 * 10 * 13 * W)
    assert pm.symmetric_distance_score(pred, gt) == pytest.approx(expected)
    s = pm.classification_scores(pred, gt)
    assert s["precision"] == 0.0 and s["recall"] == 0.0


def test_empty_prediction():
    from LiverLaparoRegLib.learned import p2ilf_metric as pm

    gt = pm.band(_row_line(200))
    empty = np.zeros_like(gt)
    assert pm.symmetric_distance_score(empty, gt) == pytest.approx(10.0)
    assert pm.symmetric_difference_score(empty, gt) == pytest.approx(1.0)
    s = pm.classification_scores(empty, gt)
    assert math.isnan(s["precision"]) and s["recall"] == 0.0
    assert math.isnan(pm.symmetric_distance_score(gt, empty))


def test_thin_gives_the_centre_line():
    from LiverLaparoRegLib.learned import p2ilf_metric as pm

    band = np.zeros((H, W), bool)
    band[194:207, 40:260] = True  # 13 rows, centre row 200
    sk = pm.thin(band)
    cols = sk[:, 60:240]
    assert (cols.sum(0) == 1).all()
    rows = np.nonzero(cols)[0]
    assert np.abs(rows - 200).max() <= 1
    assert not pm.thin(np.zeros((H, W), bool)).any()


@pytest.mark.parametrize("d,tol,expected", [(10, 15.0, 1.0), (20, 15.0, 0.0), (20, 45.0, 1.0)])
def test_curve_tolerance(d, tol, expected):
    from LiverLaparoRegLib.learned import p2ilf_metric as pm

    s = pm.curve_tolerance_scores(_row_line(200 + d), _row_line(200), tol)
    assert s["precision"] == expected and s["recall"] == expected and s["f1"] == expected


def test_curve_tolerance_half_length():
    from LiverLaparoRegLib.learned import p2ilf_metric as pm

    pred = np.zeros((H, W), bool)
    pred[203, : W // 2] = True
    s = pm.curve_tolerance_scores(pred, _row_line(200), 5.0)
    assert s["precision"] == 1.0
    # GT pixels within 5 px (Euclidean) of a half line: the half plus 4 columns
    assert s["recall"] == pytest.approx((W // 2 + 4) / W)


def test_decode_jpeg_label_image():
    """Curves drawn in the label colours, JPEG-compressed: each class comes back as the
    drawn band (IoU > 0.85) and no class takes another's pixels."""
    import cv2

    from LiverLaparoRegLib.learned import p2ilf_metric as pm

    rgb = np.zeros((360, 480, 3), np.uint8)
    curves = {"ridge": [(30, 300), (200, 250), (300, 330)],
              "ligament": [(250, 40), (300, 150), (320, 200)],
              "silhouette": [(20, 20), (120, 150), (200, 60), (460, 30)]}
    truth = {}
    for c, pts in curves.items():
        m = np.zeros(rgb.shape[:2], np.uint8)
        cv2.polylines(m, [np.array(pts).reshape(-1, 1, 2)], False, 1, 12)
        truth[c] = m > 0
        rgb[truth[c]] = pm.LABEL_COLOURS[c]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, 75])
    assert ok
    back = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    dec = pm.decode_label_image(back)
    for c in pm.CLASSES:
        iou = (dec[c] & truth[c]).sum() / (dec[c] | truth[c]).sum()
        assert iou > 0.85, (c, iou)
        others = np.zeros_like(truth[c])
        for o in pm.CLASSES:
            if o != c:
                others |= truth[o] & ~truth[c]
        assert (dec[c] & others).sum() < 0.02 * truth[c].sum()


def test_shipped_label_image_decodes_to_the_annotated_curves():
    """The shipped P2ILF label image (2 ridge curves, 1 ligament, 2 silhouette curves,
    as seen on the image) decodes to bands ~12 px wide."""
    import cv2

    from LiverLaparoRegLib.sample_data import sample_data_dir
    from LiverLaparoRegLib.learned import p2ilf_metric as pm

    path = (sample_data_dir() / "p2ilf" / "2D_imageLabel_metrics" / "image_labels_GT" /
            "P2ILF22_patient1_12_GT.jpg")
    dec = pm.decode_label_image(cv2.imread(str(path))[..., ::-1])
    for c, parts in (("ridge", 2), ("ligament", 1), ("silhouette", 2)):
        n = cv2.connectedComponents(dec[c].astype(np.uint8), connectivity=8)[0] - 1
        assert n == parts, (c, n)
        width = dec[c].sum() / pm.thin(dec[c]).sum()
        assert 10.0 < width < 15.0, (c, width)
