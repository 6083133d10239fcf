"""`make mutants` stays honest: every patch applies to today's code, and only a named test's own assertion counts as caught.

The mutations themselves run in `make mutants` (minutes, in CI); this checks them in memory, in a second, so a
refactor that makes a patch stale fails `make test` on the commit that made it stale.
"""

from __future__ import annotations

import pytest
from mutants import MUTATIONS, REPO, Mutation, check_patches, judge, patched


def test_every_mutation_applies_once_changes_the_code_parses_and_names_existing_tests():
    assert check_patches() == []
    assert len(MUTATIONS) >= 40


def test_a_stale_or_idle_or_broken_patch_is_refused():
    text = "def f(x):\n    return x + 1\n"
    assert patched(text, Mutation("off by two", "f.py", [("x + 1", "x + 2")], ["t"])) == "def f(x):\n    return x + 2\n"
    with pytest.raises(LookupError, match="contains 'x - 1' 0 times"):
        patched(text, Mutation("stale", "f.py", [("x - 1", "x")], ["t"]))
    with pytest.raises(LookupError, match="2 times"):
        patched(text + text, Mutation("ambiguous", "f.py", [("x + 1", "x")], ["t"]))
    with pytest.raises(ValueError, match="changes nothing"):
        patched(text, Mutation("idle", "f.py", [("x + 1", "x + 1")], ["t"]))
    with pytest.raises(SyntaxError):
        patched(text, Mutation("unparsable", "f.py", [("x + 1", "x +")], ["t"]))


def test_check_patches_names_a_test_that_does_not_exist(tmp_path, monkeypatch):
    import mutants

    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_f.py").write_text("def test_real():\n    pass\n")
    (tmp_path / "f.py").write_text("y = 1\n")
    monkeypatch.setattr(
        mutants,
        "MUTATIONS",
        [Mutation("m", "f.py", [("y = 1", "y = 2")], ["tests/test_f.py::test_real[a]", "tests/test_f.py::test_gone"])],
    )
    assert check_patches(tmp_path) == ["m: no test tests/test_f.py::test_gone"]


MUTATION = Mutation("m", "f.py", [("a", "b")], ["tests/test_x.py::test_named"])


def _record(
    nodeid="tests/test_x.py::test_named", when="call", exception="AssertionError", assertion=True, in_tests=True
):
    return {
        "nodeid": nodeid,
        "when": when,
        "exception": exception,
        "assertion": assertion,
        "in_tests": in_tests,
        "message": "assert 1 == 2",
    }


@pytest.mark.parametrize(
    ("records", "code", "verdict", "says"),
    [
        ([_record()], 1, "caught", "by tests/test_x.py::test_named"),
        ([_record(nodeid="tests/test_x.py::test_named[seed-0]")], 1, "caught", "[seed-0]"),
        ([], 0, "NOT caught", "every named test passed"),
        ([_record(when="setup", exception="RuntimeError", assertion=False)], 1, "ERROR", "failed in setup"),
        ([_record(exception="AssertionError", in_tests=False)], 1, "ERROR", "in library code"),
        ([_record(exception="ValueError", assertion=False)], 1, "ERROR", "with ValueError"),
        ([_record(nodeid="tests/test_x.py::test_named_too")], 1, "ERROR", "outside a named test"),
        ([], 2, "ERROR", "no test failure"),
    ],
)
def test_only_a_named_tests_own_assertion_counts_as_caught(records, code, verdict, says):
    outcome = judge(MUTATION, code, "interrupted\n", records, 1.0)
    assert outcome.verdict == verdict and says in outcome.detail


def test_the_failure_log_is_what_conftest_writes():
    """The keys `judge` reads are the ones conftest.py's hook writes."""
    conftest = (REPO / "tests" / "conftest.py").read_text(encoding="utf-8")
    for key in _record():
        assert f'"{key}":' in conftest, key
