"""One root error, one subclass per stage, each with its exit code.

Messages say what failed, where (file, line, matrix entry, key) and what to do
next. The CLI prints ``str(error)`` and exits with ``error.exit_code``; only
errors outside this hierarchy get a traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class BuildsysError(Exception):
    """Root of every error buildsys raises on purpose."""

    exit_code = 1


class ConfigError(BuildsysError):
    """builds.yaml (or a CLI argument that plays its part) is wrong."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, hint: str | None = None):
        self.message, self.file, self.line, self.field, self.hint = message, file, line, field, hint
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        text = f"{where}{field + ': ' if field else ''}{message}"
        if hint:
            text += f"\n  hint: {hint}"
        super().__init__(text)


class TargetError(ConfigError):
    """A target string or dict that TVM 0.27 cannot use."""


class PassError(ConfigError):
    """A disabled pass name that this TVM does not have."""


class UsageError(BuildsysError):
    """Command-line usage that cannot be satisfied (unknown key, ambiguous prefix...)."""

    exit_code = 2


class InputError(ValueError, BuildsysError):
    """An input given to a loaded artifact does not fit its signature (name, dtype, shape, batch
    range, value range). A ValueError, so callers that caught the loader's old errors still do."""

    exit_code = 2


class BuildError(BuildsysError):
    """One matrix entry failed to export, compile or verify."""

    exit_code = 3

    def __init__(self, message: str, *, key: str | None = None, stage: str | None = None):
        self.key, self.stage, self.detail = key, stage, message  # detail: the message without key and stage
        prefix = ""
        if key:
            prefix += f"[{key[:12]}] "
        if stage:
            prefix += f"{stage}: "
        super().__init__(prefix + message)


class ParityError(BuildError):
    """The compiled artifact disagrees with PyTorch beyond tolerance."""


class StoreError(BuildsysError):
    """The content-addressed store could not be read or written."""

    exit_code = 4


class IntegrityError(StoreError):
    """A stored file's bytes do not match the digest recorded for it."""

    exit_code = 5

    def __init__(self, *, key: str | None, path: str, expected: str, actual: str | None):
        self.key, self.path, self.expected, self.actual = key, path, expected, actual
        found = actual if actual is not None else "missing file"
        super().__init__(
            f"integrity check failed for artifact {key or '?'}: {path}\n"
            f"  expected {expected}\n  found    {found}\n"
            "  the file was not loaded; rebuild it with `buildsys build --force --only key=<KEY>`"
        )


class DamagedStoreError(StoreError):
    """``buildsys verify`` found stored files missing or changed (each is listed before this)."""

    exit_code = 5


class RegistryError(BuildsysError):
    """The registry database failed or holds no such record."""

    exit_code = 6


class TrustError(BuildsysError):
    """A release or bundle fails its checks: signature, digests, unsafe archive members."""

    exit_code = 5


class CompatibilityError(BuildsysError):
    """An artifact was built for another runtime, manifest format or CPU."""

    exit_code = 7


class Interrupted(BuildsysError):
    """Ctrl-C (SIGINT): what was done so far is kept; nothing half-written is published."""

    exit_code = 130


def _edits(a: str, b: str) -> int:
    """Letters inserted, removed, replaced or swapped with a neighbour to turn ``a`` into ``b``."""
    a, b = a.lower(), b.lower()
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a typo, or None when nothing is close: a name a slip or two away
    (two edits, a third of a long word), not any name that shares letters ('garbage' is no 'armeb')."""
    choices = [str(c) for c in choices]
    close = [c for c in difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
             if _edits(word, c) <= max(2, len(word) // 3)]
    # a fragment of a longer name ("size" for "input_size") is a likely slip too
    close += [c for c in choices if word and word in c and c not in close][: 3 - len(close)]
    if not close:
        return None
    return "did you mean " + " or ".join(repr(c) for c in close) + "?"
