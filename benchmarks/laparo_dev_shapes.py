"""The SYNTHETIC development shapes of the learned landmark registration (used by
``laparo_learned_dev.py`` and ``laparo_search_misses.py``; see the former's docstring for
what each shape is for): :func:`shape_and_cameras` gives a shape's mesh, its training-mesh
form (landmark labels, view axis) and the camera of each frame. Every shape but ``other``
is built from the training (P2ILF) mesh; ``other`` is a second real liver put in a patient
frame by :func:`rigid_shape_alignment`. Never the held-out liver's frames (``held-out``
exists for diagnosis only).
"""

from __future__ import annotations

import numpy as np

#: the ``twisted`` shape: twist (deg, end to end) about the longest principal axis and
#: the scale factors along the second and third axes
TWIST_DEG, STRETCH = 40.0, (1.15, 0.85)


def twisted_mesh(tm):
    """The ``twisted`` development shape of the training mesh ``tm``
    (``laparo_learned_dev.py``'s docstring):
    ``(MeshData, TrainMesh)``; the view axis of ``tm`` is kept (the frames look at the
    same surface)."""
    from LiverLaparoRegLib.learned import data
    from LiverLaparoRegLib.mesh import MeshData

    v = np.asarray(tm.vertices, float)
    R, c = data.canonical_frame(v)
    x = (v - c) @ R.T                                  # principal axes, longest first
    half = np.abs(x[:, 0]).max()
    a = np.radians(TWIST_DEG / 2.0) * x[:, 0] / half
    y, z = x[:, 1] * STRETCH[0], x[:, 2] * STRETCH[1]
    x2 = np.stack([x[:, 0], np.cos(a) * y - np.sin(a) * z, np.sin(a) * y + np.cos(a) * z], 1)
    mesh = MeshData(x2 @ R + c, np.asarray(tm.faces), name="p2ilf_twisted_dev")
    return mesh, data.train_mesh(mesh, view_axis=tm.view_axis)


#: the ``smooth`` shape: Taubin smoothing (lambda, mu, iterations) of the training mesh
SMOOTH = (0.5, -0.53, 40)


def smooth_mesh(tm):
    """The ``smooth`` development shape of the training mesh ``tm``: Taubin-smoothed
    (:data:`SMOOTH`, uniform neighbour weights; the volume is kept, the ridges and folds
    are rounded), so that the shape is less distinctive: a probe of whether the
    development frames can show the gap between the network and the oracle that the
    held-out liver shows. ``(MeshData, TrainMesh)``, the view axis of ``tm`` kept."""
    from LiverLaparoRegLib.learned import data, shapes
    from LiverLaparoRegLib.mesh import MeshData

    v = np.asarray(tm.vertices, float)
    f = np.asarray(tm.faces, np.int64)
    A = shapes.neighbour_mean(v, f)
    lam, mu, n = SMOOTH
    for _ in range(n):
        v = v + lam * (A @ v - v)
        v = v + mu * (A @ v - v)
    mesh = MeshData(v, f, name="p2ilf_smooth_dev")
    return mesh, data.train_mesh(mesh, view_axis=tm.view_axis)


#: the ``turned`` shape: the angle (deg) between the view axis and the longest principal
#: axis of the shape, as it is seen in the frames (training mesh: 59 deg)
TURN_TO_LONG_AXIS_DEG = 30.0


def turned_mesh(tm):
    """The ``turned`` development shape: the training mesh ``tm`` rigidly rotated about
    its centroid so that the frames, drawn around the view axis of ``tm`` (kept), see it
    along a direction :data:`TURN_TO_LONG_AXIS_DEG` from its longest principal axis
    instead of 59 deg: the training mesh from a side the training frames rarely show (the
    held-out liver's view axis is 28 deg from its own longest axis). The shape is the
    training mesh's; only the side in view and the silhouettes differ. ``(MeshData,
    TrainMesh)``."""
    from LiverLaparoRegLib.learned import data
    from LiverLaparoRegLib.mesh import MeshData

    v = np.asarray(tm.vertices, float)
    R, c = data.canonical_frame(v)
    w0 = np.asarray(tm.view_axis, float) / np.linalg.norm(tm.view_axis)
    e1 = R[0] if R[0] @ w0 >= 0 else -R[0]
    u = w0 - (w0 @ e1) * e1                            # the plane of e1 and w0
    u /= np.linalg.norm(u)
    t = np.radians(TURN_TO_LONG_AXIS_DEG)
    a_new = np.cos(t) * e1 + np.sin(t) * u             # the direction to be seen
    k = np.cross(a_new, w0)                            # rotate a_new onto w0
    Rt = data.rotation(k, np.arctan2(np.linalg.norm(k), a_new @ w0))
    mesh = MeshData((v - c) @ Rt.T + c, np.asarray(tm.faces), name="p2ilf_turned_dev")
    return mesh, data.train_mesh(mesh, view_axis=w0)


