"""Release tars: export with a signed manifest, import elsewhere, hostile archives refused."""

import io
import tarfile

import numpy as np
import pytest

from buildsys.errors import TrustError
from buildsys.distribution.release import export_release, import_release
from buildsys.artifacts.signing import generate_keypair, load_private_key, load_public_key
from buildsys.artifacts.store import Store
from tests.fixtures.workspace import assert_same_predictions, empty_store

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    private, public = generate_keypair(tmp_path_factory.mktemp("keys") / "release.key")
    return load_private_key(str(private)), load_public_key(str(public)), private, public


@pytest.fixture
def release(built, keys, tmp_path):
    registry = built.registry
    records = registry.list()
    out = tmp_path / "release.tar"
    export_release(records, Store(built.store), registry, out, keys[0])
    return out, records


def _empty(tmp_path):
    return empty_store(tmp_path / "other")


def test_signed_release_round_trip_into_a_fresh_registry(built, release, keys, tmp_path):
    out, records = release
    store, registry = _empty(tmp_path)
    imported = import_release(out, store, registry, keys[1])
    assert sorted(imported) == sorted(r.key for r in records)
    for record in records:
        copy = registry.get(record.key)
        assert copy.manifest_digest == record.manifest_digest and copy.files == record.files
    for record in records:  # the imported copy answers as the original does, bit for bit
        assert_same_predictions(record.key, (built.registry, Store(built.store)), (registry, store))
    assert import_release(out, store, registry, keys[1]) == []  # already there: checked, kept


def test_deterministic_tar_bytes(built, keys, tmp_path, monkeypatch):
    """With SOURCE_DATE_EPOCH set (the release job's clock), two exports of the same artifacts are
    the same bytes, signature included; without it only the release manifest's created_at moves."""
    import hashlib

    records = built.registry.list()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")  # 2026-01-01
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    for path in (a, b):
        export_release(records, Store(built.store), built.registry, path, keys[0])
    assert hashlib.sha256(a.read_bytes()).hexdigest() == hashlib.sha256(b.read_bytes()).hexdigest()
    with tarfile.open(a) as tar:
        assert b'"created_at":"2026-01-01T00:00:00+00:00"' in tar.extractfile("release/manifest.json").read()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    from buildsys.errors import UsageError
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH"):
        export_release(records, Store(built.store), built.registry, tmp_path / "c.tar")


def _rewrite(src, dest, change):
    """Copy a tar member by member; change(member, data) -> list of (member, data)."""
    with tarfile.open(src) as tar_in, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar_out:
        for member in tar_in:
            data = tar_in.extractfile(member).read() if member.isreg() else None
            for new_member, new_data in change(member, data):
                tar_out.addfile(new_member, io.BytesIO(new_data) if new_data is not None else None)


def _refused(path, tmp_path, public_key=None, match=None):
    store, registry = _empty(tmp_path)
    with pytest.raises(TrustError, match=match):
        import_release(path, store, registry, public_key)
    assert registry.list() == [] and not list(store.iter_objects())


def test_tampered_file_unsigned_release_and_wrong_key_are_refused(release, keys, tmp_path):
    out, _ = release
    bad = tmp_path / "bad.tar"

    def flip(member, data):
        if member.name.endswith("/lib.so"):
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        return [(member, data)]
    _rewrite(out, bad, flip)
    _refused(bad, tmp_path, keys[1], match="digest")

    unsigned = tmp_path / "unsigned.tar"
    _rewrite(out, unsigned, lambda m, d: [] if m.name.endswith(".sig") else [(m, d)])
    _refused(unsigned, tmp_path, keys[1], match="not signed")

    other_private, other_public = generate_keypair(tmp_path / "other.key")
    _refused(out, tmp_path, load_public_key(str(other_public)), match="signature does not match")


@pytest.mark.parametrize("attack", ["absolute", "dotdot", "symlink", "hardlink", "device", "outside", "unlisted",
                                    "duplicate"])
