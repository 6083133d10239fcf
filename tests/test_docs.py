"""Every test that README.md and docs/*.md name as the proof of a behaviour exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# `tests/test_x.py`, `test_x.py::test_name`, `test_x.py::test_name[a, b]`, `test_x.py::…[parameter id]`
REFERENCE = re.compile(r"`(?:tests/)?(test_\w+\.py)(?:::(test_\w+|…))?(?:\[([^\]`]+)\])?`")


def references() -> list[tuple[str, str, str | None, str | None]]:
    """(doc, file, test or '…' or None, parameter ids or None) for every reference in backticks."""
    return [(doc.name, *m.groups()) for doc in DOCS for m in REFERENCE.finditer(doc.read_text(encoding="utf-8"))]


def _module(file: str) -> tuple[set[str], set[str]]:
    """The test functions of a test module and every string constant in it (where parametrize ids come from)."""
    tree = ast.parse((REPO / "tests" / file).read_text(encoding="utf-8"))
    tests = {
        node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return tests, strings


def test_the_reference_pattern_reads_every_form_the_docs_use():
    text = "`tests/test_a.py` `test_b.py::test_c` `test_d.py::…[not utf-8]` `tests/test_e.py::test_f[x, y]`"
    assert [m.groups() for m in REFERENCE.finditer(text)] == [
        ("test_a.py", None, None),
        ("test_b.py", "test_c", None),
        ("test_d.py", "…", "not utf-8"),
        ("test_e.py", "test_f", "x, y"),
    ]


def test_every_test_the_docs_name_exists():
    found = references()
    assert len(found) >= 30 and {doc for doc, *_ in found} >= {"reliability.md", "testing.md"}, found
    missing = []
    for doc, file, test, ids in found:
        if not (REPO / "tests" / file).is_file():
            missing.append(f"{doc}: tests/{file} does not exist")
            continue
        tests, strings = _module(file)
        if test is None and not tests:
            missing.append(f"{doc}: tests/{file} has no test")
        if test not in (None, "…") and test not in tests:
            missing.append(f"{doc}: tests/{file}::{test} does not exist")
        for parameter in (ids or "").split(", ") if ids else []:
            if parameter not in strings:
                missing.append(f"{doc}: tests/{file}: no parameter id {parameter!r}")
    assert not missing, "\n".join(missing)
