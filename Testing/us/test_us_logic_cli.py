"""USSliceReg node-level logic (real MRML scene) and the ``surgreg us`` command line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from SurgicalReg2D3DLib.errors import InputError

from test_us_register import SYN_CONFIG, H, W, _frame, _pose, _synthetic_volume


@pytest.fixture()
def synthetic_scene(ctx):
    """Synthetic: the smooth test volume as a node, 3 frames with a tracking offset."""
    from SurgicalReg2D3DLib.nodes import frames_to_sequence, volume_to_node

    vol, ijk = _synthetic_volume()
    truths = [_pose([90 + 5 * k, 10 * k, 0], [0, 2 * k - 3, 1.0]) for k in range(3)]
    frames = np.stack([_frame(vol, ijk, t) for t in truths]).astype(np.float32)
    offset = np.eye(4)
    offset[:3, 3] = [1.5, -1.0, 1.0]
    tracked = np.stack([np.linalg.inv(offset) @ t for t in truths])
    volume_node = volume_to_node(ctx, vol, ijk, "synthetic US volume")
    img_seq, tfm_seq, browser = frames_to_sequence(ctx, frames, tracked, "synthetic sweep")
    return volume_node, img_seq, tfm_seq, browser, offset, frames, tracked, vol, ijk


def test_register_nodes_writes_correction_sequence(ctx, synthetic_scene):
    from USSliceRegLib.logic import register_nodes, results_to_table

    volume_node, img_seq, tfm_seq, browser, offset, *_ = synthetic_scene
    reg, corrections = register_nodes(ctx, volume_node, img_seq, tfm_seq, config=SYN_CONFIG,
                                      browser=browser)
    assert corrections.GetNumberOfDataNodes() == 3
    assert browser.IsSynchronizedSequenceNode(corrections.GetID())
    from SurgicalReg2D3DLib.nodes import matrix_from_transform_node

    for k in range(3):
        np.testing.assert_allclose(matrix_from_transform_node(corrections.GetNthDataNode(k)),
                                   offset, atol=0.05)
    table, chart = results_to_table(ctx, reg)
    assert table.GetNumberOfRows() == 3 and chart.GetNumberOfPlotSeriesNodes() == 2
    assert table.GetTable().GetColumnByName("lncc").GetValue(0) > 0.95


def test_browser_sequences(ctx, synthetic_scene):
    from USSliceRegLib.logic import browser_sequences

    _volume_node, img_seq, tfm_seq, browser, *_ = synthetic_scene
    images, transforms = browser_sequences(browser)
    assert images is img_seq and transforms is tfm_seq
    lonely = ctx.add_node("vtkMRMLSequenceBrowserNode", "frames only")
    lonely.SetAndObserveMasterSequenceNodeID(img_seq.GetID())
    with pytest.raises(InputError, match=r"^US frame sequence: the browser needs a frame "
                                         r"sequence and a synchronised transform sequence"):
        browser_sequences(lonely)


def test_live_node_registration(ctx, synthetic_scene):
    from SurgicalReg2D3DLib.nodes import matrix_from_transform_node
    from USSliceRegLib.logic import LiveNodeRegistration

    volume_node, img_seq, tfm_seq, browser, offset, frames, tracked, *_ = synthetic_scene
    live = LiveNodeRegistration(ctx, volume_node, (H, W), config=SYN_CONFIG)
    for item in range(2):
        browser.SetSelectedItemNumber(item)
        frame_node = browser.GetProxyNode(img_seq)
        res = live.update(frame_node, tracked[item])
    np.testing.assert_allclose(matrix_from_transform_node(live.correction_node), offset, atol=0.05)
    assert res.lncc_start > 0.95  # the 2nd frame started from the 1st frame's correction


def test_reslice_to_frame_node(ctx, synthetic_scene):
    from SurgicalReg2D3DLib.nodes import image2d_from_node, world_matrix
    from USSliceRegLib.logic import reslice_to_frame_node

    volume_node, *_, vol, ijk = synthetic_scene
    pose = _pose([90, 0, 0], [0, 0, 0])
    pose[:3, 1] += 0.05 * pose[:3, 0]  # a skewed calibration, as real US ones are
    node = reslice_to_frame_node(ctx, volume_node, pose, (H, W))
    img, ijk_to_ras = image2d_from_node(node)
    np.testing.assert_allclose(world_matrix(node) @ ijk_to_ras, pose, atol=1e-6)
    np.testing.assert_allclose(img, _frame(vol, ijk, pose), atol=1e-3)
    again = reslice_to_frame_node(ctx, volume_node, _pose([90, 0, 0], [0, 1, 0]), (H, W),
                                  node=node)
    assert again is node and world_matrix(node)[1, 3] != pose[1, 3]


def test_sequence_without_transforms_node_level(ctx, synthetic_scene):
    from USSliceRegLib.logic import register_nodes

    volume_node, img_seq, *_ = synthetic_scene
    empty = ctx.add_node("vtkMRMLSequenceNode", "no transforms")
    with pytest.raises(InputError, match=r"^US transform sequence: has 0 transforms for 3 frames"):
        register_nodes(ctx, volume_node, img_seq, empty)


def test_load_sweep_to_scene_and_missing_calibration(ctx, sample_data):
    from USSliceRegLib.logic import load_sweep_to_scene

    seq = sample_data / "ultrasound" / "SpinePhantomFreehand.igs.mha"
    xml = sample_data / "ultrasound" / "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml"
    browser, skipped = load_sweep_to_scene(ctx, seq, xml)
    assert browser.GetNumberOfItems() == 21 and skipped == []
    with pytest.raises(InputError, match=r"^calibration: missing; SpinePhantomFreehand.igs.mha "
                                         r"has no ImageToProbe transform"):
        load_sweep_to_scene(ctx, seq, None)


# ------------------------------------------------------------------------------ CLI
def _us(sample_data):
    d = sample_data / "ultrasound"
    return (d / "SpinePhantomFreehandReconstructed.mha", d / "SpinePhantomFreehand.igs.mha",
            d / "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml")


def test_cli_register_contract(tmp_path, sample_data, capsys):
    from SurgicalReg2D3DLib.cli import main
    from USSliceRegLib.plus_io import image_to_reference_chain, read_calibration, read_sequence
    from USSliceRegLib.pose_utils import pose_errors

    vol, seq, xml = _us(sample_data)
    chain = image_to_reference_chain(read_sequence(seq), read_calibration(xml))
    # INIT: frame 8 shifted by 2 mm; the other frame starts from its tracked pose.
    init_pose = chain.image_to_reference[8].copy()
    init_pose[:3, 3] += [2.0, 0.0, 0.0]
    init = tmp_path / "init.json"
    init.write_text(json.dumps({"frames": [{"index": 8, "image_to_reference": init_pose.tolist()}]}))
    out = tmp_path / "out.json"
    rc = main(["us", "register", "--volume", str(vol), "--sequence", str(seq), "--calibration",
               str(xml), "--init", str(init), "--frames", "8", "--out", str(out), "--quiet"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["temporal"] is False and data["method"] == "lncc"
    f = data["frames"][0]
    assert f["index"] == 8 and set(f) >= {"image_to_reference", "time_s", "similarity"}
    np.testing.assert_allclose(f["start_image_to_reference"], init_pose)
    # The 2 mm shift is undone (to within 1 mm at the fan centre) against PLUS's volume.
    centre = np.array([410.0, 300.0, 0.0, 1.0])
    _, t_start = pose_errors(init_pose, chain.image_to_reference[8], centre)
    _, t_end = pose_errors(np.array(f["image_to_reference"]), chain.image_to_reference[8], centre)
    assert t_start == pytest.approx(2.0) and t_end < 1.0
    # Each frame carries its trust value (no NaN; this one is correct and judged ok).
    q = f["quality"]
    assert q["verdict"] == "ok", q
    assert set(q["estimate"]) == {"translation_mm", "rotation_deg"}
    assert all(np.isfinite(v) for v in q["estimate"].values())
    assert q["interval"]["translation_mm"][0] <= q["estimate"]["translation_mm"] \
        <= q["interval"]["translation_mm"][1]
    json.dumps(data, allow_nan=False)


def test_cli_register_warns_for_skipped_frames(tmp_path, sample_data, capsys):
    """A frame whose start lies off the volume is not registered: listed as skipped with
    the reason in OUT.json, one warning line on stderr."""
    from SurgicalReg2D3DLib.cli import main
    from USSliceRegLib.plus_io import image_to_reference_chain, read_calibration, read_sequence

    vol, seq, xml = _us(sample_data)
    chain = image_to_reference_chain(read_sequence(seq), read_calibration(xml))
    far = chain.image_to_reference[8].copy()
    far[:3, 3] += [0.0, 0.0, 300.0]
    init = tmp_path / "init.json"
    init.write_text(json.dumps({"frames": [
        {"index": 8, "image_to_reference": far.tolist()},
        {"index": 9, "image_to_reference": chain.image_to_reference[9].tolist()}]}))
    out = tmp_path / "out.json"
    rc = main(["us", "register", "--volume", str(vol), "--sequence", str(seq), "--calibration",
               str(xml), "--init", str(init), "--frames", "8,9", "--out", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().err
    warnings = [line for line in text.splitlines() if line.startswith("warning: frame 8:")]
    assert len(warnings) == 1 and "skipped" in warnings[0] and "no overlap" in warnings[0]
    assert not any(line.startswith("warning: frame 9:") for line in text.splitlines())
    data = json.loads(out.read_text())
    assert [f["index"] for f in data["frames"]] == [9]
    assert data["frames"][0]["quality"]["verdict"] == "ok"
    skipped = data["skipped"]
    assert [s["index"] for s in skipped] == [8] and "no overlap" in skipped[0]["reason"]
    assert skipped[0]["quality"]["verdict"] == "skipped"


def test_cli_errors(tmp_path, sample_data, capsys):
    from SurgicalReg2D3DLib.cli import main

    vol, seq, xml = _us(sample_data)
    rc = main(["us", "register", "--volume", str(vol), "--sequence", str(seq),
               "--out", str(tmp_path / "o.json")])
    assert rc == 2
    assert "surgreg: error: calibration: missing; SpinePhantomFreehand.igs.mha has no " \
           "ImageToProbe transform" in capsys.readouterr().err
    bad = tmp_path / "init.json"
    bad.write_text("{not json")
    rc = main(["us", "register", "--volume", str(vol), "--sequence", str(seq), "--calibration",
               str(xml), "--init", str(bad), "--out", str(tmp_path / "o.json")])
    assert rc == 2 and "error: init file" in capsys.readouterr().err
    rc = main(["us", "register", "--volume", str(vol), "--sequence", str(seq), "--calibration",
               str(xml), "--frames", "3,x", "--out", str(tmp_path / "o.json")])
    assert rc == 2
    assert "surgreg: error: --frames: expected comma-separated integers, got '3,x'" in \
        capsys.readouterr().err


def test_cli_bench_writes_csv(tmp_path, capsys):
    from SurgicalReg2D3DLib.cli import main

    rc = main(["us", "bench", "--holdout", "alternate", "--frames", "7", "--methods", "lncc",
               "--max-mm", "3", "--max-deg", "3", "--seeds", "4,5", "--out-dir", str(tmp_path)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "(seeds [4, 5])" in text and "lncc   frames   2" in text and "ms/frame" in text
    rows = list(csv.DictReader(open(tmp_path / "us_bench.csv")))
    # One start per frame and seed, each drawn from its own seed's stream.
    assert [(r["frame"], r["seed"]) for r in rows] == [("7", "4"), ("7", "5")]
    assert rows[0]["start_rotation_deg"] != rows[1]["start_rotation_deg"]
    assert (tmp_path / "us_bench.png").stat().st_size > 1000
    rc = main(["us", "bench", "--frames", "7", "--seeds", "4,x", "--out-dir", str(tmp_path)])
    assert rc == 2
    assert "surgreg: error: --seeds: expected comma-separated integers, got '4,x'" in \
        capsys.readouterr().err


def test_throughput_bench_protocol():
    """Offline throughput table (real spine sweep, LNCC only, 2 frames): one volume from the
    even frames, only odd held-out frames that volume covers, the given starts, and
    batched poses equal to one-at-a-time poses (also for the repeated-items row)."""
    from USSliceRegLib.bench import default_paths, run_throughput_bench
    from USSliceRegLib.plus_io import image_to_reference_chain, read_calibration, \
        read_sequence
    from USSliceRegLib.pose_utils import perturb_about_point

    seq_path, cal_path, _ = default_paths()
    chain = image_to_reference_chain(read_sequence(seq_path), read_calibration(cal_path))
    truth = {int(i): chain.image_to_reference[k] for k, i in enumerate(chain.indices)}
    centre = np.array([400.0, 300.0, 0.0, 1.0])
    twist = [0.03, -0.02, 0.02, 1.5, -1.0, 1.0]
    # 8: even (in the volume), 11: outside the even frames' volume, 7 and 9: held out.
    starts = {i: perturb_about_point(truth[i], twist, centre) for i in (7, 8, 9, 11)}
    tp = run_throughput_bench(starts, batch_sizes=(1, 0), repeat_items=2, methods=("lncc",))
    assert tp["frames"] == [7, 9] and tp["skipped_frames"] == [11]
    assert tp["train_frames"] == list(range(0, 21, 2))
    rows = tp["rows"]
    assert [(r["batch_size"], r["calls"], r["items"]) for r in rows] == \
        [(1, 2, 2), (2, 1, 2), (4, 1, 4)]
    for r in rows:
        assert r["max_pose_change_vs_b1_mm"] == 0.0
        assert r["mean_rotation_deg"] == rows[0]["mean_rotation_deg"]
        # Both frames start 2.4 deg / 2.1 mm (at the fan centre) off.
        assert r["mean_translation_mm"] == rows[0]["mean_translation_mm"] < 1.0
        assert r["ms_per_frame"] > 0 and "speedup_vs_sitk" not in r
    with pytest.raises(InputError, match=r"batch_sizes: expected sizes >= 1 \(0 = all "
                                         r"frames\), got \[-1\]"):
        run_throughput_bench(starts, batch_sizes=(-1,))
    with pytest.raises(InputError, match="throughput: no odd \\(held-out\\) frame among "
                                         "the given starts"):
        run_throughput_bench({8: starts[8]})


def test_bench_seed_starts_do_not_depend_on_other_seeds():
    """A seed's start for a frame is the same alone or next to other seeds (each seed has
    its own perturbation stream), so pooled runs extend single-seed runs; seeds must be
    distinct."""
    from USSliceRegLib.bench import run_bench

    kw = dict(holdout="alternate", frames=[7], methods=("lncc",), max_mm=3.0, max_deg=3.0)
    both = run_bench(seeds=[4, 5], **kw)
    alone = run_bench(seeds=[5], **kw)
    row5 = [r for r in both["rows"] if r["seed"] == 5][0]
    assert row5["start_rotation_deg"] == alone["rows"][0]["start_rotation_deg"]
    assert row5["start_translation_mm"] == alone["rows"][0]["start_translation_mm"]
    assert set(both["per_seed"]) == {"4", "5"} and both["methods"]["lncc"]["frames"] == 2
    with pytest.raises(InputError, match=r"seeds: expected distinct integers, got \[4, 4\]"):
        run_bench(seeds=[4, 4], **kw)


def test_bench_skips_frames_outside_the_volume_data():
    """Leave-one-out on the real sweep: frame 12 lies in a 4.7 mm gap between frames 11 and
    13, wider than the hole filling, so its true plane has no data in its volume: it is
    skipped and listed, not scored; frame 7 is scored. Only uncovered frames: clear error."""
    from USSliceRegLib.bench import MIN_TRUTH_COVERAGE, run_bench

    s = run_bench(frames=[7, 12], methods=("lncc",), max_mm=3.0, max_deg=3.0)
    assert list(s["skipped_uncovered_frames"]) == [12]
    assert s["skipped_uncovered_frames"][12] < MIN_TRUTH_COVERAGE
    assert [r["frame"] for r in s["rows"]] == [7] and s["methods"]["lncc"]["frames"] == 1
    with pytest.raises(InputError, match=r"^frames: none of \[12\] can be tested \(true "
                                         r"plane outside the volume's data: \[12\]"):
        run_bench(frames=[12], methods=("lncc",))


def test_register_nodes_does_not_apply_failed_frames(ctx, synthetic_scene):
    """Node level (GUI path): a frame of pure noise is judged failed; with
    apply_failed=False its correction in the sequence is the identity (tracked pose kept)
    until apply_corrections writes it; the table has the verdict column."""
    from SurgicalReg2D3DLib.nodes import frames_to_sequence, matrix_from_transform_node
    from USSliceRegLib.logic import apply_corrections, register_nodes, results_to_table

    volume_node, _img, _tfm, _browser, offset, frames, tracked, *_ = synthetic_scene
    frames = frames.copy()
    frames[1] = np.random.default_rng(3).random(frames[1].shape).astype(np.float32) * 200
    img_seq, tfm_seq, browser = frames_to_sequence(ctx, frames, tracked, "noisy sweep")
    reg, corrections = register_nodes(ctx, volume_node, img_seq, tfm_seq, config=SYN_CONFIG,
                                      browser=browser, temporal=False, apply_failed=False)
    verdicts = dict(zip(reg.indices, [q.verdict for q in reg.qualities]))
    assert verdicts[0] == "ok" and verdicts[2] == "ok"
    assert verdicts.get(1, "skipped") in ("failed", "skipped")
    assert any(line.startswith("warning: frame 1:") for line in reg.warnings())
    np.testing.assert_allclose(matrix_from_transform_node(corrections.GetNthDataNode(0)),
                               offset, atol=0.05)
    np.testing.assert_allclose(matrix_from_transform_node(corrections.GetNthDataNode(1)),
                               np.eye(4))
    if 1 in reg.indices:
        assert apply_corrections(reg, corrections, img_seq) == []
        k = reg.indices.index(1)
        np.testing.assert_allclose(matrix_from_transform_node(corrections.GetNthDataNode(1)),
                                   reg.results[k].correction)
    table, _chart = results_to_table(ctx, reg)
    col = table.GetTable().GetColumnByName("verdict")
    assert col is not None and col.GetValue(0) == 0.0
