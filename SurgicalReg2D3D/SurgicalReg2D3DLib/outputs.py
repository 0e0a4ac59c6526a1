"""Safe output files: checked before any work, written atomically, side files as one set.

- :func:`check_output` / :func:`check_outputs`: before the (long) computation, an output
  path must name a file (not a folder) in an existing, writable folder, and must not be
  any of the inputs (compared by resolved path and, for existing files, ``os.path.samefile``,
  so a hard link or a symbolic link to an input is caught too). Several outputs (a result
  plus its side files) must also differ from each other.
- :func:`write_text_atomic` / :func:`write_json_atomic` / :func:`atomic_path`: the data go
  to a temporary file in the same folder, then ``os.replace`` puts it in place: an
  interrupt or a full disk leaves the old file (or none), never a half-written one.
- :class:`OutputSet`: several files written as one consistent set: every file is written
  to a temporary name first; only when all are written are they renamed into place; on an
  error (or Ctrl-C) the temporary files are removed and no output of the set appears.

Errors are :class:`~SurgicalReg2D3DLib.errors.InputError` (a bad output path) or
:class:`~SurgicalReg2D3DLib.errors.FileReadError` (a folder that cannot be written) whose
message starts with the option's name (e.g. ``--out``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from .errors import FileReadError, InputError

PathLike = Union[str, Path]

__all__ = ["check_output", "check_outputs", "check_output_dir", "write_text_atomic",
           "write_json_atomic", "atomic_path", "OutputSet", "temp_name"]


def _same_file(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _resolved(path: PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()


def _writable_folder(folder: Path, what: str, create: bool) -> None:
    """FileReadError unless ``folder`` (or, with ``create``, its nearest existing
    ancestor) is a folder this process can create files in (tested by creating one)."""
    probe = folder
    if create:
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
    if not probe.exists():
        raise FileReadError(f"{what}: output folder does not exist: {folder}")
    if not probe.is_dir():
        raise FileReadError(f"{what}: output folder is not a folder (a file is in the way): "
                            f"{probe}")
    try:
        fd, name = tempfile.mkstemp(prefix=".surgreg-write-test-", dir=str(probe))
    except OSError as exc:
        raise FileReadError(f"{what}: cannot write in the output folder {probe} "
                            f"({exc.strerror or exc})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.remove(name)


def check_output(path: PathLike, inputs: Iterable = (), what: str = "--out",
                 create_folder: bool = False) -> Path:
    """The absolute output path, checked before any work (see the module docstring).

    ``inputs``: the input paths (files or folders; None entries are ignored); an output
    equal to one of them, or inside an input folder's path equal to it, is refused.
    ``create_folder``: the output folder may be missing (it is created when the file is
    written); its nearest existing ancestor must then be writable.
    """
    if path is None or str(path).strip() == "":
        raise InputError(f"{what}: no output file name given")
    p = _resolved(path)
    if p.is_dir():
        raise InputError(f"{what}: is a folder, expected a file name: {p}")
    for item in inputs or ():
        if item is None or str(item) == "":
            continue
        q = _resolved(item)
        if _same_file(p, q):
            raise InputError(f"{what}: would overwrite the input {q}; choose another output "
                             "file name")
    _writable_folder(p.parent, what, create_folder)
    return p


def check_outputs(paths: Sequence[Tuple[PathLike, str]], inputs: Iterable = (),
                  create_folder: bool = False) -> List[Path]:
    """:func:`check_output` for several ``(path, what)`` outputs that must also differ
    from each other (e.g. a result JSON and its side files)."""
    inputs = list(inputs or ())
    out: List[Path] = []
    for path, what in paths:
        p = check_output(path, inputs, what, create_folder=create_folder)
        for q, other in zip(out, [w for _, w in paths]):
            if _same_file(p, q):
                raise InputError(f"{what}: is the same file as {other} ({p})")
        out.append(p)
    return out


def check_output_dir(path: PathLike, inputs: Iterable = (), what: str = "--out") -> Path:
    """An output folder (created later if missing): not an existing file, not an input,
    and its nearest existing ancestor writable."""
    if path is None or str(path).strip() == "":
        raise InputError(f"{what}: no output folder given")
    p = _resolved(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{what}: is a file, expected a folder: {p}")
    for item in inputs or ():
        if item is not None and str(item) != "" and _same_file(p, _resolved(item)):
            raise InputError(f"{what}: is the input {item}; choose another output folder")
    _writable_folder(p, what, create=True)
    return p


def temp_name(path: PathLike) -> Path:
    """A hidden temporary name next to ``path`` that keeps its full extension (writers
    that choose the format by extension, e.g. ``.nii.gz``, still work)."""
    p = Path(path)
    return p.with_name(f".tmp-{secrets.token_hex(4)}-{p.name}")


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


@contextlib.contextmanager
def atomic_path(path: PathLike, what: str = "output") -> Iterator[Path]:
    """``with atomic_path(out) as tmp: write(tmp)``: ``tmp`` is renamed to ``out`` when the
    block ends without an error; on an error (or Ctrl-C) it is removed."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    try:
        yield tmp
        if not tmp.exists():
            raise FileReadError(f"{what}: nothing was written to {final}")
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def write_text_atomic(path: PathLike, text: str, what: str = "output") -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and ``os.replace``."""
    final = Path(path)
    try:
        with atomic_path(final, what) as tmp:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as exc:
        if isinstance(exc, FileReadError):
            raise
        raise FileReadError(f"{what}: cannot write {final} ({exc.strerror or exc})") from None
    return final


def write_json_atomic(path: PathLike, obj, what: str = "output", indent: int = 2) -> Path:
    """``json.dumps(obj)`` written atomically (numpy scalars become floats)."""
    text = json.dumps(obj, indent=indent, default=_json_default) + "\n"
    return write_text_atomic(path, text, what)


def _json_default(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    if hasattr(v, "item"):
        return v.item()
    return float(v)


class OutputSet:
    """Write several files as one set (all or none)::

        with OutputSet() as outs:
            outs.write_json(out, result)
            outs.write(mesh_path, lambda tmp: save_mesh(mesh, tmp))

    Each writer writes to a temporary name in the final file's folder; leaving the block
    without an error renames every temporary file into place; an error (or Ctrl-C) removes
    them all and re-raises, so no file of the set is created or replaced.
    """

    def __init__(self, what: str = "output"):
        self.what = what
        self._pending: List[Tuple[Path, Path]] = []

    def __enter__(self) -> "OutputSet":
        return self

    def path(self, final: PathLike) -> Path:
        """A temporary path to write ``final``'s content to (renamed at the end)."""
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(final)
        self._pending.append((tmp, final))
        return tmp

    def write(self, final: PathLike, writer: Callable[[Path], object]) -> Path:
        """Call ``writer(tmp_path)``; ``final`` appears only when the whole set succeeds."""
        tmp = self.path(final)
        try:
            writer(tmp)
        except OSError as exc:
            if isinstance(exc, FileReadError):
                raise
            raise FileReadError(f"{self.what}: cannot write {final} "
                                f"({exc.strerror or exc})") from None
        if not tmp.exists():
            raise FileReadError(f"{self.what}: nothing was written to {final}")
        return Path(final)

    def write_text(self, final: PathLike, text: str) -> Path:
        def _w(tmp: Path) -> None:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())

        return self.write(final, _w)

    def write_json(self, final: PathLike, obj, indent: int = 2) -> Path:
        return self.write_text(final, json.dumps(obj, indent=indent,
                                                 default=_json_default) + "\n")

    def discard(self) -> None:
        """Remove every temporary file of the set."""
        for tmp, _final in self._pending:
            _remove(tmp)
        self._pending = []

    def commit(self) -> List[Path]:
        """Rename every temporary file into place (done by ``__exit__``)."""
        done = []
        try:
            for tmp, final in self._pending:
                os.replace(tmp, final)
                done.append(final)
        except OSError as exc:
            self.discard()
            raise FileReadError(f"{self.what}: cannot put the output files in place "
                                f"({exc.strerror or exc})") from None
        self._pending = []
        return done

    def __exit__(self, exc_type, exc, tb) -> Optional[bool]:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return None
