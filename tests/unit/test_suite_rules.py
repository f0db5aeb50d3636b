"""The rules the suite itself keeps (issue #27): under CI=true a skip is a failure unless it is a
documented machine-dependent case; the slow tier is deselected, not skipped; hypothesis runs
derandomized in CI; CPU-specific tests ask the CPU first; helpers live in tests/fixtures; the
release workflow tests before it publishes."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import yaml

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]

PROBE = '''
import pytest
from tests.fixtures.capabilities import machine_lacks, missing

def test_missing_tool():
    missing("no frobnicator (apt-get install frobnicator)")

def test_plain_skip():
    pytest.skip("no reason given")

def test_machine():
    machine_lacks("this CPU lacks avx512f")

@pytest.mark.slow
def test_full_size():
    pass

def test_runs():
    pass
'''


def _run_probe(pytester, monkeypatch, ci: bool):
    monkeypatch.setenv("CI", "true") if ci else monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILDSYS_SLOW_TESTS", raising=False)
    pytester.makeconftest(f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
                          + (ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_probe=PROBE)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")


def test_under_ci_a_skip_fails_naming_what_is_missing(pytester, monkeypatch):
    result = _run_probe(pytester, monkeypatch, ci=True)
    result.assert_outcomes(passed=1, failed=2, skipped=1, deselected=1)
    out = result.stdout.str()
    assert "CI must run this test, but no frobnicator (apt-get install frobnicator)" in out
    assert "skipped under CI=true" in out and "no reason given" in out
    assert "machine-dependent: this CPU lacks avx512f" in out


def test_off_ci_the_same_tests_skip_and_the_slow_tier_is_deselected(pytester, monkeypatch):
    result = _run_probe(pytester, monkeypatch, ci=False)
    result.assert_outcomes(passed=1, skipped=3, deselected=1)


def test_hypothesis_runs_derandomized_in_ci():
    from hypothesis import settings

    if os.environ.get("CI") == "true":
        assert settings.default.derandomize and settings.default.database is None
    else:
        from tests.fixtures.fuzz import SCALE
        assert settings._current_profile == ("fuzz" if SCALE > 1 else "dev")  # noqa: SLF001
    assert settings.get_profile("ci").derandomize is True


def test_code_for_a_cpu_this_machine_lacks_is_not_run(monkeypatch):
    from buildsys.config.targets import required_features
    from buildsys.runtime import cpu
    from tests.fixtures import capabilities

    avx2_only = set(required_features({"kind": "llvm", "mcpu": "x86-64-v3"}))  # an AVX2 machine
    assert avx2_only and not any(f.startswith("avx512") for f in avx2_only)
    monkeypatch.setattr(cpu, "host_flags", lambda: avx2_only)
    with pytest.raises(pytest.skip.Exception, match="machine-dependent: this CPU lacks avx512"):
        capabilities.runnable_here("skylake-avx512")
    assert capabilities.runnable_here("x86-64-v3") == "x86-64-v3"
    assert capabilities.runnable_here(None) is None


def test_no_test_module_imports_another_test_module():
    """Shared helpers live in tests/fixtures (one copy each), not in a test file another imports."""
    offenders = []
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and (
                    node.module.startswith(("tests.unit", "tests.integration", "tests.slow"))
                    or node.level and node.module.startswith(("conftest", "test_"))):
                offenders.append(f"{path.relative_to(ROOT)}: from {node.module}")
    assert offenders == []


def test_the_release_workflow_tests_before_it_builds_or_publishes():
    jobs = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())["jobs"]
    assert any(".ci/run" in step.get("run", "") or "make test" in step.get("run", "")
               for step in jobs["test"]["steps"])

    def upstream(name):
        needs = jobs[name].get("needs", [])
        needs = [needs] if isinstance(needs, str) else needs
        return set(needs).union(*(upstream(n) for n in needs)) if needs else set()
    for name in jobs:
        if name != "test":
            assert "test" in upstream(name), name
