"""``surgreg demo`` part of USSliceReg (quick mode) on the shipped real sweep."""

from __future__ import annotations

import csv


def test_demo_quick_writes_pictures_and_metrics(tmp_path):
    from USSliceRegLib.demo import run_demo

    metrics = run_demo(tmp_path, quick=True)
    for name in ("us_overlays.png", "us_errors.png", "us_demo.csv"):
        assert (tmp_path / name).stat().st_size > 300, name
    rows = list(csv.DictReader(open(tmp_path / "us_demo.csv")))
    assert [int(r["frame"]) for r in rows] == [7, 9]
    assert metrics["frames"] == 2 and metrics["lncc"]["frames"] == 2
    # Held-out frames from starts up to 10 mm / 10 deg: the registration must not make
    # things worse on average (the figures themselves are reported, not asserted).
    start = metrics["start"]
    assert metrics["lncc"]["mean_translation_mm"] < start["mean_translation_mm"] + 0.5
    for r in rows:
        assert float(r["lncc"]) >= float(r["lncc_start"]) - 1e-3
