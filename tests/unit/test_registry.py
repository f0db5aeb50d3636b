import pytest
from sqlalchemy import text

from buildsys.errors import RegistryError, UsageError
from buildsys.artifacts.registry import FileRecord, Registry
from buildsys.artifacts.registry.db import BUSY_TIMEOUT_MS, HEAD_REVISION, head_revision, make_engine, upgrade
from buildsys.artifacts.registry.tables import Base
from tests.fixtures.records import new_artifact


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, tmp_path):
    """Every registry test runs on SQLite (the default) and on a real PostgreSQL server."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_server").create_database()
    else:
        url = f"sqlite:///{tmp_path / 'r.db'}"
    reg = Registry(url)
    yield reg
    reg.close()


@pytest.fixture
def sqlite_registry(tmp_path):
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    yield reg
    reg.close()


def test_round_trip(registry):
    published = registry.publish(new_artifact("ab" * 32))
    got = registry.get("ab" * 32)
    assert got == published
    assert got.target == {"kind": "llvm"}
    assert got.disabled_passes == ("FoldConstant",)
    assert [f.name for f in got.files] == ["lib.so", "params.npz"]
    assert got.metrics == {"compile_s": 1.5, "parity_max_rel": 1e-6}
    assert got.parity_max_rel == 1e-6
    with pytest.raises(Exception):
        got.key = "x"  # frozen


def test_republish_replaces_files_and_metrics(registry):
    registry.publish(new_artifact("ab" * 32))
    registry.publish(new_artifact("ab" * 32, files=(FileRecord("lib.so", "sha256:" + "3" * 64, 5),),
                                  metrics={"x": (1.0, "s")}))
    got = registry.get("ab" * 32)
    assert [(f.name, f.digest) for f in got.files] == [("lib.so", "sha256:" + "3" * 64)]
    assert got.metrics == {"x": 1.0}


def test_resolve_by_key_prefix_and_alias(registry):
    one, two = "abcd1" + "0" * 59, "abcd2" + "0" * 59
    registry.publish(new_artifact(one))
    registry.publish(new_artifact(two))
    assert registry.resolve("abcd1").key == one
    assert registry.resolve(two).key == two
    assert registry.resolve("ABCD2").key == two
    with pytest.raises(UsageError, match="ambiguous: abcd10000000, abcd20000000"):
        registry.resolve("abcd")
    with pytest.raises(UsageError, match="no artifact key starts with"):
        registry.resolve("ffff")
    with pytest.raises(UsageError, match="not a key prefix"):
        registry.resolve("abc")
    registry.set_alias("prod", "abcd1")
    assert registry.resolve("prod").key == one
    assert registry.get(one).aliases == ("prod",)
    registry.set_alias("prod", "abcd2")  # moves
    assert registry.resolve("prod").key == two
    with pytest.raises(UsageError, match="did you mean 'prod'"):
        registry.resolve("prdo")
    registry.remove_alias("prod")
    with pytest.raises(UsageError):
        registry.remove_alias("prod")


def test_aliases_must_not_look_like_keys(registry):
    registry.publish(new_artifact("abcd" + "0" * 60))
    with pytest.raises(UsageError, match="looks like a key prefix"):
        registry.set_alias("beef", "abcd")


def test_aliased_artifact_cannot_be_deleted(registry):
    registry.publish(new_artifact("abcd" + "0" * 60))
    registry.set_alias("prod", "abcd")
    with pytest.raises(RegistryError, match="has aliases prod"):
        registry.delete("abcd" + "0" * 60)
    registry.remove_alias("prod")
    registry.delete("abcd" + "0" * 60)
    assert registry.get("abcd" + "0" * 60) is None


def test_build_runs_start_running_and_finish(registry):
    run_id = registry.start_run("k" * 64, "m 32x32")
    assert registry.runs("k" * 64)[0].status == "running"
    record = registry.finish_run(run_id, "failed", "boom")
    assert (record.status, record.error) == ("failed", "boom")
    assert record.duration_s >= 0


def test_sqlite_pragmas(sqlite_registry):
    with sqlite_registry._engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == BUSY_TIMEOUT_MS == 5000


def test_database_errors_become_registry_errors(registry):
    registry.publish(new_artifact("abcd" + "0" * 60))
    dup = new_artifact("abcd" + "0" * 60, files=(FileRecord("a", "sha256:" + "1" * 64, 1),
                                                 FileRecord("a", "sha256:" + "2" * 64, 1)))
    with pytest.raises(RegistryError, match="uq_artifact_files_key_name|UNIQUE"):
        registry.publish(dup)


def test_bad_url_is_a_registry_error():
    with pytest.raises(RegistryError, match="not a database URL"):
        Registry("not a url at all")


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_migrations_are_the_only_schema_source(tmp_path, request, dialect):
    """The migrated schema equals the ORM models: nothing calls create_all."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(request.getfixturevalue("postgres_server").create_database() if dialect == "postgresql"
                         else f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision(engine)
    assert diff == []


