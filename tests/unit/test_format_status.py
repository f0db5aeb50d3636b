"""The status words (buildsys/format/status.py): each vocabulary is the one its JSON schema, its
registry column and its manifest field hold, and an artifact's registry status follows its
manifest's verification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import buildsys
from buildsys.format.status import Action, ArtifactStatus, Outcome, RunStatus, Verification, artifact_status

SCHEMAS = Path(buildsys.__file__).parent / "schemas"


def _schema_enum(schema: str, field: str) -> set[str]:
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get(field), dict) and "enum" in node[field]:
                found.append(set(node[field]["enum"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads((SCHEMAS / schema).read_text()))
    assert len(found) == 1, (schema, field, found)
    return found[0]


def test_the_json_schemas_list_exactly_the_plan_and_build_words():
    assert _schema_enum("plan.schema.json", "action") == set(Action)
    assert _schema_enum("build.schema.json", "status") == set(Outcome)


def test_the_stored_words_are_unchanged():
    """Registry rows and manifests written by every earlier buildsys hold these strings."""
    assert list(RunStatus) == ["running", "built", "failed", "crashed"]
    assert list(ArtifactStatus) == ["ok", "unverified"]
    assert list(Verification) == ["verified", "unverified"]
    assert json.dumps({"status": Verification.UNVERIFIED}) == '{"status": "unverified"}'


@pytest.mark.parametrize("manifest, status", [
    ({}, ArtifactStatus.OK),  # before verification was recorded: built and run natively
    ({"verification": {"status": "verified", "how": "native"}}, ArtifactStatus.OK),
    ({"verification": {"status": "verified", "how": "qemu-user"}}, ArtifactStatus.OK),
    ({"verification": {"status": "unverified", "reason": "no emulator"}}, ArtifactStatus.UNVERIFIED),
    ({"verification": "unverified"}, ArtifactStatus.OK),  # not a mapping: not a claim of anything
])
def test_an_artifacts_status_follows_its_manifest(manifest, status):
    assert artifact_status(manifest) is status
