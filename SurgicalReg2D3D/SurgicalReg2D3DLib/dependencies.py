"""Which Python packages the modules need inside Slicer, and how to install them without
replacing the packages Slicer bundles (pure Python: no Slicer, no Qt, imports nothing heavy).

Slicer bundles numpy, scipy, SimpleITK and pydicom, not torch, OpenCV or numba:

- **torch** (every module): installed through the PyTorch extension's ``PyTorchUtils``
  with a version requirement (it picks a build that matches the GPU driver); with ``pip``
  only when that extension is not installed.
- **OpenCV** (LiverLaparoReg): ``opencv-python-headless``, pinned so that Slicer's numpy
  stays: on Slicer 5.8 (Python 3.9, numpy 1.26.4) a plain ``pip install`` resolves to
  opencv-python-headless 5.x / 4.12+, which require numpy >= 2 and replace Slicer's numpy
  with 2.0.2; 4.11.0.86 is the last build for numpy 1.x (checked with ``pip install
  --dry-run --python-version 3.9 --only-binary=:all:``, ``benchmarks/slicer_dependency_plan.py``).
  Every pip step also pins ``numpy==<the installed version>``, so no step can replace it.
- **numba** (USSliceReg, optional): the compiled LNCC kernels. Without it USSliceReg uses
  its torch kernels: the same results, about 3x slower per frame on a CPU.

:func:`make_plan` turns "these modules, this Python, these installed versions" into the
install steps; :func:`current_environment` reads the running interpreter (package
metadata only, nothing is imported). The hub module's ``ensureDependencies`` shows the plan,
asks for confirmation and runs it with progress; every module's Apply goes through it.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import InputError

__all__ = [
    "SlicerPython", "SLICER_PYTHON", "Requirement", "InstallStep", "DependencyPlan",
    "TORCH_REQUIREMENT", "MODULE_REQUIREMENTS", "opencv_requirement", "numba_requirement",
    "make_plan", "current_environment", "version_tuple", "satisfies",
]


@dataclass(frozen=True)
class SlicerPython:
    """The Python of a Slicer release and the versions of the packages it bundles
    (from Slicer's ``CMakeLists.txt`` and ``SuperBuild/External_python-*.cmake``)."""

    slicer: str
    python: Tuple[int, int]
    numpy: str
    scipy: str


#: Slicer releases this extension supports.
SLICER_PYTHON: Dict[str, SlicerPython] = {
    "5.8": SlicerPython("5.8", (3, 9), "1.26.4", "1.13.1"),
    "5.10": SlicerPython("5.10", (3, 12), "2.0.2", "1.13.1"),
}

#: torch version the modules need (``pyproject.toml`` says the same).
TORCH_REQUIREMENT = ">=2.1"

#: Last opencv-python-headless release whose wheels accept numpy 1.x (4.11.0.86);
#: 4.12.0.88 and later require numpy >= 2 on Python >= 3.9.
OPENCV_NUMPY1_UPPER = "4.12"
#: First opencv-python-headless release built against numpy 2 (4.10.0.84).
OPENCV_NUMPY2_LOWER = "4.10"

NUMBA_FALLBACK_NOTE = ("without numba, USSliceReg uses its torch kernels: the same results, "
                       "about 3x slower per frame on a CPU")


@dataclass(frozen=True)
class Requirement:
    """One package: the name it is imported as, the pip distribution names that provide
    it, whether a module can run without it, and why it is needed."""

    import_name: str
    pip_names: Tuple[str, ...]
    optional: bool
    purpose: str


REQUIREMENTS: Dict[str, Requirement] = {
    "torch": Requirement("torch", ("torch",), False, "registration (all modules)"),
    "cv2": Requirement("cv2", ("opencv-python-headless", "opencv-python",
                               "opencv-contrib-python-headless", "opencv-contrib-python"),
                       False, "camera geometry and PnP (LiverLaparoReg)"),
    "numba": Requirement("numba", ("numba",), True,
                         "compiled LNCC kernels (USSliceReg); " + NUMBA_FALLBACK_NOTE),
}

#: What each module needs (import names, required first).
MODULE_REQUIREMENTS: Dict[str, Tuple[str, ...]] = {
    "SurgicalReg2D3D": ("torch",),
    "FluoroReg": ("torch",),
    "LiverLaparoReg": ("torch", "cv2"),
    "USSliceReg": ("torch", "numba"),
}


# --------------------------------------------------------------------------- versions
def version_tuple(version: str) -> Tuple[int, ...]:
    """``"2.1.0+cu121"`` -> ``(2, 1, 0)`` (release numbers only)."""
    numbers = []
    for part in re.split(r"[.+]", version.strip()):
        m = re.match(r"\d+", part)
        if not m:
            break
        numbers.append(int(m.group()))
        if m.group() != part:
            break
    if not numbers:
        raise InputError(f"version: cannot read {version!r}")
    return tuple(numbers)


def satisfies(version: str, spec: str) -> bool:
    """Whether ``version`` meets a comma-separated spec such as ``">=4.8,<4.12"``."""
    v = version_tuple(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        m = re.match(r"(>=|<=|==|!=|>|<)\s*([\w.+]+)$", clause)
        if not m:
            raise InputError(f"version spec: cannot read {clause!r}")
        op, bound = m.group(1), version_tuple(m.group(2))
        width = max(len(v), len(bound))
        a, b = v + (0,) * (width - len(v)), bound + (0,) * (width - len(bound))
        ok = {">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b, "==": a == b, "!=": a != b}[op]
        if not ok:
            return False
    return True


def opencv_requirement(numpy_version: str) -> str:
    """The opencv-python-headless requirement that keeps ``numpy_version``."""
    if version_tuple(numpy_version)[0] < 2:
        return f"opencv-python-headless>=4.8,<{OPENCV_NUMPY1_UPPER}"
    return f"opencv-python-headless>={OPENCV_NUMPY2_LOWER}"


def numba_requirement(python: Tuple[int, int], numpy_version: str) -> str:
    """The numba requirement for this Python and numpy (numba 0.60 is the last release
    for Python 3.9 and the first for numpy 2.0)."""
    if tuple(python) < (3, 10):
        return "numba>=0.59,<0.61"
    if version_tuple(numpy_version)[0] >= 2:
        return "numba>=0.60"
    return "numba>=0.59"


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class InstallStep:
    """Install one package: ``method`` is ``"PyTorchUtils"`` or ``"pip"``; ``requirements``
    are the pip requirement strings (for pip, the numpy pin included)."""

    import_name: str
    method: str
    requirements: Tuple[str, ...]
    optional: bool
    reason: str

    def describe(self) -> str:
        how = ("the PyTorch extension (PyTorchUtils)" if self.method == "PyTorchUtils"
               else "pip")
        tag = "optional: " if self.optional else ""
        return f"{self.requirements[0]} with {how} ({tag}{self.reason})"


@dataclass
class DependencyPlan:
    """What to install for some modules in one Python environment."""

    modules: Tuple[str, ...]
    python: Tuple[int, int]
    numpy: Optional[str]
    steps: List[InstallStep] = field(default_factory=list)
    ok: List[str] = field(default_factory=list)  # "torch 2.3.0" etc.
    notes: List[str] = field(default_factory=list)

    @property
    def required_steps(self) -> List[InstallStep]:
        return [s for s in self.steps if not s.optional]

    @property
    def optional_steps(self) -> List[InstallStep]:
        return [s for s in self.steps if s.optional]

    @property
    def complete(self) -> bool:
        """Nothing required is missing."""
        return not self.required_steps

    def pip_arguments(self, step: InstallStep) -> List[str]:
        """Arguments for ``slicer.util.pip_install`` (a list: one requirement each)."""
        return list(step.requirements)

    def summary(self) -> str:
        """Text for the confirmation dialog."""
        lines = []
        if self.required_steps:
            lines.append("Needed: " + "; ".join(s.describe() for s in self.required_steps) + ".")
        if self.optional_steps:
            lines.append("Recommended: " + "; ".join(s.describe() for s in self.optional_steps) + ".")
        if self.numpy:
            lines.append(f"Slicer's numpy {self.numpy} is kept (pinned in every pip step).")
        lines += self.notes
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "modules": list(self.modules),
            "python": ".".join(str(x) for x in self.python),
            "numpy": self.numpy,
            "ok": list(self.ok),
            "steps": [{"package": s.import_name, "method": s.method,
                       "requirements": list(s.requirements), "optional": s.optional,
                       "reason": s.reason} for s in self.steps],
            "notes": list(self.notes),
        }


def make_plan(modules: Sequence[str], installed: Mapping[str, Optional[str]],
              python: Tuple[int, int], numpy_version: Optional[str],
              pytorch_utils: bool, include_optional: bool = True) -> DependencyPlan:
    """The install steps for ``modules``.

    Args:
        modules: module names (keys of :data:`MODULE_REQUIREMENTS`).
        installed: import name -> installed version (None or missing: not installed).
        python: ``(major, minor)`` of the interpreter.
        numpy_version: installed numpy (Slicer's); pinned in every pip step.
        pytorch_utils: whether the PyTorch extension's ``PyTorchUtils`` is importable.
        include_optional: also plan the optional packages (numba).
    """
    unknown = [m for m in modules if m not in MODULE_REQUIREMENTS]
    if unknown:
        raise InputError(f"modules: unknown module(s) {unknown}; known: {sorted(MODULE_REQUIREMENTS)}")
    needed: List[str] = []
    for module in modules:
        for name in MODULE_REQUIREMENTS[module]:
            if name not in needed:
                needed.append(name)
    plan = DependencyPlan(tuple(modules), (int(python[0]), int(python[1])), numpy_version)
    pin = (f"numpy=={numpy_version}",) if numpy_version else ()
    for name in needed:
        req = REQUIREMENTS[name]
        version = installed.get(name)
        if name == "torch":
            if version and satisfies(version, TORCH_REQUIREMENT):
                plan.ok.append(f"torch {version}")
                continue
            reason = (f"torch {version} is older than {TORCH_REQUIREMENT}" if version
                      else req.purpose)
            if pytorch_utils:
                step = InstallStep("torch", "PyTorchUtils", ("torch" + TORCH_REQUIREMENT,), False, reason)
            else:
                step = InstallStep("torch", "pip", ("torch" + TORCH_REQUIREMENT,) + pin, False, reason)
                plan.notes.append("The PyTorch extension is not installed: torch comes from pip "
                                  "(installing the PyTorch extension first lets it choose a GPU "
                                  "build for your driver).")
            plan.steps.append(step)
        elif name == "cv2":
            if version:
                plan.ok.append(f"OpenCV {version}")
                continue
            requirement = opencv_requirement(numpy_version) if numpy_version else \
                "opencv-python-headless>=4.8"
            plan.steps.append(InstallStep("cv2", "pip", (requirement,) + pin, False, req.purpose))
        elif name == "numba":
            if version:
                plan.ok.append(f"numba {version}")
                continue
            if not include_optional:
                plan.notes.append("numba is not installed: " + NUMBA_FALLBACK_NOTE + ".")
                continue
            plan.steps.append(InstallStep("numba", "pip",
                                          (numba_requirement(plan.python, numpy_version or "1"),) + pin,
                                          True, req.purpose))
    return plan


# --------------------------------------------------------------------------- environment
def _distribution_version(names: Sequence[str]) -> Optional[str]:
    from importlib import metadata  # noqa: PLC0415

    for dist in names:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def current_environment() -> dict:
    """The running interpreter: ``python``, ``numpy``, ``installed`` (import name ->
    version or None) and ``pytorch_utils``. Reads package metadata; imports nothing."""
    installed: Dict[str, Optional[str]] = {}
    for name, req in REQUIREMENTS.items():
        if importlib.util.find_spec(name) is None:
            installed[name] = None
        else:
            installed[name] = _distribution_version(req.pip_names) or "unknown"
    numpy_version = _distribution_version(("numpy",))
    return {
        "python": (sys.version_info[0], sys.version_info[1]),
        "numpy": numpy_version,
        "installed": installed,
        "pytorch_utils": importlib.util.find_spec("PyTorchUtils") is not None,
    }


def plan_for_current_environment(modules: Sequence[str], include_optional: bool = True) -> DependencyPlan:
    """:func:`make_plan` for the running interpreter."""
    env = current_environment()
    installed = dict(env["installed"])
    # An installed package without readable metadata counts as installed ("unknown"),
    # except torch, whose version must be checked: then it is taken as new enough.
    if installed.get("torch") == "unknown":
        installed["torch"] = TORCH_REQUIREMENT.lstrip(">=")
    return make_plan(modules, installed, env["python"], env["numpy"], env["pytorch_utils"],
                     include_optional=include_optional)
