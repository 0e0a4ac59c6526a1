"""File reading and writing through MRML storage nodes and module logics (SimpleITK where
MRML cannot read a format outside the Slicer application).

All ``load_*`` functions add new nodes to the scene of a
:class:`~SurgicalReg2D3DLib.scene.SceneContext` and return them; ``save_*`` functions
write a node with a temporary storage node, so the node itself (including its own
storage node) is not modified. Input files are only read.

Coordinate conventions (see ``docs/architecture.md``):

- Volumes: MRML converts the file's LPS geometry (ITK, NRRD, NIfTI, DICOM) to RAS:
  ``ijk_to_ras = diag(-1, -1, 1, 1) @ ijk_to_lps``.
- 2D images (:func:`load_image2d`): a single-slice volume; array row 0 (``j = 0``) is the
  first row stored in the file (the top row of a PNG/JPG), column 0 (``i = 0``) the first
  column. Geometry is the file's as SimpleITK reads it, LPS converted to RAS (PNG/JPG/BMP:
  origin 0, identity direction in LPS, so ``ijk_to_ras = diag(-sx, -sy, 1, 1)``; the
  spacing comes from the file's DPI metadata when present, e.g. 0.3528 mm for 72 dpi,
  else 1). Registration code should use pixel indices, not this spacing.
- Meshes: a mesh file has no frame; Slicer assumes LPS unless the file says otherwise
  (Slicer writes a ``SPACE=`` comment into VTK/VTP/STL/OBJ/PLY files). With
  :func:`load_model` ``coordinate_system="LPS"`` (Slicer's default) the node's RAS
  vertices are the file's with x and y negated; with ``"RAS"`` they are the file's
  coordinates as they are. :func:`load_mesh_arrays` gives the file's coordinates and
  vertex order exactly, without a node (use this for the "model" frame of a mesh);
  :func:`mesh_file_coordinate_system` reads the ``SPACE=`` comment.
- Transforms: ITK transform files (.h5/.tfm/.txt/.mat) hold LPS "from parent"
  (fixed-to-moving, resampling) transforms; MRML converts them, so
  :func:`SurgicalReg2D3DLib.nodes.matrix_from_transform_node` still returns the RAS
  "to parent" matrix. For an ITK file with transform ``T_lps`` (point ``p`` in LPS maps to
  ``T_lps(p)``): ``inv(to_parent) = diag(-1,-1,1,1) @ T_lps @ diag(-1,-1,1,1)``.
- Markups: Markups JSON stores the coordinate system per file; MRML converts to RAS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from .errors import FileReadError, InputError
from .nodes_base import LPS_TO_RAS, _check_node, _node_label
from .nodes_models import _polydata_triangles, check_mesh
from .nodes_volumes import _ensure_volume_display, volume_to_node

_MODEL_EXTENSIONS = (".vtk", ".vtp", ".stl", ".obj", ".ply")
_IMAGE2D_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_COORDINATE_SYSTEMS = ("LPS", "RAS")


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _existing_path(path, what: str, folder: bool = False) -> Path:
    """``path`` as an absolute Path; FileReadError unless it is an existing file (folder)."""
    kind = "folder" if folder else "file"
    if path is None or str(path) == "":
        raise FileReadError(f"{what}: no {'folder' if folder else 'file name'} given")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileReadError(f"{what}: file not found: {p}")
    if not (p.is_dir() if folder else p.is_file()):
        raise FileReadError(f"{what}: not a {kind}: {p}")
    return p.resolve()


def _existing_file(path, what: str) -> Path:
    return _existing_path(path, what)


def _output_file(path, what: str) -> Path:
    if path is None or str(path) == "":
        raise InputError(f"{what}: no output file name given")
    p = Path(path).expanduser().resolve()
    if not p.parent.is_dir():
        raise FileReadError(f"{what}: output folder does not exist: {p.parent}")
    return p


def _stem(path: Path) -> str:
    """File name without its (possibly double) extension."""
    name = path.name
    for ext in (".nii.gz", ".seq.nrrd", ".seq.mha", ".mrk.json", ".igs.mha", ".igs.nrrd"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _suffix(path: Path) -> str:
    return path.name.lower()[len(_stem(path)):]


def _message_text(messages) -> str:
    """Text of a vtkMRMLMessageCollection (empty if none)."""
    try:
        text = messages.GetAllMessagesAsString()
    except AttributeError:
        return ""
    return " ".join(str(text).split())


def _sitk_image_info(path: Path, what: str):
    """SimpleITK reader with the header read (no pixels); FileReadError if unreadable."""
    import SimpleITK as sitk  # noqa: PLC0415

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise FileReadError(f"{what}: cannot read image file (unknown format or corrupt): "
                            f"{path}") from None
    return reader


def _check_header_geometry(reader, what: str, path: Path) -> None:
    """GeometryError for a file whose header has zero/negative/absurd spacing, a direction
    matrix that is not orthonormal or a non-finite origin (checked on SimpleITK's header,
    before MRML reads it; the shared rule of :func:`SurgicalReg2D3DLib.checks.check_geometry`)."""
    from .checks import check_sitk_geometry  # noqa: PLC0415

    check_sitk_geometry(reader, what, path)


def _check_complete(path: Path, what: str) -> None:
    """FileReadError for a file cut short (fewer data bytes than its header declares)."""
    from .checks import check_file_complete  # noqa: PLC0415

    check_file_complete(path, what)


def sitk_ijk_to_lps(image) -> np.ndarray:
    """float64 (4, 4) index -> LPS of a 2D or 3D SimpleITK image (2D: k axis = +S, 1 mm)."""
    dim = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    origin = np.array(image.GetOrigin(), dtype=np.float64)
    m = np.eye(4)
    m[:dim, :dim] = direction * spacing
    m[:dim, 3] = origin
    return m


def _sitk_to_array(image) -> np.ndarray:
    """Pixels of a SimpleITK image as (K, J, I[, C]) (or (J, I[, C]) for 2D), a copy."""
    import SimpleITK as sitk  # noqa: PLC0415

    return np.array(sitk.GetArrayFromImage(image), copy=True)


# --------------------------------------------------------------------------------------
# volumes
# --------------------------------------------------------------------------------------
def load_volume(ctx, path, name: Optional[str] = None):
    """Load a 3D volume file (NRRD, NIfTI .nii/.nii.gz, MHA/MHD) with the Volumes logic.

    Returns a ``vtkMRMLScalarVolumeNode`` (``vtkMRMLVectorVolumeNode`` for multi-component
    voxels) in RAS. A 2D image (one slice) is an :class:`InputError`; use
    :func:`load_image2d`. For a DICOM folder use :func:`load_dicom_series`. Zero or
    negative spacing and a non-orthonormal direction matrix in the header are a
    :class:`GeometryError`.

    A file whose index axes are left-handed (``det(direction) < 0``) is stored by MRML
    with its slice axis reversed (right-handed ``ijk_to_ras``): the voxel indices then
    differ from SimpleITK's, but every voxel keeps its physical position and value.
    """
    what = "volume file"
    p = _existing_file(path, what)
    reader = _sitk_image_info(p, what)
    _check_complete(p, what)
    size = reader.GetSize()
    if reader.GetDimension() == 2 or (reader.GetDimension() == 3 and size[2] == 1):
        raise InputError(f"{what}: expected a 3D volume, got a 2D image of size "
                         f"{size[0]} x {size[1]}: {p}")
    if reader.GetDimension() > 3:
        raise InputError(f"{what}: expected a 3D volume, got a {reader.GetDimension()}D "
                         f"image: {p}")
    _check_header_geometry(reader, what, p)
    import slicer  # noqa: PLC0415
    import vtk  # noqa: PLC0415

    messages = slicer.vtkMRMLMessageCollection()
    files = vtk.vtkStringArray()
    # loading options: bit 2 = single file (no globbing of numbered series),
    # bit 3 = automatic window/level.
    # The 4-argument form: Slicer 5.8/5.10 wrap only the 2-, 3- and 4-argument overloads
    # (the 5-argument one with a message collection exists in slicer-core only).
    node = ctx.logic("Volumes").AddArchetypeVolume(str(p), name or _stem(p), 4 | 8, files)
    if node is None or node.GetImageData() is None:
        detail = _message_text(messages)
        raise FileReadError(f"{what}: cannot read volume: {p}" + (f" ({detail})" if detail
                                                                   else ""))
    _ensure_volume_display(ctx, node)
    return node


def save_volume(node, path, compress: bool = True) -> Path:
    """Write a volume node (its local geometry; parent transforms are not applied).

    The format follows the extension (.nrrd, .nii, .nii.gz, .mha, .mhd). The node and
    its own storage node are not modified. Returns the written path.
    """
    what = "volume"
    _check_node(node, "vtkMRMLVolumeNode", what, "volume")
    if node.GetImageData() is None:
        raise InputError(f"{what}: volume node '{_node_label(node)}' has no image data")
    p = _output_file(path, what)
    storage = node.CreateDefaultStorageNode()
    storage.SetFileName(str(p))
    storage.SetUseCompression(1 if compress else 0)
    if not storage.WriteData(node) or not p.exists():
        raise FileReadError(f"{what}: cannot write volume '{_node_label(node)}' to {p}")
    return p


def load_dicom_series(ctx, directory, name: Optional[str] = None,
                      allow_uneven_slices: bool = False):
    """Load the largest DICOM series of a folder (SimpleITK/GDCM) as a RAS volume node.

    Slices are sorted by GDCM along the slice normal; ``ijk_to_ras = diag(-1,-1,1,1) @``
    SimpleITK's index-to-LPS matrix. Rescale slope/intercept are applied (SimpleITK).
    A series with a missing, unreadable or duplicated slice (uneven positions along the
    normal) is an :class:`InputError` unless ``allow_uneven_slices`` (then a warning is
    printed and the volume has SimpleITK's mean spacing).
    """
    import SimpleITK as sitk  # noqa: PLC0415

    what = "DICOM folder"
    d = _existing_path(directory, what, folder=True)
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d))
    if not series_ids:
        raise FileReadError(f"{what}: no DICOM series found in {d}")
    files_by_series = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), sid)
                       for sid in series_ids}
    best = max(series_ids, key=lambda sid: len(files_by_series[sid]))
    files = files_by_series[best]
    if len(files) < 2:
        raise InputError(f"{what}: expected a 3D volume, the largest series has a single "
                         f"slice: {d}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise FileReadError(f"{what}: cannot read DICOM series {best} in {d} "
                            f"({str(exc).strip().splitlines()[-1]})") from None
    _check_series(reader, image, what, d, allow_uneven_slices)
    array = _sitk_to_array(image)
    ijk_to_ras = LPS_TO_RAS @ sitk_ijk_to_lps(image)
    return volume_to_node(ctx, array, ijk_to_ras, name or d.name)


def _check_series(reader, image, what: str, folder: Path, allow_uneven: bool) -> None:
    """Even slice positions (see :func:`SurgicalReg2D3DLib.checks.check_sitk_series`) and
    the shared geometry rule; with ``allow_uneven`` the problem is printed as a warning."""
    import sys  # noqa: PLC0415

    from .checks import check_sitk_geometry, check_sitk_series  # noqa: PLC0415

    warning = check_sitk_series(reader, what, folder, allow_uneven)
    if warning:
        print(f"warning: {warning}; going on as asked (allow_uneven_slices)", file=sys.stderr)
    check_sitk_geometry(image, what, folder)


def load_image2d(ctx, path, name: Optional[str] = None):
    """Load a 2D image (PNG, JPG, BMP, TIFF, or a one-slice NRRD/MHA/DICOM file).

    Returns a single-slice volume node: ``vtkMRMLScalarVolumeNode`` for grayscale,
    ``vtkMRMLVectorVolumeNode`` for RGB/RGBA. Row order: ``arrayFromVolume(node)[0, r, c]``
    is the pixel in row ``r`` (counted from the first row stored in the file, i.e. the top
    of a PNG/JPG) and column ``c``. Geometry is SimpleITK's, LPS converted to RAS. A volume
    with more than one slice is an :class:`InputError`.
    """
    what = "image file"
    p = _existing_file(path, what)
    reader = _sitk_image_info(p, what)
    _check_complete(p, what)
    size = reader.GetSize()
    dim = reader.GetDimension()
    if dim > 3 or (dim == 3 and size[2] != 1):
        dims = " x ".join(str(s) for s in size)
        raise InputError(f"{what}: expected a 2D image, got a volume of {dims}: {p}")
    components = reader.GetNumberOfComponents()
    if components not in (1, 2, 3, 4):
        raise InputError(f"{what}: expected a grayscale or RGB(A) image, got "
                         f"{components} components per pixel: {p}")
    _check_header_geometry(reader, what, p)
    try:
        image = reader.Execute()
    except RuntimeError:
        raise FileReadError(f"{what}: cannot read image file (corrupt): {p}") from None
    array = _sitk_to_array(image)
    if dim == 2:
        array = array[None]
    if array.size == 0:
        raise InputError(f"{what}: image is empty: {p}")
    ijk_to_lps = sitk_ijk_to_lps(image)
    if dim == 2:
        # a 2D image's slice axis: the normal of its plane (right-handed), 1 mm.
        ijk_to_lps[:3, 2] = np.cross(ijk_to_lps[:3, 0], ijk_to_lps[:3, 1])
        ijk_to_lps[:3, 2] /= np.linalg.norm(ijk_to_lps[:3, 2])
    node = volume_to_node(ctx, array, LPS_TO_RAS @ ijk_to_lps, name or _stem(p))
    node.SetAttribute(SOURCE_FILE_ATTRIBUTE, str(p))  # e.g. the X-ray's DICOM tags
    return node


#: Node attribute naming the file a 2D image node was read from (``load_image2d``).
SOURCE_FILE_ATTRIBUTE = "SurgicalReg2D3D.SourceFile"


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------
def _coordinate_system_id(coordinate_system: str, what: str) -> int:
    import slicer  # noqa: PLC0415

    if coordinate_system not in _COORDINATE_SYSTEMS:
        raise InputError(f"{what}: coordinate_system must be 'LPS' or 'RAS', "
                         f"got {coordinate_system!r}")
    return (slicer.vtkMRMLStorageNode.CoordinateSystemLPS if coordinate_system == "LPS"
            else slicer.vtkMRMLStorageNode.CoordinateSystemRAS)


def load_model(ctx, path, coordinate_system: str = "LPS", name: Optional[str] = None):
    """Load a mesh file (VTK, VTP, STL, OBJ, PLY) as a model node (stored in RAS).

    ``coordinate_system`` is the frame the file's coordinates are assumed to be in when the
    file does not say (Slicer-written files do): "LPS" (Slicer's default; node vertices =
    file vertices with x, y negated) or "RAS" (node vertices = file vertices as they are).
    Note that VTK's OBJ reader duplicates vertices that carry several normals/texture
    coordinates; :func:`load_mesh_arrays` keeps the file's vertex list.
    """
    what = "model file"
    cs = _coordinate_system_id(coordinate_system, what)
    p = _existing_file(path, what)
    if _suffix(p) not in _MODEL_EXTENSIONS:
        raise FileReadError(f"{what}: unsupported extension '{_suffix(p)}' (expected one of "
                            f"{', '.join(_MODEL_EXTENSIONS)}): {p}")
    _check_complete(p, what)
    import slicer  # noqa: PLC0415

    messages = slicer.vtkMRMLMessageCollection()
    before = _node_ids(ctx.scene)
    node = ctx.logic("Models").AddModel(str(p), cs, messages)
    if node is None or node.GetPolyData() is None or node.GetPolyData().GetNumberOfPoints() == 0:
        _remove_new_nodes(ctx.scene, before)  # the model and its display/storage nodes
        detail = _message_text(messages)
        raise FileReadError(f"{what}: cannot read mesh (corrupt or empty): {p}"
                            + (f" ({detail})" if detail else ""))
    if name:
        node.SetName(name)
    return node


def _node_ids(scene) -> set:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _remove_new_nodes(scene, before: set) -> None:
    """Remove the nodes added to ``scene`` since ``before`` (:func:`_node_ids`)."""
    for node_id in sorted(_node_ids(scene) - before):
        node = scene.GetNodeByID(node_id)
        if node is not None:
            scene.RemoveNode(node)


def save_model(node, path, coordinate_system: str = "LPS") -> Path:
    """Write a model node (VTK, VTP, STL, OBJ, PLY by extension) in ``coordinate_system``.

    With "LPS" (Slicer's default) the file's x, y are the node's RAS x, y negated; the
    frame is also written into the file header, so :func:`load_model` reads it back to the
    same RAS vertices whatever its ``coordinate_system``. Returns the written path.
    """
    import slicer  # noqa: PLC0415

    what = "model"
    cs = _coordinate_system_id(coordinate_system, what)
    _check_node(node, "vtkMRMLModelNode", what, "model")
    if node.GetPolyData() is None or node.GetPolyData().GetNumberOfPoints() == 0:
        raise InputError(f"{what}: model '{_node_label(node)}' has no points")
    p = _output_file(path, what)
    if _suffix(p) not in _MODEL_EXTENSIONS:
        raise InputError(f"{what}: unsupported extension '{_suffix(p)}' (expected one of "
                         f"{', '.join(_MODEL_EXTENSIONS)})")
    storage = slicer.vtkMRMLModelStorageNode()
    storage.SetFileName(str(p))
    storage.SetCoordinateSystem(cs)
    if not storage.WriteData(node) or not p.exists():
        raise FileReadError(f"{what}: cannot write model '{_node_label(node)}' to {p}")
    return p


def _read_obj(path: Path, what: str) -> Tuple[np.ndarray, np.ndarray]:
    """Vertices ('v' lines, in order) and fan-triangulated faces of an OBJ file."""
    vertices, faces = [], []
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        for line_number, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                if parts[0] == "v":
                    if len(parts) < 4:
                        raise ValueError("a vertex needs 3 coordinates")
                    vertices.append([float(x) for x in parts[1:4]])
                elif parts[0] == "f":
                    if len(parts) < 4:
                        raise ValueError("a face needs 3 vertices")
                    idx = []
                    for token in parts[1:]:
                        i = int(token.split("/")[0])
                        idx.append(i - 1 if i > 0 else len(vertices) + i)
                    for a in range(1, len(idx) - 1):
                        faces.append([idx[0], idx[a], idx[a + 1]])
            except (ValueError, IndexError):
                raise FileReadError(f"{what}: cannot parse line {line_number} of {path} "
                                    "(malformed, or the file is cut short)") from None
    v = np.array(vertices, dtype=np.float64).reshape(-1, 3)
    f = np.array(faces, dtype=np.int64).reshape(-1, 3)
    return v, f


def mesh_file_coordinate_system(path) -> str:
    """The coordinate system a mesh file declares in its header (the ``SPACE=LPS`` /
    ``SPACE=RAS`` comment Slicer writes into the VTK, VTP, STL, OBJ and PLY files it
    saves): "LPS", "RAS", or "" when the file does not say or cannot be read (Slicer then
    assumes LPS). Reads the first 4 kB only."""
    import re  # noqa: PLC0415

    try:
        with open(path, "rb") as fh:
            head = fh.read(4096).decode("latin-1")
    except OSError:
        return ""
    found = {f.upper() for f in re.findall(r"SPACE\s*=\s*(LPS|RAS)\b", head, re.IGNORECASE)}
    return found.pop() if len(found) == 1 else ""


def load_mesh_arrays(path, name: str = "mesh file") -> Tuple[np.ndarray, np.ndarray]:
    """Vertices (N, 3) float64 and triangles (F, 3) int64 exactly as in a mesh file.

    No LPS/RAS flip and no node: coordinates are the file's ("model" frame). OBJ files
    are parsed directly (vertex order of the 'v' lines, polygons fan-triangulated); VTK,
    VTP, PLY and STL are read with VTK readers (STL points shared by facets are merged).
    """
    import vtk  # noqa: PLC0415

    p = _existing_file(path, name)
    suffix = _suffix(p)
    _check_complete(p, name)
    if suffix == ".obj":
        v, f = _read_obj(p, name)
    else:
        readers = {".vtk": vtk.vtkPolyDataReader, ".vtp": vtk.vtkXMLPolyDataReader,
                   ".ply": vtk.vtkPLYReader, ".stl": vtk.vtkSTLReader}
        if suffix not in readers:
            raise FileReadError(f"{name}: unsupported extension '{suffix}' (expected one of "
                                f"{', '.join(_MODEL_EXTENSIONS)}): {p}")
        reader = readers[suffix]()
        reader.SetFileName(str(p))
        error_observer = _ErrorObserver()
        reader.AddObserver("ErrorEvent", error_observer)
        if hasattr(reader, "GetExecutive"):
            reader.GetExecutive().AddObserver("ErrorEvent", error_observer)
        reader.Update()
        poly = reader.GetOutput()
        if error_observer.failed or poly is None or poly.GetNumberOfPoints() == 0:
            raise FileReadError(f"{name}: cannot read mesh (corrupt or empty): {p}")
        v, f = _polydata_triangles(poly)
        if f is None:
            raise FileReadError(f"{name}: mesh could not be triangulated: {p}")
    if v.shape[0] == 0 or f.shape[0] == 0:
        raise InputError(f"{name}: mesh has no triangles: {p}")
    return check_mesh(v, f, name)


class _ErrorObserver:
    """Records VTK ErrorEvents of a reader (VTK readers report errors, they do not raise)."""

    def __init__(self):
        self.failed = False

    def __call__(self, caller, event):
        self.failed = True


# --------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------
def load_transform(ctx, path, name: Optional[str] = None):
    """Load an ITK transform file (.h5, .tfm, .txt, .mat) as a transform node.

    ITK files are LPS and "from parent"; MRML converts them (see the module docstring),
    so the node behaves as the same physical transform in RAS. Linear files give a
    ``vtkMRMLLinearTransformNode``; others (B-spline, displacement field) a general
    transform node.
    """
    import slicer  # noqa: PLC0415

    what = "transform file"
    p = _existing_file(path, what)
    messages = slicer.vtkMRMLMessageCollection()
    node = ctx.logic("Transforms").AddTransform(str(p), ctx.scene, messages)
    if node is None:
        detail = _message_text(messages)
        raise FileReadError(f"{what}: cannot read transform: {p}"
                            + (f" ({detail})" if detail else ""))
    if name:
        node.SetName(name)
    return node


def save_transform(node, path) -> Path:
    """Write a transform node as an ITK transform file (LPS, "from parent"; .h5/.tfm/.txt)."""
    import slicer  # noqa: PLC0415

    what = "transform"
    _check_node(node, "vtkMRMLTransformNode", what, "transform")
    p = _output_file(path, what)
    storage = slicer.vtkMRMLTransformStorageNode()
    storage.SetFileName(str(p))
    if not storage.WriteData(node) or not p.exists():
        raise FileReadError(f"{what}: cannot write transform '{_node_label(node)}' to {p}")
    return p


def read_matrix_txt(path, name: str = "matrix file") -> np.ndarray:
    """A float64 (4, 4) matrix from a text file of 16 numbers (4 rows; spaces or commas).

    Lines starting with '#' are ignored. Also accepts 12 numbers (a 3x4 [R | t]), to which
    the row (0, 0, 0, 1) is added.
    """
    p = _existing_file(path, name)
    values = []
    try:
        with open(p, "r", encoding="utf-8") as handle:
            for line in handle:
                line = line.split("#", 1)[0].replace(",", " ")
                values.extend(float(tok) for tok in line.split())
    except (ValueError, UnicodeDecodeError):
        raise FileReadError(f"{name}: not a text file of numbers: {p}") from None
    if len(values) == 12:
        values.extend([0.0, 0.0, 0.0, 1.0])
    if len(values) != 16:
        raise FileReadError(f"{name}: expected 16 numbers (a 4x4 matrix), got "
                            f"{len(values)}: {p}")
    m = np.array(values, dtype=np.float64).reshape(4, 4)
    if not np.all(np.isfinite(m)):
        raise InputError(f"{name}: matrix contains NaN or infinite values: {p}")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise InputError(f"{name}: last row of the 4x4 matrix must be (0, 0, 0, 1): {p}")
    return m


def write_matrix_txt(matrix, path, name: str = "matrix") -> Path:
    """Write a (4, 4) matrix as 4 lines of 4 numbers (full float64 precision)."""
    from .nodes import as_matrix4  # noqa: PLC0415

    m = as_matrix4(matrix, name)
    p = _output_file(path, name)
    np.savetxt(p, m, fmt="%.17g")
    return p


# --------------------------------------------------------------------------------------
# markups
# --------------------------------------------------------------------------------------
def load_markups(ctx, path, name: Optional[str] = None):
    """Load a Markups JSON file (.mrk.json / .json; also legacy .fcsv) as a markups node
    (point list, curve, closed curve, ... as the file says), in RAS."""
    import slicer  # noqa: PLC0415

    what = "markups file"
    p = _existing_file(path, what)
    messages = slicer.vtkMRMLMessageCollection()
    node_id = ctx.logic("Markups").LoadMarkups(str(p), name or _stem(p), messages)
    node = ctx.scene.GetNodeByID(node_id) if node_id else None
    if node is None:
        detail = _message_text(messages)
        raise FileReadError(f"{what}: cannot read markups: {p}"
                            + (f" ({detail})" if detail else ""))
    return node


def save_markups(node, path, coordinate_system: str = "LPS") -> Path:
    """Write a markups node as Markups JSON (coordinates in ``coordinate_system``; the
    file records it, so reading it back gives the same RAS points)."""
    import slicer  # noqa: PLC0415

    what = "markups"
    cs = _coordinate_system_id(coordinate_system, what)
    _check_node(node, "vtkMRMLMarkupsNode", what, "markups")
    p = _output_file(path, what)
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    storage.SetFileName(str(p))
    storage.SetCoordinateSystem(cs)
    if not storage.WriteData(node) or not p.exists():
        raise FileReadError(f"{what}: cannot write markups '{_node_label(node)}' to {p}")
    return p
