"""The build key (digests and canonical JSON are ``buildsys.artifacts.digests``).

The build key names an artifact by everything that changes its bytes or its
behaviour. It is the sha256 of the canonical JSON (sorted keys, no spaces,
UTF-8) of this "key material":

- ``key_format``: version of this definition; bump it when fields change.
- ``spec``: the matrix entry (``BuildSpec.to_dict``): model name, source
  ``module:function``, task, model kwargs, weights source/seed/name, input
  shape, the normalized target dict, opt level, disabled passes (sorted).
- ``weights``: digest of the weights file (``sha256:...``), or
  ``seeded:<seed>`` for random weights (then torch's version pins the values).
- ``toolchain``: torch, torchvision, TVM, tvm-ffi, onnx, onnxsim and buildsys
  versions, plus ``buildsys_tree`` (the digest of buildsys' own code) when it runs
  from a checkout; a compiler upgrade, or an edit of the compiler in a checkout,
  must never be answered from an old cache entry.
- ``tuning``: ``null`` for an untuned entry; for a tuned one (its settings are in
  ``spec.tuning``): the tuning database's scope (target + TVM version) and the
  digest of the records applied to it, one best record per workload of the model
  (``buildsys.compiler.tuning``). Better records make a new key; the same records, a cache hit.
- ``sources`` (since buildsys 0.4): the digest of the model's own code and data,
  as recorded while the builder instantiated and exported it: Python modules
  from outside the toolchain and data files by content, non-toolchain pip
  packages by name and version (``buildsys.pipeline.sources``). Editing a model's module,
  a module it imports, a file it reads, or upgrading the package that defines
  it makes a new key.

The *entry key* is the same hash without ``tuning`` and ``sources``: it names the
matrix entry rather than one artifact of it (its shard, its tuning database
entry, its depfile), and stays put when the model's code changes.

Left out on purpose: the config file path and line, the weights file path
(its digest stands for it), the parity tolerance (it decides acceptance, not
output), the host, and where parity runs (builds.yaml's ``verify``,
``BUILDSYS_RPC_*``: a board over RPC, qemu-user or here check the same bytes).
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

from buildsys.artifacts.digests import canonical_json

KEY_FORMAT = 1


def key_material(spec_dict: Mapping[str, Any], weights: str, toolchain: Mapping[str, Any],
                 tuning: str | None = None) -> dict:
    return {"key_format": KEY_FORMAT, "spec": dict(spec_dict), "weights": weights,
            "toolchain": dict(toolchain), "tuning": tuning}


def entry_key(material: Mapping[str, Any]) -> str:
    """The key of the matrix entry: the material without tuning records and model sources."""
    return build_key({**{k: v for k, v in material.items() if k != "sources"}, "tuning": None})


def build_key(material: Mapping[str, Any]) -> str:
    """64 hex digits of sha256 over the canonical key material."""
    return hashlib.sha256(canonical_json(material)).hexdigest()
