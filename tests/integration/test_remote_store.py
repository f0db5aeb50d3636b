"""The store behind an S3-compatible server (moto's, on loopback): builds upload, another machine
with the same registry and an empty local store downloads, verifies and caches."""

import socket

import pytest

from tests.fixtures.capabilities import need_module

from buildsys.errors import IntegrityError
from buildsys.artifacts.registry import Registry
from buildsys.artifacts.remote import RemoteStore
from buildsys.artifacts.store import Store

from tests.fixtures.workspace import Workspace, assert_same_predictions

pytestmark = pytest.mark.model

CONFIG = """
models:
  tiny_cnn: {source: "tests.fixtures.models:tiny_cnn"}
matrix: {model: [tiny_cnn], input_size: [32]}
"""


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    boto3 = need_module("boto3", "pip install -e '.[remote]' (make venv)")
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    patch = pytest.MonkeyPatch()
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1"), ("BUILDSYS_S3_ENDPOINT", endpoint)):
        patch.setenv(name, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="releases")
    yield endpoint
    patch.undo()
    server.stop()


def test_build_uploads_and_a_fresh_machine_loads_through_the_cache(s3, tmp_path, capsys):
    (tmp_path / "ci").mkdir()
    ws = Workspace(tmp_path / "ci", CONFIG)
    assert ws.cli("--remote", "s3://releases/buildsys", "build") == 0
    (record,) = ws.registry.list()
    remote = RemoteStore("s3://releases/buildsys")
    assert all(remote.has(f.digest) for f in record.files)
    assert remote.object_key(record.files[0].digest).startswith("buildsys/sha256/")

    # another machine: the same (shared) registry, an empty local store
    deploy = Store(tmp_path / "edge" / "artifacts", remote=remote)
    registry = Registry(ws.registry.url)
    assert_same_predictions(record.key, (ws.registry, Store(ws.store)), (registry, deploy))
    assert {f.digest for f in record.files} <= set(deploy.iter_objects())  # cached locally now

    # a plan with the remote configured sees the artifact as present (no rebuild)
    (tmp_path / "other").mkdir()
    other = Workspace(tmp_path / "other", CONFIG)
    assert other.cli("--registry", ws.registry.url, "--remote", "s3://releases/buildsys", "plan") == 0
    assert "cached" in capsys.readouterr().out


def test_a_tampered_remote_object_is_refused_and_not_cached(s3, tmp_path):
    import boto3

    remote = RemoteStore("s3://releases/tamper")
    local = Store(tmp_path / "a", remote=remote)
    digest, _ = local.put_bytes(b"weights", name="w")
    boto3.client("s3", endpoint_url=s3).put_object(Bucket="releases", Key=remote.object_key(digest),
                                                   Body=b"other bytes")
    fresh = Store(tmp_path / "b", remote=remote)
    with pytest.raises(IntegrityError):
        fresh.read_verified(digest)
    assert list(fresh.iter_objects()) == [] and not list(fresh.tmp.iterdir())


def test_push_uploads_what_was_built_before_the_remote(s3, tmp_path, capsys):
    ws = Workspace(tmp_path, CONFIG)
    assert ws.cli("build") == 0
    capsys.readouterr()
    assert ws.cli("--remote", "s3://releases/late", "push") == 0
    assert "3 objects uploaded, 0 already there" in capsys.readouterr().out
    assert ws.cli("--remote", "s3://releases/late", "push") == 0
    assert "0 objects uploaded, 3 already there" in capsys.readouterr().out
    assert ws.cli("push") == 2  # no remote configured