def test_head_revision_constant_matches_the_migration_scripts(tmp_path):
    from alembic.script import ScriptDirectory

    from buildsys.artifacts.registry.db import alembic_config
    from buildsys.artifacts.registry.lookup import KNOWN_REVISIONS

    engine = make_engine(f"sqlite:///{tmp_path / 'h.db'}")
    assert HEAD_REVISION == head_revision(engine)
    scripts = ScriptDirectory.from_config(alembic_config(engine))
    assert sorted(KNOWN_REVISIONS) == sorted(s.revision for s in scripts.walk_revisions())


def test_the_loaders_lookup_refuses_a_newer_or_unmigrated_registry(sqlite_registry, tmp_path):
    """The runtime's SQLAlchemy-free lookup checks the schema revision before it reads."""
    from buildsys.artifacts.registry.lookup import resolve

    sqlite_registry.publish(new_artifact("ab" * 32))
    db = tmp_path / "r.db"
    assert resolve(db, "abab").key == "ab" * 32
    with sqlite_registry._engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0042_from_the_future'"))
    with pytest.raises(RegistryError, match=r"newer buildsys \(revision 0042_from_the_future\); upgrade buildsys"):
        resolve(db, "abab")
    with sqlite_registry._engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    with pytest.raises(RegistryError, match="has no schema revision"):
        resolve(db, "abab")


def test_sqlite_lookup_agrees_with_the_registry(sqlite_registry, tmp_path):
    registry = sqlite_registry
    from buildsys.artifacts.registry.lookup import resolve, sqlite_path

    one, two = "abcd1" + "0" * 59, "abcd2" + "0" * 59
    registry.publish(new_artifact(one))
    registry.publish(new_artifact(two))
    registry.set_alias("prod", "abcd2")
    db = sqlite_path(registry.url)
    assert db == tmp_path / "r.db"
    for ref in (one, "abcd1", "ABCD2", "prod"):
        record, found = registry.resolve(ref), resolve(db, ref)
        assert found.key == record.key and found.manifest_digest == record.manifest_digest
        assert found.digests == {f.name: f.digest for f in record.files}
    for ref in ("abcd", "ffff", "abc", "prdo"):
        with pytest.raises(UsageError) as theirs:
            registry.resolve(ref)
        with pytest.raises(UsageError) as ours:
            resolve(db, ref)
        assert str(ours.value) == str(theirs.value)
    assert sqlite_path("postgresql://h/db") is None and sqlite_path("sqlite:///:memory:") is None


def test_benchmarks_and_tuning_databases_round_trip(registry):
    registry.publish(new_artifact("ab" * 32))
    row = registry.add_benchmark("ab" * 32, cpu_model="AMD EPYC", threads=1, rounds=5,
                                 results={"runners": {"artifact": {"ms": 1.5}}})
    assert registry.benchmarks("ab" * 32) == [row] and row.results["runners"]["artifact"]["ms"] == 1.5
    with pytest.raises(RegistryError, match="no artifact"):
        registry.add_benchmark("cd" * 32, cpu_model="x", threads=1, rounds=1, results={})
    stats = {"scope": "s1", "target": {"kind": "llvm"}, "tvm": "0.27", "digest": "sha256:" + "0" * 64,
             "workloads": 3, "records": 9}
    registry.record_tuning_database(stats)
    registry.record_tuning_database({**stats, "records": 12})
    (db,) = registry.tuning_databases()
    assert (db.scope, db.records, db.target) == ("s1", 12, {"kind": "llvm"})
    registry.delete("ab" * 32)  # benchmarks go with their artifact
    assert registry.benchmarks() == []


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_concurrent_first_use_migrates_once(tmp_path, request, dialect):
    """Builders starting together on a new database: one migrates, the others wait and find it done."""
    import concurrent.futures

    url = (request.getfixturevalue("postgres_server").create_database() if dialect == "postgresql"
           else f"sqlite:///{tmp_path / 'new.db'}")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        opened = list(pool.map(lambda _: Registry(url), range(4)))
    for reg in opened:
        assert reg.keys() == set()
        reg.close()
    from buildsys.artifacts.registry.db import current_revision
    assert current_revision(make_engine(url)) == HEAD_REVISION


