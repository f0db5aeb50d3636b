"""What an artifact is, said once: the vocabulary the builder, the store, the registry and the thin
runtime share. Standard library (and numpy) only, so that the runtime can import all of it.

- ``target.py``: what the code is compiled for (``Target``: kind, host code, triple and architecture,
  CPU and features, CUDA architectures and PTX, the classic string form), normalized by
  ``config/targets.py`` and read back from a manifest.
- ``signature.py``: the input signature (``Batch``, ``Input``, ``Signature``): declared in
  builds.yaml, keyed, written to and validated from the manifest's ``io``, checked at run time.
- ``status.py``: every status word, from the plan to the registry, the manifest and the JSON output.
- ``files.py``: the file primitives (an atomic write with one fsync rule, a lock, a durable rename).
- ``values.py``: ``FrozenDict``, the immutable, hashable dict a spec holds its kwargs in (``Target`` is one).

Beside it: ``artifacts/manifest.py`` reads a manifest and validates it as outside input (the build
writes it: ``pipeline/build._manifest``), ``artifacts/store.py`` has the verified open
(``read_verified``, ``copy_verified``) and ``artifacts/digests.py`` the digests and canonical JSON.
- ``versions.py``: installed package versions, by metadata.
"""