#: the ``blob`` shape: Laplacian steps (of 0.5) of the training mesh, then each principal
#: axis stretched back to its original extent
BLOB_STEPS = 150


def blob_mesh(tm):
    """The ``blob`` development shape: the training mesh Laplacian-smoothed until its
    notches and folds are gone (:data:`BLOB_STEPS`; it shrinks), then stretched back to the
    training mesh's extents along each principal axis: a rounded liver-sized shape whose
    outline fits many poses alike; a probe (session 16) for development frames where the
    outline does not fix the pose. ``(MeshData, TrainMesh)``, the view axis of ``tm``
    kept."""
    from LiverLaparoRegLib.learned import data, shapes
    from LiverLaparoRegLib.mesh import MeshData

    v0 = np.asarray(tm.vertices, float)
    f = np.asarray(tm.faces, np.int64)
    # S^k v itself, not shapes.rounded's v - (v - S^k v): the two differ by 1e-14 mm, and
    # the development frames' registrations recorded since session 16 are of this one
    v = shapes.laplacian_smooth(v0, shapes.neighbour_mean(v0, f), BLOB_STEPS)
    mesh = MeshData(shapes.stretched_to(v, v0), f, name="p2ilf_blob_dev")
    return mesh, data.train_mesh(mesh, view_axis=tm.view_axis)


#: the ``sharp`` shape: the training mesh's detail band (Laplacian steps 4 to k) added
#: with gain g, then stretched back to its extents (``shapes.sharpened``)
SHARP = (20, 1.0)


def sharp_mesh(tm):
    """The ``sharp`` development shape: the training mesh ``tm`` with its detail between
    4 and ``SHARP[0]`` Laplacian steps amplified (gain ``SHARP[1]``, as the sharper half of
    ``train --relief`` draws it) and stretched back to its extents: `scale` ridges on 20 %
    of its area (training mesh 8 %, the held-out liver 20 %), a probe (session 18) of
    whether a sharper unseen shape shows the held-out liver's gap. ``(MeshData,
    TrainMesh)``, the view axis of ``tm`` kept."""
    from LiverLaparoRegLib.learned import data, shapes
    from LiverLaparoRegLib.mesh import MeshData

    v0 = np.asarray(tm.vertices, float)
    f = np.asarray(tm.faces, np.int64)
    mesh = MeshData(shapes.sharpened(v0, shapes.neighbour_mean(v0, f), *SHARP), f,
                    name="p2ilf_sharp_dev")
    return mesh, data.train_mesh(mesh, view_axis=tm.view_axis)


def fine_mesh(tm):
    """The ``fine`` development shape: the training mesh ``tm`` with each triangle split
    into four at its edge midpoints (the same surface, 16,002 vertices, mean edge 3.2 mm,
    near the held-out liver's 3.9 mm against the training mesh's 6.4 mm): a probe
    (session 18) of whether the mesh's resolution alone (the `ring` ridge band follows
    it) opens the held-out liver's gap. ``(MeshData, TrainMesh)``, the view axis kept."""
    from LiverLaparoRegLib.learned import data
    from LiverLaparoRegLib.mesh import MeshData

    v = np.asarray(tm.vertices, float)
    f = np.asarray(tm.faces, np.int64)
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    uniq, inv = np.unique(edges, axis=0, return_inverse=True)
    mid = len(v) + inv.reshape(3, -1).T               # midpoint ids of (01, 12, 20)
    a, b, c = f.T
    ab, bc, ca = mid.T
    f2 = np.concatenate([np.stack(t, 1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c),
                                                   (ab, bc, ca))])
    v2 = np.concatenate([v, v[uniq].mean(1)])
    mesh = MeshData(v2, f2, name="p2ilf_fine_dev")
    return mesh, data.train_mesh(mesh, view_axis=tm.view_axis)


