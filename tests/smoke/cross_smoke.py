"""The thin runtime on another architecture: build for it here, then load the artifact by key from
the registry, by alias and from a bundle, in that architecture's runtime-only environment (numpy and
TVM's runtime in a sysroot, under qemu-user; ``buildsys/pipeline/emulation.py``).

    python tests/smoke/cross_smoke.py SMOKE_DIR [--config tests/smoke/builds-aarch64.yaml]

``make runtime-smoke-aarch64`` runs it; ``tests/integration/test_cross.py`` calls ``guest_smoke``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from buildsys.cli import main as buildsys  # noqa: E402
from buildsys.platforms import PLATFORMS, triple_arch  # noqa: E402


def guest_smoke(store: Path, key: str, alias: str, bundle: Path, arch: str = "aarch64", timeout: int = 900) -> dict:
    """Run runtime_smoke_guest.py under qemu-user in ``arch``'s sysroot; its JSON line."""
    from buildsys.pipeline import emulation

    row = PLATFORMS[arch]
    root = emulation.sysroot(row)
    work = store.parent / "guest-py"
    shutil.rmtree(work, ignore_errors=True)
    emulation.runtime_copy(work)
    command, env = emulation.python_command(row, root, [str(work)])
    env["BUILDSYS_STORE"] = str(store)
    done = subprocess.run([*command, str(HERE / "runtime_smoke_guest.py"), key, alias, str(bundle)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"the runtime smoke failed under {row.emulator}:\n{done.stdout}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(smoke_dir: Path, config: Path) -> dict:
    store = smoke_dir / "artifacts"
    cli = ["-c", str(config), "--store", str(store)]
    assert buildsys([*cli, "build"]) == 0, "the build failed"
    from buildsys.artifacts.registry import Registry

    (record,) = Registry(f"sqlite:///{store / 'registry.db'}").list()
    assert record.status == "ok", f"the artifact was not verified: {record.status}"
    assert buildsys([*cli, "alias", "set", "smoke", record.key[:8]]) == 0
    assert buildsys([*cli, "export", record.key[:8], "-o", str(smoke_dir / "bundles")]) == 0
    arch = triple_arch(record.target.get("mtriple", "aarch64"))
    return guest_smoke(store, record.key, "smoke", smoke_dir / "bundles" / record.key, arch=arch)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("smoke_dir", type=Path)
    parser.add_argument("--config", type=Path, default=HERE / "builds-aarch64.yaml")
    args = parser.parse_args()
    shutil.rmtree(args.smoke_dir, ignore_errors=True)
    args.smoke_dir.mkdir(parents=True)
    print(json.dumps(run(args.smoke_dir, args.config)))
