"""Analytic test meshes shared by the test files (built with VTK, as Slicer would)."""

from __future__ import annotations

import numpy as np


def vtk_sphere(radius: float = 50.0, res: int = 60):
    """A UV sphere centred at 0: ``(vertices (V, 3) float, faces (F, 3) int64)``."""
    import vtk  # noqa: PLC0415
    from vtk.util.numpy_support import vtk_to_numpy  # noqa: PLC0415

    src = vtk.vtkSphereSource()
    src.SetRadius(radius)
    src.SetThetaResolution(res)
    src.SetPhiResolution(res)
    src.Update()
    pd = src.GetOutput()
    return (vtk_to_numpy(pd.GetPoints().GetData()).astype(float),
            vtk_to_numpy(pd.GetPolys().GetConnectivityArray()).reshape(-1, 3).astype(np.int64))
