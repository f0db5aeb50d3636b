"""Hostile registry files: a real registry with bytes flipped, cut or overwritten. The loader's
lookup and every command that reads fail with a RegistryError (or answer), never a traceback or
a hang. ``BUILDSYS_FUZZ_SCALE`` scales the number of files tried (default 60; ``BUILDSYS_FUZZ_EXAMPLES`` sets it)."""

from __future__ import annotations

import os
import shutil

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildsys.artifacts.registry import Registry
from buildsys.artifacts.registry.lookup import resolve
from buildsys.cli import main
from buildsys.errors import BuildsysError
from tests.fixtures.fuzz import TRIED, examples, suite_timeout
from tests.fixtures.records import new_artifact

pytestmark = suite_timeout(600)  # a hang guard for the whole generated suite

EXAMPLES = int(os.environ.get("BUILDSYS_FUZZ_EXAMPLES", "0")) or examples(60)

edits = st.lists(st.tuples(st.integers(0, 200_000), st.binary(min_size=1, max_size=16)), min_size=1, max_size=6)


def _good(folder):
    path = folder / "good.db"
    if not path.exists():
        registry = Registry(f"sqlite:///{path}")
        for i in range(3):
            registry.publish(new_artifact(f"{i:x}{i:x}" * 32))
        registry.set_alias("prod", "0000")
        registry.close()
    return path


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(edits=edits, cut=st.one_of(st.none(), st.integers(0, 100_000)))
def test_damaged_registry_files_are_refused_in_words(tmp_path_factory, edits, cut):
    folder = tmp_path_factory.getbasetemp() / "registry-fuzz"
    folder.mkdir(exist_ok=True)
    db = folder / "bad.db"
    shutil.copyfile(_good(folder), db)
    for suffix in ("-wal", "-shm"):
        (folder / f"bad.db{suffix}").unlink(missing_ok=True)
    with open(db, "r+b") as handle:
        size = os.fstat(handle.fileno()).st_size
        for offset, data in edits:
            handle.seek(offset % max(1, size))
            handle.write(data)
        if cut is not None:
            handle.truncate(cut % max(1, size))
    try:
        resolve(db, "prod")
        TRIED["registry file: answered"] += 1
    except BuildsysError:
        TRIED["registry file: refused"] += 1
    code = main(["--registry", f"sqlite:///{db}", "--store", str(folder / "store"), "ls"])
    assert code in (0, 6), code