def test_db_upgrade_command_on_postgresql(postgres_server, capsys):
    from buildsys.cli import main
    from buildsys.artifacts.registry.db import current_revision

    url = postgres_server.create_database()
    assert main(["--registry", url, "db", "current"]) == 0
    assert "empty (newest: " in capsys.readouterr().out
    assert main(["--registry", url, "db", "upgrade"]) == 0
    assert f"empty -> {HEAD_REVISION}" in capsys.readouterr().out
    assert current_revision(make_engine(url)) == HEAD_REVISION


# ---------------------------------------------------------------- hostile registries (#16)


def _cli(*args):
    from buildsys.cli import main
    return main(list(args))


def test_a_registry_of_a_newer_buildsys_is_refused_by_every_command(registry, tmp_path, capsys):
    registry.publish(new_artifact("ab" * 32))
    with registry._engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0042_from_the_future'"))
    url = registry.url
    registry.close()
    with pytest.raises(RegistryError, match=r"written by a newer buildsys \(revision 0042_from_the_future\); "
                                            r"upgrade buildsys") as info:
        Registry(url)
    assert info.value.exit_code == 6
    for command in (["ls"], ["show", "abab"], ["db", "upgrade"], ["gc"]):
        assert _cli("--registry", url, "--store", str(tmp_path / "store"), *command) == 6, command
        err = capsys.readouterr().err
        assert "newer buildsys (revision 0042_from_the_future)" in err and "Traceback" not in err, err
    with make_engine(url).connect() as conn:  # left as it was
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0042_from_the_future"


def test_a_registry_folder_that_cannot_be_created(capsys, tmp_path):
    with pytest.raises(RegistryError, match="cannot create the folder '/proc/nope'"):
        Registry("sqlite:////proc/nope/registry.db")
    assert _cli("--registry", "sqlite:////proc/nope/registry.db", "--store", str(tmp_path / "s"), "ls") == 6
    assert "Traceback" not in capsys.readouterr().err


def test_an_empty_registry_file_is_not_taken_for_a_new_registry(tmp_path, capsys):
    from buildsys.artifacts.registry.lookup import resolve

    db = tmp_path / "r.db"
    db.write_bytes(b"")
    message = rf"registry file '{db}' is empty \(0 bytes\); restore it from a backup, or remove it"
    with pytest.raises(RegistryError, match=message):
        Registry(f"sqlite:///{db}")
    with pytest.raises(RegistryError, match=message):
        resolve(db, "prod")  # the thin loader's read path
    with pytest.raises(RegistryError, match=message):
        upgrade(make_engine(f"sqlite:///{db}"))  # `buildsys db upgrade`
    assert _cli("--registry", f"sqlite:///{db}", "--store", str(tmp_path / "s"), "ls") == 6
    assert "Traceback" not in capsys.readouterr().err
    assert db.stat().st_size == 0  # nothing written into it
    db.unlink()
    Registry(f"sqlite:///{db}").close()  # removed, it starts a new one
    assert db.stat().st_size > 0


@pytest.mark.parametrize("content", [b"not a database at all\n" * 100, b"SQLite format 3\x00" + b"\xff" * 5000])
def test_a_registry_file_that_is_no_database(tmp_path, capsys, content):
    db = tmp_path / "r.db"
    db.write_bytes(content)
    with pytest.raises(RegistryError):
        Registry(f"sqlite:///{db}")
    for command in (["ls"], ["db", "current"], ["db", "upgrade"]):
        assert _cli("--registry", f"sqlite:///{db}", "--store", str(tmp_path / "s"), *command) == 6, command
        assert "Traceback" not in capsys.readouterr().err
    assert db.read_bytes() == content


