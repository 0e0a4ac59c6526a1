"""Every code block of ``docs/scripting.md`` runs, in order, on a real MRML scene.

The page is written for the Slicer Python console. Here the few application-only names it
uses (``slicer.mrmlScene``, ``slicer.util.loadVolume`` ...) are bound to the project's own
helpers on a real slicer-core scene (``SurgicalReg2D3DLib.console``); everything else is
the real code: the registrations run and the blocks' own assertions check their results
against the known (simulated or shipped) ground truth. A logic signature changed without
updating the page makes a block raise, and this test fail.

A block preceded by ``<!-- console-only -->`` needs the Slicer application; it is counted
(at most one per module section) and not run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "scripting.md"
MARK = "<!-- console-only -->"
MODULE_SECTIONS = ("SurgicalReg2D3D", "FluoroReg", "LiverLaparoReg", "USSliceReg")


def parse_blocks(text: str):
    """``[(section, index_in_section, code, console_only)]`` in page order."""
    blocks, section, counts = [], "preamble", {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].split(":")[0].split(" (")[0].strip()
        if line.strip() == "```python":
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            counts[section] = counts.get(section, 0) + 1
            blocks.append((section, counts[section], "\n".join(lines[i + 1:j]),
                           prev.strip() == MARK))
            i = j
        i += 1
    return blocks


BLOCKS = parse_blocks(DOC.read_text(encoding="utf-8"))


def test_page_has_a_section_per_module_and_few_untested_blocks():
    sections = {s for s, *_ in BLOCKS}
    for module in MODULE_SECTIONS:
        assert module in sections, f"docs/scripting.md has no code for {module}"
        untested = [b for b in BLOCKS if b[0] == module and b[3]]
        assert len(untested) <= 1, f"{module}: {len(untested)} console-only blocks (max 1)"
    assert any("Batch" in s for s in sections)
    assert any("own registration method" in s for s in sections)
    assert "docs/scripting.md" in (DOC.parent / "architecture.md").read_text()


def test_parser_sees_marks_and_sections():
    text = ("## A: x\n```python\na = 1\n```\n<!-- console-only -->\n```python\nb\n```\n"
            "## B (hub)\n```python\nc\n```\n")
    assert parse_blocks(text) == [("A", 1, "a = 1", False), ("A", 2, "b", True),
                                  ("B", 1, "c", False)]


@pytest.fixture(scope="module")
def console():
    """One namespace and one scene for the whole page, as in one console session."""
    from SurgicalReg2D3DLib.console import bind_console_names
    from SurgicalReg2D3DLib.scene import SceneContext

    from FluoroRegLib.logic import METHODS as FLUORO_METHODS
    from LiverLaparoRegLib.logic import METHODS as LAPARO_METHODS
    from USSliceRegLib.methods import METHODS as US_METHODS

    # the page adds a method to a registry: restore the registries for the other tests
    registries = [(r, dict(r)) for r in (FLUORO_METHODS, LAPARO_METHODS, US_METHODS)]
    ctx = SceneContext()
    try:
        with bind_console_names(ctx):
            yield {"namespace": {"__name__": "__console__"}, "done": set(), "ctx": ctx}
    finally:
        ctx.close()
        for registry, saved in registries:
            registry.clear()
            registry.update(saved)


def _run_upto(console, index: int) -> None:
    for k in range(index + 1):
        if k in console["done"]:
            continue
        section, n, code, console_only = BLOCKS[k]
        console["done"].add(k)
        if console_only:
            continue
        exec(compile(code, f"docs/scripting.md [{section} block {n}]", "exec"),
             console["namespace"])


@pytest.mark.parametrize("index", range(len(BLOCKS)),
                         ids=[f"{s}-{n}".replace(" ", "_") for s, n, _, _ in BLOCKS])
def test_block_runs(console, index):
    section, n, code, console_only = BLOCKS[index]
    if console_only:
        pytest.skip(f"{section} block {n}: needs the Slicer application (marked console-only)")
    _run_upto(console, index)
    # the page's blocks work on the bound scene
    import slicer

    assert slicer.mrmlScene is console["ctx"].scene