def test_hostile_archives_are_refused_before_anything_is_written(release, tmp_path, attack):
    out, _ = release
    crafted = tmp_path / f"{attack}.tar"

    def inject(member, data):
        rows = [(member, data)]
        if not member.name.endswith("manifest.json") or member.name.count("/") != 1:
            return rows
        extra = tarfile.TarInfo({"absolute": "/etc/buildsys-owned", "dotdot": "release/../../escape",
                                 "outside": "elsewhere/file", "unlisted": "release/extra.bin",
                                 "duplicate": member.name}.get(attack, "release/link"))
        payload = b"x"
        if attack == "symlink":
            extra.type, extra.linkname, payload = tarfile.SYMTYPE, "/etc/passwd", None
        elif attack == "hardlink":
            extra.type, extra.linkname, payload = tarfile.LNKTYPE, member.name, None
        elif attack == "device":
            extra.type, extra.devmajor, extra.devminor, payload = tarfile.CHRTYPE, 1, 3, None
        extra.size = len(payload) if payload is not None else 0
        return rows + [(extra, payload)]
    _rewrite(out, crafted, inject)
    _refused(crafted, tmp_path)
    assert not (tmp_path / "escape").exists()


def test_signed_bundle_directories_verify_on_load(built, keys, tmp_path, monkeypatch):
    from buildsys.distribution.bundle import export_bundle
    from buildsys.errors import BuildsysError
    from buildsys.runtime import load_artifact

    record = built.registry.list()[0]
    signed = export_bundle(record, Store(built.store), tmp_path / "signed", keys[0])
    unsigned = export_bundle(record, Store(built.store), tmp_path / "unsigned")
    monkeypatch.setenv("BUILDSYS_PUBLIC_KEY", str(keys[3]))
    assert load_artifact(signed).key == record.key
    with pytest.raises(BuildsysError, match="not signed"):
        load_artifact(unsigned)
    (signed / "manifest.json.sig").write_text("00" * 64 + "\n")
    with pytest.raises(BuildsysError, match="signature does not match"):
        load_artifact(signed)


def test_export_all_from_the_cli_and_import_sets_the_aliases(fresh, keys, tmp_path, capsys):
    """The release workflow's own commands: alias, `export --all --sign-key`, then on another
    machine `import --public-key` (and `--no-aliases`); the alias resolves there to the same key."""
    from buildsys.cli import main

    ws = fresh()
    assert ws.cli("build", "--only", "model=tiny_cnn") == 0
    first, second = sorted(r.key for r in ws.registry.list())
    assert ws.cli("alias", "set", "prod", first) == 0 and ws.cli("alias", "set", "canary", second) == 0
    out = tmp_path / "all.tar"
    assert ws.cli("export", "-o", str(out)) == 2  # nothing named
    assert ws.cli("export", "--all", "-o", str(out), "--sign-key", str(keys[2])) == 0
    assert f"{out}: 2 artifacts, signed" in capsys.readouterr().out

    deploy = tmp_path / "deploy"
    assert main(["--store", str(deploy), "import", str(out), "--public-key", str(keys[3])]) == 0
    store, registry = empty_store(deploy)
    assert registry.resolve("prod").key == first and registry.resolve("canary").key == second
    assert_same_predictions(first, (ws.registry, Store(ws.store)), (registry, store))

    wrong_private, wrong_public = generate_keypair(tmp_path / "wrong.key")
    elsewhere = tmp_path / "elsewhere"
    assert main(["--store", str(elsewhere), "import", str(out), "--public-key", str(wrong_public)]) == 5
    assert "signature does not match" in capsys.readouterr().err
    assert main(["--store", str(elsewhere), "import", str(out), "--public-key", str(keys[3]), "--no-aliases"]) == 0
    _, plain = empty_store(elsewhere)
    assert sorted(r.key for r in plain.list()) == [first, second]
    assert all(r.aliases == () or list(r.aliases) == [] for r in plain.list())


def _keys_in_order(path):
    with tarfile.open(path) as tar:
        return sorted({m.name.split("/")[1] for m in tar if m.name.count("/") == 2})


def test_a_release_refused_by_its_last_artifact_registers_none_of_the_others(release, tmp_path):
    """All or nothing: the first artifacts are fine, the last one's lib.so has a flipped byte."""
    out, records = release
    assert len(records) >= 2
    last = _keys_in_order(out)[-1]
    bad = tmp_path / "last-bad.tar"

    def flip(member, data):
        if member.name == f"release/{last}/lib.so":
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        return [(member, data)]
    _rewrite(out, bad, flip)
    _refused(bad, tmp_path, match="digest")