def test_a_registry_path_that_is_a_directory(tmp_path, capsys):
    (tmp_path / "r.db").mkdir()
    with pytest.raises(RegistryError):
        Registry(f"sqlite:///{tmp_path / 'r.db'}")
    assert _cli("--registry", f"sqlite:///{tmp_path / 'r.db'}", "--store", str(tmp_path / "s"), "ls") == 6
    assert "Traceback" not in capsys.readouterr().err


def _hold_write_lock(path, seconds):
    """Another process takes SQLite's write lock and keeps it (as a stuck builder or a backup would)
    until a line arrives on its stdin or ``seconds`` pass."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import select, sqlite3, sys
        db = sqlite3.connect({str(path)!r}, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        print("locked", flush=True)
        select.select([sys.stdin], [], [], {seconds})
        db.execute("ROLLBACK")
        """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_write_waits_for_a_busy_registry_and_says_so(tmp_path, caplog):
    """Past SQLite's own busy timeout a write keeps retrying (and says so) instead of failing: the
    writer is seen waiting after its warning, and its row lands once the lock is let go. No clock
    is read: the holder lets go when the test tells it to."""
    import threading

    from tests.fixtures.guards import time_bound

    path = tmp_path / "busy.db"
    reg = Registry(f"sqlite:///{path}")
    holder = _hold_write_lock(path, 300)
    result = {}
    writer = threading.Thread(target=lambda: result.update(run_id=reg.start_run("a" * 64, "entry")))
    with caplog.at_level("WARNING", logger="buildsys.artifacts.registry"):
        writer.start()
        with time_bound(120, "waiting for the busy-registry warning"):
            while "the registry is busy" not in caplog.text:
                writer.join(0.1)
        assert writer.is_alive() and not result  # warned, still waiting: not failed, not through
        holder.communicate("go\n", timeout=60)
        writer.join(120)
    assert not writer.is_alive() and result["run_id"] >= 1
    assert "BUILDSYS_REGISTRY_WAIT" in caplog.text
    assert [r.id for r in reg.runs()] == [result["run_id"]]
    reg.close()


def test_a_registry_busy_past_the_bound_fails_with_what_to_do(tmp_path, monkeypatch):
    path = tmp_path / "busy.db"
    reg = Registry(f"sqlite:///{path}")
    monkeypatch.setenv("BUILDSYS_REGISTRY_WAIT", "1")
    holder = _hold_write_lock(path, 12)
    try:
        with pytest.raises(RegistryError, match="stayed busy .* BUILDSYS_REGISTRY_WAIT"):
            reg.start_run("a" * 64, "entry")
    finally:
        holder.kill()
        holder.wait()
    assert reg.runs() == []
    reg.close()


@pytest.mark.parametrize("url, words", [
    ("postgresql://u:secret@127.0.0.1:1/db", "Connection refused"),  # nothing listens on port 1
    ("postgresql://u@[::1/db", "not a database URL: 'postgresql://u@[::1/db'"),  # was a ValueError traceback
    ("postgresql://u:secret@db.example:port/x", "not a database URL: 'postgresql://u:***@db.example:port/x'"),
    ("postgresql://u:secret@[::1/x", "not a database URL: 'postgresql://u:***@[::1/x'"),
    ("foo://x", "Can't load plugin: sqlalchemy.dialects:foo"),
    ("sqlite:///{tmp}/r.db?foo=bar", "'foo' are not accepted by the pysqlite driver"),  # was a warning, then ignored
])
def test_bad_registry_urls_say_what_to_do_without_sqlalchemy_links(url, words, tmp_path, capsys):
    """A --registry that cannot be used: exit 6, the cause and what to check; no "(Background on
    this error at: https://sqlalche.me/...)" line, no traceback, no password."""
    from buildsys.cli import main

    assert main(["--store", str(tmp_path / "store"), "--registry", url.format(tmp=tmp_path), "ls"]) == 6
    err = capsys.readouterr().err
    assert words in err and "--registry" in err, err
    assert "sqlalche.me" not in err and "Background on this" not in err and "Traceback" not in err, err
    assert "secret" not in err, err
