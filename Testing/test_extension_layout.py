"""Layout of the Slicer extension: CMake files, module files, icons, sample-data licences.

Slicer itself is not available here, so the CMake files are checked as text (the commands
a Slicer extension needs), icons are checked from their PNG header bytes, and the sample
data resolver is run on a copy of the installed folder layout.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("SurgicalReg2D3D", "FluoroReg", "LiverLaparoReg", "USSliceReg")
SAMPLE_DATA = ROOT / "Resources" / "SampleData"


def _cmake_text(path: Path) -> str:
    """CMake source without comments (``#`` to end of line)."""
    return "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())


def _png_size(path: Path):
    """(width, height) from the PNG signature and IHDR chunk (PNG spec, section 11.2.2)."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    assert data[12:16] == b"IHDR", f"{path}: first chunk is not IHDR"
    return struct.unpack(">II", data[16:24])


def test_root_cmakelists_declares_the_extension():
    text = _cmake_text(ROOT / "CMakeLists.txt")
    assert re.search(r"cmake_minimum_required\(VERSION 3\.\d+", text)
    # The index: extension name == project(), not starting with "Slicer".
    project = re.search(r"^project\((\w+)\)", text, re.M).group(1)
    assert project == "SurgicalReg2D3D" and not project.startswith("Slicer")
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS",
                "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
                "EXTENSION_DEPENDS"):
        match = re.search(rf'set\({var} "([^"]*)"\)', text)
        assert match and match.group(1).strip(), f"{var} is not set"
    assert 'set(EXTENSION_CATEGORY "Registration")' in text
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text  # PyTorchUtils installs torch
    assert "https://github.com/SlicerSurgicalReg2D3D/SlicerSurgicalReg2D3D" in text
    order = [m.group(1) for m in re.finditer(r"add_subdirectory\((\w+)\)", text)]
    assert order == list(MODULES)
    expected_sequence = ["find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                         "add_subdirectory(SurgicalReg2D3D)",
                         "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                         "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.find(s) for s in expected_sequence]
    assert -1 not in positions, dict(zip(expected_sequence, positions))
    assert positions == sorted(positions)
    # The icon and screenshot URLs resolve to files of this repository (raw URLs of the
    # homepage's repository, branch main); the screenshot is a real PNG, labelled.
    home = re.search(r'set\(EXTENSION_HOMEPAGE "([^"]*)"\)', text).group(1)
    owner_repo = home.split("github.com/", 1)[1].strip("/")
    raw = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    icon_url = re.search(r'set\(EXTENSION_ICONURL "([^"]*)"\)', text).group(1)
    shots = re.search(r'set\(EXTENSION_SCREENSHOTURLS "([^"]*)"\)', text).group(1).split()
    for url in [icon_url] + shots:
        assert url.startswith(raw), url
        assert (ROOT / url[len(raw):]).is_file(), url
        _png_size(ROOT / url[len(raw):])
    assert icon_url.endswith("/SurgicalReg2D3D/Resources/Icons/SurgicalReg2D3D.png")
    assert any(u.endswith("/Resources/Screenshots/SurgicalReg2D3D_demo.png") for u in shots)
    # Contributors: "Name (Organisation)" entries.
    contributors = re.search(r'set\(EXTENSION_CONTRIBUTORS "([^"]*)"\)', text).group(1)
    assert all(re.fullmatch(r"[^()]+ \([^()]+\)", c.strip()) for c in contributors.split(",")), contributors


@pytest.mark.parametrize("module", MODULES)
def test_module_cmakelists_builds_a_scripted_module(module):
    text = _cmake_text(ROOT / module / "CMakeLists.txt")
    assert f"surgreg_add_scripted_module({module})" in text
    root = _cmake_text(ROOT / "CMakeLists.txt")
    assert root.find("include(SurgRegScriptedModule)") < root.find("add_subdirectory(SurgicalReg2D3D)")


def test_shared_cmake_macro_builds_a_scripted_module():
    text = _cmake_text(ROOT / "CMake" / "SurgRegScriptedModule.cmake")
    assert "macro(surgreg_add_scripted_module MODULE_NAME)" in text
    call = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, re.S)
    assert call, "slicerMacroBuildScriptedModule is not called"
    args = call.group(1).split()
    assert args[:2] == ["NAME", "${MODULE_NAME}"]
    assert "WITH_GENERIC_TESTS" in args
    assert args[args.index("SCRIPTS") + 1] == "${MODULE_PYTHON_SCRIPTS}"
    assert args[args.index("RESOURCES") + 1] == "${MODULE_PYTHON_RESOURCES}"
    # What the scripts / resources lists are made of.
    assert re.search(r"set\(MODULE_PYTHON_SCRIPTS\s+\$\{MODULE_NAME\}\.py\s+\$\{MODULE_LIB_SCRIPTS\}", text)
    assert "${CMAKE_CURRENT_SOURCE_DIR}/${MODULE_NAME}Lib/*.py" in text
    for pattern in ("Resources/Icons/*.png", "Resources/UI/*.ui", "${MODULE_NAME}Lib/*.json"):
        assert f"${{CMAKE_CURRENT_SOURCE_DIR}}/{pattern}" in text, pattern
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


@pytest.mark.parametrize("module", MODULES)
def test_module_has_py_ui_icon_and_lib(module):
    folder = ROOT / module
    missing = [str(p.relative_to(ROOT)) for p in (
        folder / f"{module}.py",
        folder / "Resources" / "UI" / f"{module}.ui",
        folder / "Resources" / "Icons" / f"{module}.png",
        folder / f"{module}Lib" / "__init__.py",
    ) if not p.is_file()]
    assert missing == [], f"missing files: {missing}"
    assert _png_size(folder / "Resources" / "Icons" / f"{module}.png") == (128, 128)


def test_module_icons_are_distinct():
    icons = [(ROOT / m / "Resources" / "Icons" / f"{m}.png").read_bytes() for m in MODULES]
    assert len(set(icons)) == len(MODULES)


def test_every_sample_data_folder_has_a_licence():
    folders = sorted(p for p in SAMPLE_DATA.iterdir() if p.is_dir())
    assert [f.name for f in folders] == ["ct", "liver_sksurgery", "p2ilf", "ultrasound"]
    for folder in folders:
        licences = [p for p in folder.iterdir() if p.is_file() and p.name.startswith("LICENSE")]
        assert licences, f"{folder.relative_to(ROOT)} has no LICENSE file"
        assert all(p.stat().st_size > 500 for p in licences), licences
    assert (SAMPLE_DATA / "README.md").is_file()


def test_hub_cmake_installs_sample_data_where_paths_looks():
    """The hub CMake installs Resources/SampleData next to the installed module files, and
    SurgicalReg2D3DLib.paths finds it there (simulated installed tree, fresh interpreter)."""
    text = _cmake_text(ROOT / "SurgicalReg2D3D" / "CMakeLists.txt")
    assert "${CMAKE_CURRENT_SOURCE_DIR}/../Resources/SampleData" in text
    assert re.search(r"install\(DIRECTORY \$\{SURGREG_SAMPLE_DATA_DIR\}\s+DESTINATION "
                     r"\$\{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR\}/Resources", text)
    # The build tree gets the same copy (Slicer run from the build folder).
    assert re.search(r"file\(COPY \$\{SURGREG_SAMPLE_DATA_DIR\}\s+DESTINATION "
                     r"\$\{CMAKE_BINARY_DIR\}/\$\{Slicer_QTSCRIPTEDMODULES_LIB_DIR\}/Resources", text)


def test_paths_finds_sample_data_in_installed_layout(tmp_path):
    """Scripts are installed to <qt-scripted-modules>/SurgicalReg2D3DLib and
    install(DIRECTORY .../SampleData DESTINATION <qt-scripted-modules>/Resources) copies the
    folder itself, so the data is at <qt-scripted-modules>/Resources/SampleData. Rebuild that
    layout and ask paths.py, imported from the copy in a fresh interpreter."""
    installed = tmp_path / "lib" / "Slicer-5.8" / "qt-scripted-modules"
    lib = installed / "SurgicalReg2D3DLib"
    lib.mkdir(parents=True)
    for name in ("__init__.py", "errors.py", "paths.py"):
        shutil.copy(ROOT / "SurgicalReg2D3D" / "SurgicalReg2D3DLib" / name, lib / name)
    data = installed / "Resources" / "SampleData" / "ct"
    data.mkdir(parents=True)
    (data / "thorax_aorta_ct_cropped.nii.gz").write_bytes(b"placeholder for the test")
    code = ("import SurgicalReg2D3DLib.paths as p; print(p.__file__); "
            "print(p.sample_data_dir()); print(p.sample_data_path('ct/thorax_aorta_ct_cropped.nii.gz'))")
    env = dict(os.environ, PYTHONPATH=str(installed))
    env.pop("SURGREG_SAMPLE_DATA", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, text=True,
                         capture_output=True, check=True).stdout.split("\n")
    assert Path(out[0]) == lib / "paths.py"  # the copy was imported, not the source tree
    assert Path(out[1]) == (installed / "Resources" / "SampleData").resolve()
    assert Path(out[2]) == (data / "thorax_aorta_ct_cropped.nii.gz").resolve()


@pytest.mark.parametrize("module", MODULES)
def test_module_metadata_follows_the_index_conventions(module):
    """Contributors as "Name (Organisation)"; the registration modules depend on the hub."""
    import ast

    tree = ast.parse((ROOT / module / f"{module}.py").read_text())
    values = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Attribute)
                and node.targets[0].attr in ("contributors", "dependencies")):
            values[node.targets[0].attr] = ast.literal_eval(node.value)
    assert values["contributors"] and all(re.fullmatch(r"[^()]+ \([^()]+\)", c)
                                          for c in values["contributors"]), values
    if module != "SurgicalReg2D3D":
        assert "SurgicalReg2D3D" in values["dependencies"], values


def test_sample_data_is_registered_with_checksums_and_a_category():
    """SampleData copies a file again when its checksum differs: the committed SHA-256
    digests must be those of the shipped files."""
    import hashlib

    from SurgicalReg2D3DLib.paths import SAMPLE_DATA_CATEGORY, SAMPLE_DATASETS, sample_data_sources

    for dataset in SAMPLE_DATASETS:
        assert len(dataset.sha256) == len(dataset.files), dataset.sample_name
        for rel, digest in zip(dataset.files, dataset.sha256):
            assert hashlib.sha256((SAMPLE_DATA / rel).read_bytes()).hexdigest() == digest, rel
    for source in sample_data_sources():
        assert source["category"] == SAMPLE_DATA_CATEGORY == "SurgicalReg2D3D"
        assert len(source["checksums"]) == len(source["uris"])
        assert all(re.fullmatch(r"SHA256:[0-9a-f]{64}", c) for c in source["checksums"])
    hub = (ROOT / "SurgicalReg2D3D" / "SurgicalReg2D3D.py").read_text()
    assert 'checksums=source["checksums"]' in hub and 'category=source["category"]' in hub


def test_self_tests_find_data_through_paths_and_skip_without_dependencies():
    """Issue #21: no "<module dir>/../Resources/SampleData" (source tree only), no silent
    pass: the self-tests use sample_data_path and skipTest with the missing packages."""
    for module in MODULES[1:]:
        text = (ROOT / module / f"{module}.py").read_text()
        test_part = text[text.index(f"class {module}Test"):]
        assert "sample_data_path(" in test_part, module
        assert '"..", "Resources", "SampleData"' not in text, module
        assert "self.skipTest(" in test_part and "missingDependencies(" in test_part, module
        assert "logging.warning" not in test_part and "return\n" not in test_part.split("def test_", 1)[1].split("self.delayDisplay", 1)[0], module
