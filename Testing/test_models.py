"""Tests of the bundled-model registry (SurgicalReg2D3DLib.models) and the sample-data paths.

All weights here are tiny synthetic tensors written to tmp_path; nothing is trained.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch

from SurgicalReg2D3DLib import models, paths
from SurgicalReg2D3DLib.errors import FileReadError, InputError

# SHA-256 test vector of b"abc" (FIPS 180-2, appendix B.1).
ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def _make_model(folder: Path, name: str = "tiny_synthetic", module: str = "FluoroReg") -> Path:
    """Write a tiny state dict and its manifest into ``folder``; return the weights path."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.pt"
    torch.save({"layer.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
                "layer.bias": torch.tensor([0.5, -1.0])}, weights)
    models.write_manifest(weights, name=name, module=module, task="synthetic test model",
                          created_by_command="pytest Testing/test_models.py", seed=0,
                          training_data="synthetic (not trained)",
                          metrics={"loss": 0.0}, description="test only")
    return weights


def test_fingerprint_matches_known_sha256_vector(tmp_path):
    f = tmp_path / "abc.bin"
    f.write_bytes(b"abc")
    assert models.fingerprint(f) == ABC_SHA256


def test_fingerprint_of_missing_file_raises(tmp_path):
    with pytest.raises(FileReadError, match=r"^model weights file .*nope\.pt: does not exist"):
        models.fingerprint(tmp_path / "nope.pt")


