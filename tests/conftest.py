import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # test fixtures are importable as model sources ("tests.fixtures.models:...")
    sys.path.insert(0, str(ROOT))

from tests.fixtures.capabilities import MACHINE_DEPENDENT, missing, under_ci  # noqa: E402

# Hypothesis profiles, set by the project rather than left to hypothesis' own CI detection:
# - ci: derandomized (the same examples on every run: a red CI is reproducible), no database;
# - fuzz: a long attack run (BUILDSYS_FUZZ_SCALE > 1 scales each suite's count): random examples,
#   the failing one printed as a blob to replay;
# - dev: hypothesis' defaults (random, with its example database) on a developer's machine.
# BUILDSYS_HYPOTHESIS_PROFILE picks one by name.
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, **_COMMON)
settings.register_profile("fuzz", derandomize=False, print_blob=True, **_COMMON)
settings.register_profile("dev", **_COMMON)


def _hypothesis_profile() -> str:
    if os.environ.get("BUILDSYS_HYPOTHESIS_PROFILE"):
        return os.environ["BUILDSYS_HYPOTHESIS_PROFILE"]
    if under_ci():
        return "ci"
    from tests.fixtures.fuzz import SCALE
    return "fuzz" if SCALE > 1 else "dev"


settings.load_profile(_hypothesis_profile())


def pytest_collection_modifyitems(config, items):
    """The slow tier (full-size model builds, marked ``slow``) runs with BUILDSYS_SLOW_TESTS=1
    (make test-all). Otherwise its tests are deselected, not skipped: a skip means a capability
    was not checked, and under CI=true every skip is a failure (below)."""
    if os.environ.get("BUILDSYS_SLOW_TESTS") == "1":
        return
    slow = [item for item in items if "slow" in item.keywords]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if "slow" not in item.keywords]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skip is a failure naming what was skipped, except the documented
    machine-dependent cases (tests/fixtures/capabilities.py), which .ci/run counts."""
    outcome = yield
    report = outcome.get_result()
    if not (under_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if reason.startswith("Skipped: "):
        reason = reason[len("Skipped: "):]
    if reason.startswith(MACHINE_DEPENDENT):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, where nothing the README promises may be skipped: {reason}"


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty store + SQLite registry, used through env vars like a user would."""
    store = tmp_path / "artifacts"
    monkeypatch.setenv("BUILDSYS_STORE", str(store))
    monkeypatch.delenv("BUILDSYS_REGISTRY", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for registry tests (tests/fixtures/postgres.py)."""
    from tests.fixtures import postgres

    try:
        server = postgres.start()
    except postgres.PostgresUnavailable as exc:
        missing(f"no PostgreSQL for the shared-registry tests: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def aarch64_linker():
    """The aarch64 cross compiler (Debian g++-aarch64-linux-gnu); skipped where it is missing,
    except under CI=true (.ci/run installs it)."""
    from buildsys.compiler.cross import linker_for
    from buildsys.errors import BuildError

    try:
        return linker_for({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    except BuildError as exc:
        missing(f"the aarch64 cross-build tests need a cross compiler: {exc}")


@pytest.fixture(scope="session")
def aarch64_sysroot(aarch64_linker):
    """qemu-user and an aarch64 sysroot with numpy and TVM's runtime (buildsys/pipeline/emulation.py,
    made once and cached); skipped where they cannot be had, except under CI=true."""
    from buildsys import platforms
    from buildsys.pipeline import emulation

    row = platforms.PLATFORMS["aarch64"]
    try:
        emulation.emulator(row)
        return emulation.sysroot(row)
    except emulation.Unavailable as exc:
        missing(f"the emulated aarch64 tests need qemu-user and a sysroot: {exc}")


def pytest_terminal_summary(terminalreporter):
    """What the generated hostile-input suites tried (tests/fixtures/fuzz.py), by suite and outcome."""
    from tests.fixtures.fuzz import SCALE, TRIED

    if TRIED:
        terminalreporter.write_line(f"hostile inputs tried (BUILDSYS_FUZZ_SCALE={SCALE}): "
                                    + ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items())))
