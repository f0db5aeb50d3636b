import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # test fixtures are importable as model sources ("tests.fixtures.models:...")
    sys.path.insert(0, str(ROOT))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("BUILDSYS_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="full-size model build; run with BUILDSYS_SLOW_TESTS=1 (make test-all)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty store + SQLite registry, used through env vars like a user would."""
    store = tmp_path / "artifacts"
    monkeypatch.setenv("BUILDSYS_STORE", str(store))
    monkeypatch.delenv("BUILDSYS_REGISTRY", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for registry tests (tests/fixtures/postgres.py); skipped where none can
    be started, except under CI=true."""
    from tests.fixtures import postgres

    try:
        server = postgres.start()
    except postgres.PostgresUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the PostgreSQL registry tests: {exc}")
        pytest.skip(f"no PostgreSQL: {exc}")
    yield server
    server.stop()


def _required_in_ci(what: str, exc: Exception):
    """Skip with the reason; under CI=true the missing piece fails the test instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the {what} tests: {exc}")
    pytest.skip(f"{what}: {exc}")


@pytest.fixture(scope="session")
def aarch64_linker():
    """The aarch64 cross compiler (Debian g++-aarch64-linux-gnu); skipped where it is missing,
    except under CI=true (.ci/run installs it)."""
    from buildsys.compiler.cross import linker_for
    from buildsys.errors import BuildError

    try:
        return linker_for({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    except BuildError as exc:
        _required_in_ci("aarch64 cross-build", exc)


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
        _required_in_ci("emulated aarch64", exc)


def pytest_terminal_summary(terminalreporter):
    """What the generated hostile-input suites tried (tests/fixtures/fuzz.py), by suite and outcome."""
    from tests.fixtures.fuzz import SCALE, TRIED

    if TRIED:
        terminalreporter.write_line(f"hostile inputs tried (BUILDSYS_FUZZ_SCALE={SCALE}): "
                                    + ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items())))