def test_write_manifest_records_size_and_hash(tmp_path):
    weights = _make_model(tmp_path)
    data = json.loads(weights.with_suffix(".json").read_text())
    assert set(data) == set(models.MANIFEST_KEYS)
    assert data["file"] == "tiny_synthetic.pt"
    assert data["size_bytes"] == weights.stat().st_size
    assert data["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_list_and_get_model_from_extra_dir(tmp_path):
    _make_model(tmp_path / "a", name="tiny_fluoro", module="FluoroReg")
    _make_model(tmp_path / "b", name="tiny_us", module="USSliceReg")
    dirs = [tmp_path / "a", tmp_path / "b"]
    names = [m.name for m in models.list_models(extra_dirs=dirs, include_bundled=False)]
    assert names == ["tiny_fluoro", "tiny_us"]
    only_us = models.list_models("USSliceReg", extra_dirs=dirs, include_bundled=False)
    assert [m.name for m in only_us] == ["tiny_us"]
    info = models.get_model("tiny_fluoro", extra_dirs=dirs, include_bundled=False)
    assert info.module == "FluoroReg"
    assert info.weights_path == (tmp_path / "a" / "tiny_fluoro.pt").resolve()
    assert info.seed == 0 and info.metrics == {"loss": 0.0}
    # The bundled folders are searched too by default; our models are still found.
    assert {"tiny_fluoro", "tiny_us"} <= {m.name for m in models.list_models(extra_dirs=dirs)}


def test_model_path_environment_variable(tmp_path, monkeypatch):
    _make_model(tmp_path / "env1", name="env_model_1")
    _make_model(tmp_path / "env2", name="env_model_2", module="LiverLaparoReg")
    monkeypatch.setenv(models.MODEL_PATH_ENV,
                       f"{tmp_path / 'env1'}{os.pathsep}{tmp_path / 'env2'}")
    found = models.list_models(include_bundled=False)
    assert [m.name for m in found] == ["env_model_1", "env_model_2"]
    assert [m.module for m in found] == ["FluoroReg", "LiverLaparoReg"]


def test_load_state_dict_returns_saved_tensors(tmp_path):
    _make_model(tmp_path)
    state = models.load_state_dict("tiny_synthetic", map_location="cpu",
                                   extra_dirs=[tmp_path], include_bundled=False)
    assert sorted(state) == ["layer.bias", "layer.weight"]
    assert torch.equal(state["layer.weight"], torch.tensor([[0., 1., 2.], [3., 4., 5.]]))
    assert torch.equal(state["layer.bias"], torch.tensor([0.5, -1.0]))
    assert state["layer.weight"].device.type == "cpu"


def test_fingerprint_mismatch_is_refused_before_loading(tmp_path):
    weights = _make_model(tmp_path)
    expected = json.loads(weights.with_suffix(".json").read_text())["sha256"]
    # Replace the weights by other (valid) weights: loading must still be refused.
    torch.save({"layer.weight": torch.zeros(2, 3)}, weights)
    actual = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert actual != expected
    with pytest.raises(FileReadError,
                       match=rf"^model weights file .*tiny_synthetic\.pt: sha256 mismatch: "
                             rf"manifest says {expected} .*file has {actual}"):
        models.load_state_dict("tiny_synthetic", extra_dirs=[tmp_path], include_bundled=False)


def test_missing_weights_file(tmp_path):
    weights = _make_model(tmp_path)
    weights.unlink()
    with pytest.raises(FileReadError,
                       match=r"^model weights file .*tiny_synthetic\.pt: does not exist"):
        models.load_state_dict("tiny_synthetic", extra_dirs=[tmp_path], include_bundled=False)


def test_unknown_model_name_lists_available(tmp_path):
    _make_model(tmp_path)
    with pytest.raises(InputError,
                       match=r"^model name: no model called 'other'; available: \['tiny_synthetic'\]"):
        models.get_model("other", extra_dirs=[tmp_path], include_bundled=False)


def test_missing_search_folder_and_bad_module(tmp_path):
    with pytest.raises(FileReadError, match=r"^model search folder .*absent: does not exist"):
        models.list_models(extra_dirs=[tmp_path / "absent"])
    with pytest.raises(InputError, match=r"^module: expected one of .*got 'Foo'"):
        models.list_models("Foo", extra_dirs=[tmp_path], include_bundled=False)


def test_broken_manifests_are_reported(tmp_path):
    weights = _make_model(tmp_path)
    manifest = weights.with_suffix(".json")
    good = json.loads(manifest.read_text())

    manifest.write_text("{not json")
    with pytest.raises(FileReadError, match=r"^model manifest .*tiny_synthetic\.json: not a readable JSON"):
        models.list_models(extra_dirs=[tmp_path], include_bundled=False)

    bad = dict(good)
    del bad["sha256"], bad["seed"]
    manifest.write_text(json.dumps(bad))
    with pytest.raises(FileReadError, match=r"missing keys \['sha256', 'seed'\]"):
        models.read_manifest(manifest)

    bad = dict(good, file="../elsewhere.pt")
    manifest.write_text(json.dumps(bad))
    with pytest.raises(FileReadError, match=r"'file' must be a file name in the manifest's folder"):
        models.read_manifest(manifest)

    bad = dict(good, module="Segmentation")
    manifest.write_text(json.dumps(bad))
    with pytest.raises(FileReadError, match=r"'module' must be one of .*got 'Segmentation'"):
        models.read_manifest(manifest)


def test_duplicate_names_are_refused(tmp_path):
    _make_model(tmp_path / "a", name="same")
    _make_model(tmp_path / "b", name="same")
    with pytest.raises(InputError, match=r"^model name: 'same' is defined twice"):
        models.list_models(extra_dirs=[tmp_path / "a", tmp_path / "b"], include_bundled=False)


def test_weights_holding_code_are_refused(tmp_path):
    """weights_only loading: a pickled arbitrary object is not accepted."""
    weights = tmp_path / "evil.pt"
    torch.save({"fn": shutil.copyfile}, weights)
    models.write_manifest(weights, name="evil", module="FluoroReg", task="t",
                          created_by_command="c", seed=None, training_data="synthetic",
                          metrics={})
    with pytest.raises(FileReadError, match=r"^model weights file .*evil\.pt: cannot be loaded"):
        models.load_state_dict("evil", extra_dirs=[tmp_path], include_bundled=False)


def test_bundled_manifests_are_valid():
    """Every manifest shipped in a *Lib/weights folder parses and matches its weights."""
    for info in models.list_models():
        assert models.verify(info) == info.weights_path


# --- sample data paths ---------------------------------------------------------------------

def test_sample_data_dir_is_found_in_source_tree(sample_data):
    assert paths.sample_data_dir() == sample_data.resolve()


def test_sample_data_dir_env_override_and_failure(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.SAMPLE_DATA_ENV, str(tmp_path))
    assert paths.sample_data_dir() == tmp_path.resolve()
    monkeypatch.setenv(paths.SAMPLE_DATA_ENV, str(tmp_path / "missing"))
    # Falls back to the source tree when the override does not exist.
    assert paths.sample_data_dir().name == "SampleData"
    with pytest.raises(InputError, match=r"^sample data path: expected a relative path"):
        paths.sample_data_path("../pyproject.toml")
    with pytest.raises(FileReadError, match=r"^sample data path: .*nothing\.nrrd does not exist"):
        paths.sample_data_path("ct/nothing.nrrd")


def test_sample_data_sources_point_at_real_files(sample_data):
    import SimpleITK as sitk

    sources = paths.sample_data_sources()
    assert [s["sampleName"] for s in sources] == [d.sample_name for d in paths.SAMPLE_DATASETS]
    for source in sources:
        assert source["category"] == "SurgicalReg2D3D"
        n = len(source["uris"])
        assert n == len(source["fileNames"]) == len(source["nodeNames"]) == len(source["loadFileTypes"])
        for uri, path in zip(source["uris"], source["paths"]):
            parsed = urllib.parse.urlparse(uri)
            assert parsed.scheme == "file"
            local = Path(urllib.request.url2pathname(parsed.path))
            assert local == Path(path) and local.is_file()
            assert sample_data.resolve() in local.parents
        assert Path(source["licence"]).is_file()
        assert len(set(source["fileNames"])) == n
    # The CT data set is the real cropped thorax CT (checked against SimpleITK's header).
    ct = sources[0]
    image = sitk.ReadImage(ct["paths"][0])
    assert image.GetSize() == (120, 126, 164)
    assert image.GetSpacing() == pytest.approx((1.5, 1.5, 1.5))
    # All cache file names are distinct across data sets (SampleData shares one cache).
    all_names = [name for s in sources for name in s["fileNames"]]
    assert len(all_names) == len(set(all_names))


def test_find_sample_dataset():
    assert paths.find_sample_dataset("SurgRegThoraxCT").files == ("ct/thorax_aorta_ct_cropped.nii.gz",)
    with pytest.raises(InputError, match=r"^sample name: unknown sample data set 'X'"):
        paths.find_sample_dataset("X")


def test_sample_datasets_load_with_their_declared_file_types(ctx):
    """Each registered data set loads through the core I/O the way the hub loads it, and
    matches an independent reader (SimpleITK header, OpenCV image, VTK legacy reader)."""
    import cv2
    import SimpleITK as sitk
    import vtk

    from SurgicalReg2D3DLib import io

    image_suffixes = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
    for dataset in paths.SAMPLE_DATASETS:
        for relative, node_name, file_type in zip(dataset.files, dataset.node_names,
                                                  dataset.file_types):
            path = paths.sample_data_path(relative)
            if file_type == "ModelFile":
                node = io.load_model(ctx, path, coordinate_system="LPS", name=node_name)
                reader = vtk.vtkPolyDataReader()
                reader.SetFileName(str(path))
                reader.Update()
                assert node.GetPolyData().GetNumberOfPoints() == reader.GetOutput().GetNumberOfPoints() > 0
            elif path.suffix.lower() in image_suffixes:
                assert file_type == "VolumeFile"
                node = io.load_image2d(ctx, path, name=node_name)
                height, width = cv2.imread(str(path)).shape[:2]
                assert node.GetImageData().GetDimensions() == (width, height, 1)
            else:
                assert file_type == "VolumeFile"
                node = io.load_volume(ctx, path, name=node_name)
                assert node.GetImageData().GetDimensions() == sitk.ReadImage(str(path)).GetSize()
            assert node.GetName() == node_name
