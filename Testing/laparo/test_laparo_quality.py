"""LiverLaparoReg quality value on SYNTHETIC renders of a shipped real mesh (known poses)."""

import json
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from SurgicalReg2D3DLib.cameras import PinholeCamera
from SurgicalReg2D3DLib.cli import main as surgreg_main
from LiverLaparoRegLib import quality as lq
from LiverLaparoRegLib import synthetic
from LiverLaparoRegLib.logic import LaparoResult, register
from LiverLaparoRegLib.mesh import load_mesh


@pytest.fixture(scope="module")
def liver(sample_data):
    mesh = load_mesh(sample_data / "liver_sksurgery" / "liver" / "liver_sub.ply")
    cam = PinholeCamera(fx=250.0, fy=250.0, cx=79.5, cy=59.5, width=160, height=120)
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", (20, -30, 10), degrees=True).as_matrix()
    ext = float(np.ptp(mesh.vertices, axis=0).max())
    T[:3, 3] = [0.0, 0.0, 1.5 * ext] - T[:3, :3] @ mesh.vertices.mean(0)
    case = synthetic.make_case(mesh, cam, T, noise_px=0.5, render=True, seed=0)
    return mesh, cam, T, case


def _rotated(mesh, T, deg, axis=(0, 1, 0)):
    c = T[:3, :3] @ mesh.vertices.mean(0) + T[:3, 3]
    P = np.eye(4)
    P[:3, :3] = Rotation.from_rotvec(np.radians(deg) * np.asarray(axis, float)).as_matrix()
    P[:3, 3] = c - P[:3, :3] @ c
    return P @ T


def _finite(d):
    if isinstance(d, dict):
        return all(_finite(v) for v in d.values())
    if isinstance(d, (list, tuple)):
        return all(_finite(v) for v in d)
    return not isinstance(d, float) or math.isfinite(d)


def test_true_pose_ok_wrong_pose_failed(liver):
    mesh, cam, T, case = liver
    obs = dict(mask=case.mask, contours2d=case.contours2d, contours3d=case.contours3d)
    q = lq.assess(mesh, cam, T, **obs)
    assert q.verdict == "ok", q.summary()
    assert q.estimate["rotation_deg"] < 5 and q.estimate["translation_mm"] < 5
    for k, (lo, hi) in q.interval.items():
        assert lo <= q.estimate[k] <= hi
    bad = lq.assess(mesh, cam, _rotated(mesh, T, 15.0), **obs)
    assert bad.verdict == "failed", bad.summary()
    assert bad.estimate["rotation_deg"] > q.estimate["rotation_deg"]
    assert _finite(q.to_dict()) and _finite(bad.to_dict())
    # contours only and mask only give a verdict too
    assert lq.assess(mesh, cam, _rotated(mesh, T, 15.0), mask=case.mask).verdict == "failed"
    assert lq.assess(mesh, cam, T, contours2d=case.contours2d,
                     contours3d=case.contours3d).verdict == "ok"


def test_out_of_range_and_never_nan(liver):
    mesh, cam, T, case = liver
    behind = T.copy()
    behind[2, 3] -= 2 * (T[:3, :3] @ mesh.vertices.mean(0) + T[:3, 3])[2]
    q = lq.assess(mesh, cam, behind, mask=case.mask)
    assert q.verdict == "failed" and any("behind the camera" in r for r in q.reasons)
    far = T.copy()
    far[2, 3] += 500.0
    q = lq.assess(mesh, cam, far, mask=case.mask)
    assert q.verdict == "failed" and any("laparoscopic range" in r for r in q.reasons)
    q = lq.assess(mesh, cam, np.full((4, 4), np.nan), mask=case.mask)
    assert q.verdict == "failed" and _finite(q.to_dict())
    q = lq.assess(mesh, cam, T)  # nothing to judge by
    assert q.verdict == "doubtful" and _finite(q.to_dict())


def test_retry_keeps_the_better_verdict(liver):
    mesh, cam, T, case = liver
    # a result 8 % too far along the viewing ray; the restart at -8 % starts at the truth
    c = T[:3, :3] @ mesh.vertices.mean(0) + T[:3, 3]
    wrong = T.copy()
    wrong[:3, 3] += 0.08 * c / (1 - 0.08)
    res = LaparoResult(wrong, "silhouette")

    def rerun(start):
        return register(mesh, cam, mask=case.mask, init=start, method="silhouette")

    q, kept, info = lq.assess_and_retry(mesh, cam, res, mask=case.mask, rerun=rerun)
    assert info["attempts"][0]["start"] == "original"
    assert len(info["attempts"]) == 3
    assert info["chosen"] > 0 and kept is not res
    from LiverLaparoRegLib.metrics import pose_errors
    e_kept = pose_errors(kept.model_to_camera, T, mesh.vertices.mean(0))["centroid_error_mm"]
    e_orig = pose_errors(wrong, T, mesh.vertices.mean(0))["centroid_error_mm"]
    assert e_kept < e_orig
    order = ["ok", "doubtful", "failed"]
    assert order.index(q.verdict) <= order.index(info["attempts"][0]["verdict"])
    assert q.signals["attempts"] == info["attempts"]


def test_cli_register_reports_quality_and_warns(liver, tmp_path, capsys):
    import cv2

    mesh, cam, T, case = liver
    K = np.array([[cam.fx, 0, cam.cx], [0, cam.fy, cam.cy], [0, 0, 1]])
    np.savetxt(tmp_path / "K.txt", K)
    cv2.imwrite(str(tmp_path / "mask.png"), case.mask.astype(np.uint8) * 255)
    cv2.imwrite(str(tmp_path / "frame.png"), np.full((120, 160, 3), 90, np.uint8))
    from LiverLaparoRegLib.mesh import save_mesh
    save_mesh(mesh, tmp_path / "liver.ply")
    # a start 40 deg off: the silhouette cannot recover it
    (tmp_path / "init.json").write_text(json.dumps(
        {"model_to_camera": _rotated(mesh, T, 40.0, (1, 0, 0)).tolist()}))
    out = tmp_path / "out.json"
    rc = surgreg_main(["laparo", "register", "--mesh", str(tmp_path / "liver.ply"),
                       "--image", str(tmp_path / "frame.png"), "--camera", str(tmp_path / "K.txt"),
                       "--mask", str(tmp_path / "mask.png"), "--init", str(tmp_path / "init.json"),
                       "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    res = json.loads(out.read_text())
    assert res["quality"]["verdict"] in ("failed", "doubtful")
    assert set(res["quality"]["estimate"]) == {"rotation_deg", "translation_mm"}
    warn = [ln for ln in captured.err.splitlines() if ln.startswith("warning: laparo frame")]
    assert len(warn) == 1 and res["quality"]["verdict"] in warn[0]
    assert "retry" in res  # mask only: the restarts along the viewing ray ran
