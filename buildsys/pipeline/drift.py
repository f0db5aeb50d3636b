"""``buildsys plan --deep``: did a cached entry's model drift from its artifact?

The recorded sources (``sources``) cover the files a model reads from Python; a model can still
change through what buildsys cannot see (an environment variable, a file opened by native
code). Re-exporting it and comparing the exported graph and weights with the artifact's
manifest catches those, at the price of an export per entry.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import replace
from typing import Callable

from buildsys.artifacts import manifest as manifest_format
from buildsys.artifacts.store import Store
from buildsys.config.spec import BuildSpec
from buildsys.errors import BuildsysError
from buildsys.pipeline import isolation
from buildsys.pipeline.build import exported_digests
from buildsys.format.status import Action
from buildsys.pipeline.jobs import Job


def find_drift(entries: list[Job], store: Store, registry,
               on_job: Callable[[Job], None] | None = None) -> list[Job]:
    """``plan --deep``: re-export every cached entry and compare the exported module and weights
    with what its artifact was built from. Catches what the recorded sources missed (a model that
    reads an environment variable, a file it opened through native code...). Drifted entries come
    back as ``build`` (forced: their key is unchanged) with the reason; others as they were."""
    checked = []
    for entry in entries:
        if entry.action != Action.CACHED:
            checked.append(entry)
            continue
        if on_job is not None:
            on_job(entry)
        record = registry.get(entry.key)
        manifest = manifest_format.read_stored(store, record)
        recorded = manifest.get("exported")
        if not isinstance(recorded, dict):
            checked.append(replace(entry, reason=entry.reason + "; not checked deeply (built before buildsys 0.4)"))
            continue
        try:
            if isolation.in_process():
                now = _current_digests(entry.spec)
            else:  # model code runs in a process of its own here too (it may crash, exit, print)
                isolation.start_server()
                now = isolation.run_isolated(_current_digests, (entry.spec,), key=entry.key,
                                             timeout_s=isolation.DEFAULT_TIMEOUT_S)
        except BuildsysError as exc:
            checked.append(replace(entry, action=Action.BUILD, forced=True, reason=f"drifted: it no longer exports: {exc}"))
            continue
        differs = [what for what in ("graph", "weights") if now.get(what) != recorded.get(what)]
        if differs:
            what = " and ".join({"graph": "exported graph", "weights": "weights"}[d] for d in differs)
            checked.append(replace(entry, action=Action.BUILD, forced=True,
                                   reason=f"drifted: its {what} differ from the built artifact's although its "
                                          "recorded sources did not change (a dependency buildsys cannot see)"))
        else:
            checked.append(replace(entry, reason=entry.reason + "; exported graph and weights unchanged (--deep)"))
    return checked


def _current_digests(spec: BuildSpec) -> dict:
    """The entry's model exported now, as ``exported_digests`` (what the model prints goes to
    stderr: stdout may be carrying a JSON document)."""
    from buildsys.pipeline.importers import import_model

    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return exported_digests(import_model(spec))
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