def _with_manifests(out, dest, change_release=None, change_inner=None):
    """Rewrite the release manifest (and, optionally, the last artifact's own manifest, with
    the release manifest's digest for it updated so that only the inner check can refuse it)."""
    import hashlib
    import json

    last = _keys_in_order(out)[-1]
    with tarfile.open(out) as tar:
        release_manifest = json.loads(tar.extractfile("release/manifest.json").read())
        inner = tar.extractfile(f"release/{last}/manifest.json").read()
    if change_inner is not None:
        inner_doc = json.loads(inner)
        change_inner(inner_doc)
        inner = json.dumps(inner_doc).encode()
        for entry in release_manifest["artifacts"]:
            if entry["key"] == last:
                entry["files"]["manifest.json"] = {"digest": "sha256:" + hashlib.sha256(inner).hexdigest(),
                                                   "size": len(inner)}
    if change_release is not None:
        change_release(release_manifest)
    data = json.dumps(release_manifest).encode()

    def change(member, payload):
        if member.name.endswith(".sig"):
            return []
        if member.name == "release/manifest.json":
            payload = data
        elif member.name == f"release/{last}/manifest.json":
            payload = inner
        member = tarfile.TarInfo(member.name)
        member.size = len(payload)
        return [(member, payload)]
    _rewrite(out, dest, change)


def _files_as_list(m):
    m["artifacts"][-1]["files"] = list(m["artifacts"][-1]["files"])


def _entries_as_strings(m):
    m["artifacts"] = [e["key"] for e in m["artifacts"]]


def _bad_alias(m):
    m["artifacts"][-1]["aliases"] = [{"name": 1}]


def _no_parity(m):
    del m["parity"]


def _inner_files_list(m):
    m["files"] = list(m["files"])


HOSTILE_MANIFESTS = {
    "release-files-list": (_files_as_list, None),
    "release-entries-strings": (_entries_as_strings, None),
    "release-not-object": (lambda m: m.clear() or m.update({"release_format": 1, "artifacts": 7}), None),
    "release-format-bool": (lambda m: m.update({"release_format": True}), None),
    "release-files-missing": (lambda m: m["artifacts"][-1].pop("files"), None),
    "release-alias-object": (_bad_alias, None),
    "release-metrics-list": (lambda m: m["artifacts"][-1].update({"metrics": [1]}), None),
    "release-duplicate-key": (lambda m: m["artifacts"].append(dict(m["artifacts"][-1])), None),
    "inner-no-parity": (None, _no_parity),
    "inner-files-list": (None, _inner_files_list),
    "inner-spec-missing": (None, lambda m: m.pop("spec")),
    "inner-parity-string": (None, lambda m: m["parity"].update({"max_rel": "0"})),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MANIFESTS))
def test_malformed_manifests_are_refused_without_a_trace(release, tmp_path, case):
    out, _ = release
    crafted = tmp_path / f"{case}.tar"
    change_release, change_inner = HOSTILE_MANIFESTS[case]
    _with_manifests(out, crafted, change_release, change_inner)
    _refused(crafted, tmp_path)


