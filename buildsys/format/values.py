"""Small immutable values the frozen types hold: a spec must be hashable and must not change under
the code it is handed to, and its JSON (the build key) must stay what it was.

``FrozenDict`` is a ``dict`` (``json.dumps`` writes it as one, so canonical JSON and keys are
unchanged) that refuses every change and hashes by its canonical JSON. Nested mappings and lists
are frozen too (as ``FrozenDict`` and ``FrozenList``, a ``list`` that refuses changes), so
equality with plain dicts and lists holds. ``thaw()`` gives a plain, fresh copy for code that
may change what it is given (a model's builder function and its kwargs).
"""

from __future__ import annotations

import json
from typing import Any


def _refuse(self, *args, **kwargs):
    raise TypeError(f"a {type(self).__name__} cannot be changed; thaw() gives a copy that can")


def freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return value if isinstance(value, FrozenDict) else FrozenDict(value)
    if isinstance(value, (list, tuple)):
        return value if isinstance(value, FrozenList) else FrozenList(value)
    return value


def thaw(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    return value


class FrozenDict(dict):
    __slots__ = ()

    def __init__(self, *args, **kwargs):
        super().__init__({k: freeze(v) for k, v in dict(*args, **kwargs).items()})

    def __hash__(self) -> int:
        return hash(json.dumps(self, sort_keys=True, separators=(",", ":")))

    def __reduce__(self):  # pickled for the build process: rebuilt through __init__
        return (FrozenDict, (thaw(self),))

    def thaw(self) -> dict:
        return thaw(self)

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __repr__(self) -> str:
        return f"FrozenDict({dict.__repr__(self)})"


class FrozenList(list):
    __slots__ = ()

    def __init__(self, items=()):
        super().__init__(freeze(v) for v in items)

    def __hash__(self) -> int:
        return hash(json.dumps(self, sort_keys=True, separators=(",", ":")))

    def __reduce__(self):
        return (FrozenList, (thaw(self),))

    __setitem__ = __delitem__ = __iadd__ = __imul__ = append = clear = extend = insert = pop = remove = _refuse
    reverse = sort = _refuse
