"""CI-sized runs of the stress scripts (full size: see their --help)."""

import pytest

from tests.stress import concurrent_builders, crash_loop

pytestmark = pytest.mark.model


def test_kill_9_at_random_points_leaves_only_whole_artifacts(tmp_path):
    # every kill before half the baseline build's time: the rounds interrupt builds, not idle processes
    result = crash_loop.run(rounds=3, root=tmp_path, seed=1, latest=0.5)
    assert result["problems"] == [] and result["failures"] == 0
    assert result["kills"] >= 1 and result["kills"] + result["completed_before_kill"] == 3, result
    assert result["rows_checked"] > 0 and result["objects_checked"] > 0


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_concurrent_builders_build_each_key_once(tmp_path, request, dialect):
    url = request.getfixturevalue("postgres_server").create_database() if dialect == "postgresql" else None
    result = concurrent_builders.run(procs=3, root=tmp_path, registry_url=url)
    assert result["problems"] == []
    assert result["artifacts"] == result["compiled"] == 4