@pytest.mark.parametrize("cut", ["tar-half", "gzip-half", "gzip-garbage", "empty"])
def test_truncated_archives_are_refused_not_aborted(release, tmp_path, cut):
    import gzip

    out, _ = release
    data = out.read_bytes()
    crafted = tmp_path / f"{cut}.tar"
    if cut == "tar-half":
        crafted.write_bytes(data[: len(data) // 2])
    elif cut == "gzip-half":
        packed = gzip.compress(data)
        crafted.write_bytes(packed[: len(packed) // 2])
    elif cut == "gzip-garbage":
        packed = bytearray(gzip.compress(data))
        packed[len(packed) // 2: len(packed) // 2 + 64] = b"\xff" * 64
        crafted.write_bytes(bytes(packed))
    else:
        crafted.write_bytes(b"")
    store, registry = _empty(tmp_path)
    from buildsys.errors import BuildsysError
    with pytest.raises(BuildsysError) as info:
        import_release(crafted, store, registry)
    assert info.value.exit_code in (2, 5)
    assert registry.list() == [] and not list(store.iter_objects())


def test_a_member_name_with_backslashes_is_refused_for_them(release, tmp_path):
    """``release\\..\\x.txt`` was refused as "an absolute path", which it is not."""
    out, _ = release
    crafted = tmp_path / "backslash.tar"

    def inject(member, data):
        rows = [(member, data)]
        if member.name == "release/manifest.json":
            extra = tarfile.TarInfo("release\\..\\x.txt")
            extra.size = 1
            rows.append((extra, b"x"))
        return rows
    _rewrite(out, crafted, inject)
    with pytest.raises(TrustError) as info:
        _refused_quietly(crafted, tmp_path)
    assert "backslashes are refused" in str(info.value) and "absolute" not in str(info.value), info.value


def _refused_quietly(path, tmp_path):
    store, registry = _empty(tmp_path)
    try:
        import_release(path, store, registry)
    finally:
        assert registry.list() == [] and not list(store.iter_objects())


def test_a_corrupt_gzip_stream_is_called_corrupt_not_a_missing_member(release, tmp_path):
    """A byte flipped in a gzip stream that still inflates (stored blocks): the damaged header
    ended tarfile's listing without a word, and the import said "lib.so is listed but missing"."""
    import gzip

    out, records = release
    data = out.read_bytes()
    packed = bytearray(gzip.compress(data, compresslevel=0))  # stored: the tar's bytes appear as they are
    name = f"release/{sorted(r.key for r in records)[0]}/lib.so".encode()
    at = packed.index(name)
    packed[at + len(name) - 1] ^= 0x20  # "lib.so" -> "lib.sO": its header's checksum no longer matches
    crafted = tmp_path / "corrupt.tar.gz"
    crafted.write_bytes(bytes(packed))
    with pytest.raises(TrustError) as info:
        _refused_quietly(crafted, tmp_path)
    message = str(info.value)
    assert "truncated or corrupt" in message and "damaged member header" in message, message
    assert "listed but missing" not in message, message


def test_import_of_a_directory_or_fifo_is_a_usage_error(tmp_path):
    import os

    from buildsys.errors import UsageError
    store, registry = _empty(tmp_path)
    fifo = tmp_path / "release.fifo"
    os.mkfifo(fifo)
    for path in (tmp_path, fifo):
        with pytest.raises(UsageError, match="not a regular file"):
            import_release(path, store, registry)


def _damage(data: bytes, rng) -> tuple[str, bytes]:
    """One hostile variant of a release tar, by class: bytes flipped, cut short, a block of junk,
    a block repeated, junk inserted, or the archive's members reordered at block boundaries."""
    kind = rng.choice(["flip", "cut", "junk", "repeat", "insert", "swap"])
    out = bytearray(data)
    if kind == "flip":
        for at in rng.integers(0, len(out), size=int(rng.integers(1, 9))):
            out[at] ^= 1 << int(rng.integers(0, 8))
    elif kind == "cut":
        out = out[: int(rng.integers(0, len(out)))]
    elif kind == "junk":
        at = int(rng.integers(0, len(out)))
        out[at: at + 512] = rng.bytes(min(512, len(out) - at))
    elif kind == "repeat":
        at = int(rng.integers(0, len(out) // 512)) * 512
        out[at:at] = out[at: at + 512 * int(rng.integers(1, 4))]
    elif kind == "insert":
        at = int(rng.integers(0, len(out)))
        out[at:at] = rng.bytes(int(rng.integers(1, 2048)))
    else:
        blocks = [out[i: i + 512] for i in range(0, len(out), 512)]
        i, j = rng.integers(0, len(blocks), size=2)
        blocks[i], blocks[j] = blocks[j], blocks[i]
        out = bytearray(b"".join(blocks))
    return kind, bytes(out)


def test_generated_damage_never_half_imports_a_release(release, keys, tmp_path):
    """Releases damaged by class (tests/fixtures/fuzz.py scales the count): each import either
    refuses with a TrustError or UsageError and leaves nothing behind, or (damage the signature
    and digests cannot see: tar padding) imports every artifact whole; never a traceback."""
    from buildsys.errors import BuildsysError
    from tests.fixtures.fuzz import TRIED, examples

    out, records = release
    data = out.read_bytes()
    rng = np.random.default_rng(16)
    for n in range(examples(40)):
        kind, damaged = _damage(data, rng)
        path = tmp_path / f"damaged-{n}.tar"
        path.write_bytes(damaged)
        store, registry = _empty(tmp_path / f"into-{n}")
        try:
            imported = import_release(path, store, registry, keys[1])
        except BuildsysError as exc:
            assert exc.exit_code in (2, 5), (kind, n, exc)
            assert registry.list() == [] and not list(store.iter_objects()), (kind, n)
            TRIED[f"release {kind}: refused"] += 1
        else:
            assert sorted(imported) == sorted(r.key for r in records), (kind, n)
            assert all(store.check(f.digest) == f.digest for r in registry.list() for f in r.files)
            TRIED[f"release {kind}: imported whole"] += 1
        path.unlink()
