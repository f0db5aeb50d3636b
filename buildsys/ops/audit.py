"""``buildsys verify``: every stored file re-hashed against the digest the registry holds for it."""

from __future__ import annotations

from dataclasses import dataclass, field

from buildsys.errors import DamagedStoreError


@dataclass
class Audit:
    checked: int = 0
    problems: list[dict] = field(default_factory=list)  # key, file, expected, found (None: missing)
    unreferenced: int = 0  # objects no artifact names (gc removes them after its grace period)

    def to_dict(self) -> dict:
        return {"checked": self.checked, "problems": self.problems, "unreferenced_objects": self.unreferenced,
                "ok": not self.problems}

    def raise_for_problems(self) -> None:
        """A ``DamagedStoreError`` (exit 5) when a file is missing or its bytes changed."""
        if self.problems:
            raise DamagedStoreError(f"{len(self.problems)} of {self.checked} stored files are missing or damaged; "
                                 "`buildsys build` rebuilds artifacts whose objects are gone")


def audit_store(registry, store) -> Audit:
    audit, referenced = Audit(), set()
    for key, f in registry.file_digests():
        audit.checked += 1
        referenced.add(f.digest)
        actual = store.check(f.digest)
        if actual != f.digest:
            audit.problems.append({"key": key, "file": f.name, "expected": f.digest, "found": actual})
    audit.unreferenced = sum(1 for d in store.iter_objects() if d not in referenced)
    return audit
