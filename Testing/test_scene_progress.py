"""The standalone MRML scene (slicer-core) and the progress/cancel helpers."""

from __future__ import annotations

import numpy as np
import pytest

from SurgicalReg2D3DLib.errors import CancelledError, FileReadError, GeometryError, InputError
from SurgicalReg2D3DLib.progress import CancelToken, check_cancel, report, sub_progress
from SurgicalReg2D3DLib.scene import SceneContext, in_slicer_application


def test_scene_has_module_logics(ctx):
    for name in ["Volumes", "Models", "Transforms", "Markups", "Sequences", "Segmentations"]:
        logic = ctx.logic(name)
        assert logic.GetMRMLScene() is ctx.scene
    with pytest.raises(KeyError, match="no logic for module 'Nope'"):
        ctx.logic("Nope")


def test_scene_loads_real_ct_with_its_geometry(ctx, sample_data):
    import SimpleITK as sitk

    path = str(sample_data / "ct" / "thorax_aorta_ct_cropped.nii.gz")
    node = ctx.logic("Volumes").AddArchetypeVolume(path, "ct", 0)
    assert node is not None and node.GetScene() is ctx.scene
    image = sitk.ReadImage(path)
    assert node.GetImageData().GetDimensions() == image.GetSize()
    np.testing.assert_allclose(node.GetSpacing(), image.GetSpacing(), rtol=1e-6)
    # MRML stores RAS, ITK LPS: the origin differs by the sign of x and y.
    lps_origin = np.array(image.GetOrigin())
    np.testing.assert_allclose(node.GetOrigin(), lps_origin * [-1, -1, 1], atol=1e-4)


def test_add_node_and_not_in_slicer(ctx):
    node = ctx.add_node("vtkMRMLLinearTransformNode", "t")
    assert node.GetName() == "t" and ctx.scene.GetNodeByID(node.GetID()) is node
    with pytest.raises(ValueError, match="cannot create MRML node of class 'vtkNotANode'"):
        ctx.add_node("vtkNotANode")
    assert not in_slicer_application()
    assert isinstance(SceneContext.current(), SceneContext)


def test_cancel_token_and_progress():
    seen = []
    report(lambda f, m: seen.append((f, m)), 1.5, "done")
    sub = sub_progress(lambda f, m: seen.append((f, m)), 0.5, 1.0)
    sub(0.5, "half")
    assert seen == [(1.0, "done"), (0.75, "half")]
    token = CancelToken()
    check_cancel(token)  # not cancelled: nothing happens
    token.cancel()
    with pytest.raises(CancelledError, match="registration was cancelled"):
        check_cancel(token, "registration")
    with pytest.raises(CancelledError):
        check_cancel(lambda: True)


def test_error_hierarchy():
    assert issubclass(GeometryError, InputError) and issubclass(InputError, ValueError)
    assert issubclass(FileReadError, OSError)