def rigid_shape_alignment(a, b, iterations: int = 60):
    """The rotation ``R`` (3x3) that best turns the point set ``a`` onto ``b`` as shapes:
    both centred and scaled to unit RMS radius, point-to-point ICP from each of the 24
    proper rotations that map ``a``'s principal axes onto ``b``'s, the start with the
    lowest symmetric mean closest-point distance kept. ``(R, [score of each start,
    best first])``."""
    import itertools

    from scipy.spatial import cKDTree

    def unit(x):
        x = np.asarray(x, float) - np.mean(x, 0)
        return x / np.sqrt((x ** 2).sum(1).mean())

    a, b = unit(a), unit(b)
    tree = cKDTree(b)
    va, vb = np.linalg.svd(a, full_matrices=False)[2], np.linalg.svd(b, full_matrices=False)[2]
    results = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            M = np.zeros((3, 3))
            M[list(perm), [0, 1, 2]] = signs
            R = vb.T @ M @ va
            if np.linalg.det(R) < 0:
                continue
            t = np.zeros(3)
            for _ in range(iterations):
                x = a @ R.T + t
                y = b[tree.query(x)[1]]
                mx, my = x.mean(0), y.mean(0)
                U, _, Wt = np.linalg.svd((x - mx).T @ (y - my))
                dR = Wt.T @ np.diag([1.0, 1.0, np.linalg.det(Wt.T @ U.T)]) @ U.T
                R, t = dR @ R, dR @ (t - mx) + my
            x = a @ R.T + t
            score = 0.5 * (tree.query(x)[0].mean() + cKDTree(x).query(b)[0].mean())
            results.append((score, R))
    results.sort(key=lambda r: r[0])
    return results[0][1], [r[0] for r in results]


def other_liver_mesh():
    """The ``other`` development shape: a second real liver (the P2ILF repository's
    ``originalMesh/meshGT.obj``, shipped in ``Resources/SampleData/p2ilf``), never in
    training. Its file mixes face orders (``load_mesh`` puts them in one outward order:
    ``mesh.outward_faces``) and is not in the patient frame, so the mesh is turned about its centroid by its
    shape alignment to the held-out liver (:func:`rigid_shape_alignment`; only the
    held-out MESH is used, no frame of it), which puts it in a patient (LPS) frame as the
    module expects of a mesh, and its frames are drawn around the held-out liver's view
    axis (the real SciKit-Surgery laparoscope's direction in that frame).
    ``(MeshData, TrainMesh)``."""
    from LiverLaparoRegLib.learned import data
    from LiverLaparoRegLib.learned.evaluation import held_out_train_mesh
    from LiverLaparoRegLib.mesh import MeshData, load_mesh
    from LiverLaparoRegLib.sample_data import sample_data_dir

    raw = load_mesh(sample_data_dir() / "p2ilf" / "originalMesh" / "meshGT.obj")
    v = np.asarray(raw.vertices, float)
    _, tm_h, _ = held_out_train_mesh()
    R, _ = rigid_shape_alignment(v, tm_h.vertices)
    c = v.mean(0)
    mesh = MeshData((v - c) @ R.T + c, raw.faces, name="p2ilf_other_dev")
    return mesh, data.train_mesh(mesh, view_axis=tm_h.view_axis)


def shape_and_cameras(shape: str):
    """``(mesh, train mesh, camera_of)`` of the frames of ``shape`` (``train``, ``twisted``
    or ``held-out``, the last for diagnosis only): ``camera_of(k)`` is the P2ILF camera
    for even ``k``, the SciKit-Surgery camera for odd ``k`` (as the held-out protocol)."""
    from LiverLaparoRegLib.camera import load_camera
    from LiverLaparoRegLib.learned import data
    from LiverLaparoRegLib.learned.evaluation import held_out_train_mesh
    from LiverLaparoRegLib.mesh import MeshData
    from LiverLaparoRegLib.sample_data import sample_data_dir

    mesh_h, tm_h, cam_sks = held_out_train_mesh()
    cam_p2 = load_camera(sample_data_dir() / "p2ilf" / "cameraparams"
                         / "acquisition-camera-metadata.json")
    from_training_mesh = {"twisted": twisted_mesh, "smooth": smooth_mesh,
                          "turned": turned_mesh, "blob": blob_mesh, "sharp": sharp_mesh,
                          "fine": fine_mesh}
    if shape == "held-out":
        mesh, tm = mesh_h, tm_h
    elif shape in from_training_mesh:
        mesh, tm = from_training_mesh[shape](data.p2ilf_train_mesh())
    elif shape == "other":
        mesh, tm = other_liver_mesh()
    else:
        tm = data.p2ilf_train_mesh()
        mesh = MeshData(np.asarray(tm.vertices), np.asarray(tm.faces), name="development")
    return mesh, tm, (lambda k: cam_p2 if k % 2 == 0 else cam_sks)
