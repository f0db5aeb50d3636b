"""What an artifact is, said once: the vocabulary the builder, the store, the registry and the thin
runtime share. Standard library (and numpy) only, so that the runtime can import all of it.

- ``signature.py``: the input signature (``Batch``, ``Input``, ``Signature``): declared in
  builds.yaml, keyed, written to and validated from the manifest's ``io``, checked at run time.
- ``status.py``: every status word, from the plan to the registry, the manifest and the JSON output.
- ``files.py``: the file primitives (an atomic write with one fsync rule, a lock, a durable rename).
- ``values.py``: ``FrozenDict``, the immutable, hashable dict a spec holds its target and kwargs in.
- ``versions.py``: installed package versions, by metadata.
"""
