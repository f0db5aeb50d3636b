#!/usr/bin/env python3
"""Usage: python benchmarks/keys_without_tree.py builds.yaml

Keys of builds.yaml's entries with toolchain.buildsys_tree left out (it digests buildsys' own
code, so any edit of a checkout changes it); the rest of the key material is what a refactor must keep."""
import sys, tempfile
from pathlib import Path
from buildsys.config.spec import load_specs
from buildsys.pipeline.plan import plan_builds
from buildsys.pipeline.keys import build_key
from buildsys.artifacts.store import Store
from buildsys.artifacts.registry import Registry

tmp = Path(tempfile.mkdtemp())
jobs = plan_builds(load_specs(sys.argv[1]), Registry(f"sqlite:///{tmp/'r.db'}"), Store(tmp), include_skipped=True)
for job in jobs:
    material = dict(job.material)
    material["toolchain"] = {k: v for k, v in material["toolchain"].items() if k != "buildsys_tree"}
    print(build_key(material)[:16], job.spec.describe())
