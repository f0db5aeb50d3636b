"""The code and data a model is made of, so that its key covers them.

A matrix entry names its model by ``source: module:function``; the string alone
says nothing about the code behind it, so editing a user's model module once
left ``plan`` answering "up to date" (a stale artifact served by key). This
module does what ninja's depfiles and ccache's direct mode do:

- **Recording** (builder, while the model is instantiated and exported):
  every Python module loaded from outside the pinned toolchain, and every
  data file opened for reading (``sys.addaudithook``), becomes a
  ``Dependency``: a module or data file by its content digest, a pip
  package that is not part of the toolchain by distribution name and
  version (plus file digests when it is an editable install). The toolchain
  is buildsys's own requirement closure (torch, TVM, numpy...) and the
  standard library: their versions are in the key already. buildsys's
  model zoo (``buildsys.models.*``) counts as model code.
- **The key**: ``sources`` in the key material is the digest of the sorted
  (kind, name, digest or version) triples; paths and mtimes stay out, so a
  checkout in another folder keeps its keys.
- **Planning** reads the entry's depfile (``<store>/deps/<entry key>.json``,
  written after each successful build), re-hashes each file only when its
  size or mtime changed, asks package versions from metadata, and so gets
  the key without importing anything; a changed file makes a new key and a
  reason that names it.

A module is the model's when it was loaded while the model was made and
exported, when an earlier build of the same source in this process loaded it
(``--jobs`` workers build several entries), or when the source module refers
to it through its globals. A builder process that imports a user module for
one source and a second source that only copies a value out of it could miss
it; a build in a fresh process (the CLI) cannot.

Longer than 400 lines on purpose: recording, the depfile and the plan-time check must
agree on what a dependency is and which files are the toolchain's; they share that
classification here.
"""

from __future__ import annotations

import ast
import functools
import importlib.machinery
import importlib.util
import json
import os
import re
import sys
import sysconfig
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterable, Iterator

from buildsys.errors import ConfigError, did_you_mean
from buildsys.artifacts.digests import canonical_json, digest_bytes, digest_file
from buildsys.format.files import atomic_write

DEPS_FORMAT = 2
MODEL_ZOO = "buildsys.models"
# The operating system's files (kernel interfaces, /etc/os-release that platform.* reads during an
# export, shared data under /usr): not the model's, and not what an artifact's bytes depend on.
_SKIP_PREFIXES = ("/proc/", "/sys/", "/etc/", "/usr/", "/run/", "/var/", "/lib/", "/lib64/", "/bin/", "/sbin/")


@dataclass(frozen=True)
class Dependency:
    kind: str  # module | data | package
    name: str  # module name, file name, or distribution name
    digest: str | None = None  # module and data files
    version: str | None = None  # packages
    path: str | None = None  # where it was read: for re-hashing, never in the key
    size: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None  # changes on every write, and `touch -r` cannot set it back

    def key_part(self) -> list:
        return [self.kind, self.name, self.version if self.kind == "package" else self.digest]

    def label(self) -> str:
        if self.kind == "package":
            return f"package {self.name} {self.version}"
        if self.kind == "absent":
            return f"absent module {self.name}"
        return f"{self.kind} {self.name} ({self.path})" if self.path else f"{self.kind} {self.name}"


def sources_digest(deps: Iterable[Dependency]) -> str:
    """What the key records: no paths, no times, order-free."""
    return digest_bytes(canonical_json(sorted(d.key_part() for d in deps)))


# ---------------------------------------------------------------- the toolchain


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.lru_cache(maxsize=1)
def toolchain_distributions() -> frozenset[str]:
    """buildsys and everything it requires, recursively (all extras): the pinned toolchain."""
    seen: set[str] = set()
    todo = ["buildsys"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
            if match:
                todo.append(_normalize(match.group(1)))
    return frozenset(seen)


@functools.lru_cache(maxsize=1)
def _top_level_distributions_cached() -> dict[str, list[str]]:
    return {name: [_normalize(d) for d in dists] for name, dists in metadata.packages_distributions().items()}


@functools.lru_cache(maxsize=1)
def _system_dirs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(standard library dirs, site-packages dirs)."""
    paths = sysconfig.get_paths()
    stdlib = {os.path.realpath(paths[k]) + os.sep for k in ("stdlib", "platstdlib") if k in paths}
    site = {os.path.realpath(p) + os.sep for p in sys.path if p and p.rstrip("/").endswith(("site-packages",
                                                                                             "dist-packages"))}
    for k in ("purelib", "platlib"):
        if k in paths:
            site.add(os.path.realpath(paths[k]) + os.sep)
    return tuple(sorted(stdlib)), tuple(sorted(site))


@functools.lru_cache(maxsize=None)
def _editable(dist: str) -> bool:
    try:
        text = metadata.distribution(dist).read_text("direct_url.json")
    except (metadata.PackageNotFoundError, OSError):
        return False
    try:
        return bool(json.loads(text or "{}").get("dir_info", {}).get("editable"))
    except ValueError:
        return False


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _file_dependency(kind: str, name: str, path: str) -> Dependency | None:
    """By the path as the model named it (a re-pointed symlink is a change), its content's digest."""
    try:
        st = os.stat(path)
        digest = digest_file(path)
    except OSError:
        return None
    _check_unchanged_since_read(path, st)
    return Dependency(kind, name, digest=digest, path=path, size=st.st_size, mtime_ns=st.st_mtime_ns,
                      ctime_ns=st.st_ctime_ns)


def _check_unchanged_since_read(path: str, st: os.stat_result) -> None:
    """A file edited while the build read it would be recorded with content the build never saw."""
    with _OPENED.lock:
        first = _OPENED.first_stat.get(path)
    if first is not None and first != _stat_key(st):
        from buildsys.errors import BuildError

        raise BuildError(f"{path} changed while the model was being built (the artifact would be keyed by "
                         "content it did not use); build again", stage="model")


def _module_dependency(name: str, module) -> Dependency | None:
    """A loaded module as a dependency, or None when the toolchain (or nothing on disk) covers it.
    Where its file lives decides, not its name: a user's regex.py beside builds.yaml is model code
    even though a pip package of that name is part of the toolchain."""
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or name in ("__main__", "__mp_main__") or not os.path.isfile(path):
        return None
    path = os.path.abspath(path)
    real = os.path.realpath(path)
    stdlib, site = _system_dirs()
    in_site = real.startswith(site)
    top = name.partition(".")[0]
    if top == "buildsys" and not in_site and real.startswith(_BUILDSYS_DIR):
        return _file_dependency("module", name, path) if name.startswith(MODEL_ZOO + ".") else None
    if not in_site:
        if real.startswith(stdlib) or real.startswith(_SKIP_PREFIXES):
            return None
        return _file_dependency("module", name, path)  # user code, or an editable install
    dists = _top_level_distributions_cached().get(top, [])
    if not dists or any(d in toolchain_distributions() for d in dists):
        return None  # the toolchain's, or loose files of the environment (.pth hooks, editable finders)
    try:
        version = metadata.version(dists[0])
    except metadata.PackageNotFoundError:
        version = None
    return Dependency("package", dists[0], version=version)


_BUILDSYS_DIR = os.path.realpath(os.path.dirname(os.path.dirname(__file__))) + os.sep  # buildsys/, not pipeline/


# ---------------------------------------------------------------- recording


class _OpenedFiles:
    """Files opened while a recording is on (one audit hook per process): read ones are inputs,
    ones the build created or truncated are its own output; each with its stat when first opened."""

    def __init__(self):
        self.active = 0
        self.paths: set[str] = set()
        self.written: set[str] = set()
        self.first_stat: dict[str, tuple[int, int, int]] = {}
        self.imports: set[str] = set()  # modules model code tried to import (found or not)
        self.lock = threading.Lock()
        self.installed = False

    def hook(self, event: str, args) -> None:
        if not self.active:
            return
        if event == "import":
            self._import(args)
            return
        if event != "open":
            return
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        if not isinstance(path, (str, bytes, os.PathLike)) or isinstance(path, int):
            return
        if isinstance(mode, str):
            creates = any(c in mode for c in "wxa")  # "r+" reads (and may write) a file that exists
        else:
            creates = isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
        try:
            text = os.path.abspath(os.fsdecode(path))
        except (TypeError, ValueError):
            return
        try:
            stat_key = None if creates else _stat_key(os.stat(text))
        except OSError:
            stat_key = None
        with self.lock:
            (self.written if creates else self.paths).add(text)
            if stat_key is not None:
                self.first_stat.setdefault(text, stat_key)

    def _import(self, args) -> None:
        """Remember imports that model code (not the toolchain) asked for: one that fails now (an
        optional import) changes the model once the module appears."""
        name = args[0] if args else None
        if not isinstance(name, str) or name.startswith(("buildsys", "_")):
            return
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
            frame = frame.f_back
        caller = frame.f_code.co_filename if frame is not None else ""
        stdlib, site = _system_dirs()
        if not caller or caller.startswith("<") or os.path.realpath(caller).startswith(stdlib + site + (_BUILDSYS_DIR,)):
            return
        with self.lock:
            self.imports.add(name)


_OPENED = _OpenedFiles()


def _is_data_file(path: str, skip_dirs: tuple[str, ...]) -> bool:
    """Any regular file the model read, whatever its name (weights in .pth, code run with exec),
    except Python's own caches, package metadata and the files of the system and environment."""
    if path.startswith(_SKIP_PREFIXES) or (path.endswith(".pyc") and "__pycache__" in path):
        return False
    if os.path.realpath(path).startswith(_BUILDSYS_DIR):
        return False  # buildsys' own code, read for tracebacks (its model zoo is recorded as modules)
    if any(part.endswith((".dist-info", ".egg-info")) for part in Path(path).parts):
        return False  # package metadata (entry points, versions): the package's version covers it
    real = os.path.realpath(path)
    stdlib, site = _system_dirs()
    if real.startswith(stdlib + site + skip_dirs):
        return False  # the environment's own files: their packages' versions cover them
    return os.path.isfile(real)


# path -> digest of each model module when this process first recorded it: a long-lived process
# (a test session, a service calling the builder) must not build edited code from stale modules.
_SEEN_MODULES: dict[str, str] = {}


def forget_stale_modules() -> list[str]:
    """If any model module changed on disk since this process recorded it, drop every model module
    from ``sys.modules`` so that the next import runs the code on disk. Returns the stale names."""
    stale, model_modules = [], []
    for name, module in list(sys.modules.items()):
        dep = _module_dependency(name, module) if getattr(module, "__file__", None) else None
        if dep is None or dep.kind != "module":
            continue
        model_modules.append(name)
        seen = _SEEN_MODULES.get(dep.path)
        if seen is not None and seen != dep.digest:
            stale.append(name)
    if stale:
        for name in model_modules:
            sys.modules.pop(name, None)
        _SEEN_MODULES.clear()
        importlib.invalidate_caches()
    return stale


# source -> (module names, data file paths) recorded for it so far in this process: a module or
# file that an earlier build of the same source loaded is not loaded again, yet still belongs to it.
_BY_SOURCE: dict[str, tuple[set[str], set[str], set[str]]] = {}


def _referenced_modules(root_names: Iterable[str]) -> set[str]:
    """Model modules reachable from ``root_names`` through module globals (imported modules,
    and the modules of imported functions and classes), not descending into the toolchain."""
    import types

    found: set[str] = set()
    todo = [n for n in root_names if n in sys.modules]
    while todo and len(found) < 10000:
        name = todo.pop()
        if name in found:
            continue
        module = sys.modules.get(name)
        if module is None or _module_dependency(name, module) is None:
            continue
        found.add(name)
        for value in list(vars(module).values()):
            if isinstance(value, types.ModuleType):
                todo.append(value.__name__)
            elif isinstance(value, (type, types.FunctionType)):
                todo.append(getattr(value, "__module__", None) or "")
    return found


class Recorder:
    """Collects a model's dependencies; see ``recording``."""

    def __init__(self, source: str, skip_dirs: Iterable[str] = ()):
        self.source = source
        self.skip_dirs = tuple(os.path.realpath(d) + os.sep for d in skip_dirs)
        self.modules_before = set(sys.modules)

    def dependencies(self) -> list[Dependency]:
        """The modules loaded while recording, those an earlier build of the same source loaded,
        those its module refers to, and the data files it read."""
        _top_level_distributions_cached.cache_clear()  # packages installed or upgraded meanwhile,
        _editable.cache_clear()  # and the config's directory now on the path
        module_name = self.source.partition(":")[0]
        parents = [".".join(module_name.split(".")[: i + 1]) for i in range(module_name.count(".") + 1)]
        remembered_modules, remembered_files, remembered_imports = _BY_SOURCE.setdefault(
            self.source, (set(), set(), set()))
        with _OPENED.lock:
            opened = _OPENED.paths - _OPENED.written
            imports = set(_OPENED.imports)
        names = (set(sys.modules) - self.modules_before) | remembered_modules | _referenced_modules(parents)
        remembered_modules |= names
        remembered_files |= opened
        remembered_imports |= imports
        deps: dict[tuple, Dependency] = {}
        for name in sorted(names):
            module = sys.modules.get(name)
            dep = _module_dependency(name, module) if module is not None else None
            if dep is not None:
                deps[(dep.kind, dep.name)] = dep
                if dep.kind == "module":
                    _SEEN_MODULES.setdefault(dep.path, dep.digest)
        module_paths = {d.path for d in deps.values() if d.path}
        for path in sorted(remembered_files):
            if path in module_paths or not _is_data_file(path, self.skip_dirs):
                continue
            dep = _file_dependency("data", os.path.basename(path), path)
            if dep is not None:
                deps[("data", dep.path)] = dep
        for name in sorted(remembered_imports):  # optional imports of model code that found nothing
            top = name.partition(".")[0]
            if top not in sys.modules and name not in sys.modules:
                deps[("absent", top)] = Dependency("absent", top)
        return sorted(deps.values(), key=lambda d: (d.kind, d.name, d.path or ""))


@contextmanager
def recording(source: str, skip_dirs: Iterable[str] = ()) -> Iterator[Recorder]:
    """Record what the model named by ``source`` loads inside the block."""
    forget_stale_modules()
    if not _OPENED.installed:
        sys.addaudithook(_OPENED.hook)  # cannot be removed; inactive outside recordings
        _OPENED.installed = True
    with _OPENED.lock:
        _OPENED.paths, _OPENED.written, _OPENED.imports, _OPENED.first_stat = set(), set(), set(), {}
    _OPENED.active += 1
    try:
        yield Recorder(source, skip_dirs)
    finally:
        _OPENED.active -= 1


# ---------------------------------------------------------------- depfiles


def deps_dir(store_root: str | os.PathLike) -> Path:
    return Path(store_root) / "deps"


def depfile_path(store_root: str | os.PathLike, entry_key: str, config_dir: str) -> Path:
    """One depfile per entry and checkout: two checkouts sharing a store record their own files."""
    place = digest_bytes(os.path.abspath(config_dir or ".").encode()).partition(":")[2][:12]
    return deps_dir(store_root) / f"{entry_key}-{place}.json"


def write_depfile(store_root: str | os.PathLike, entry_key: str, deps: Iterable[Dependency],
                  config_dir: str = "") -> None:
    """The entry's depfile, atomically; the next plan reads it."""
    path = depfile_path(store_root, entry_key, config_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"deps_format": DEPS_FORMAT, "entry_key": entry_key, "config_dir": config_dir,
            "dependencies": [asdict(d) for d in deps]}
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True))  # a full disk leaves no half-written depfile


def read_depfile(store_root: str | os.PathLike, entry_key: str, config_dir: str = "") -> list[Dependency] | None:
    """The recorded dependencies, or None when there is no readable depfile."""
    try:
        data = json.loads(depfile_path(store_root, entry_key, config_dir).read_text())
        if data.get("deps_format") != DEPS_FORMAT or data.get("entry_key") != entry_key:
            return None
        return [Dependency(**d) for d in data["dependencies"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


@dataclass(frozen=True)
class SourcesCheck:
    digest: str | None  # None: a recorded file is gone, so no key can be computed
    changes: tuple[str, ...]  # what differs from the depfile, for the plan's reason
    deps: tuple[Dependency, ...]  # with fresh stat figures


def check_dependencies(deps: Iterable[Dependency], search_path: Iterable[str] = ()) -> SourcesCheck:
    """Re-check recorded dependencies, cheapest first: size and mtime, then content."""
    fresh, changes, missing = [], [], False
    for dep in deps:
        if dep.kind == "absent":
            found = find_module_file(dep.name, search_path)
            if found is not None:
                changes.append(f"module {dep.name} now exists ({found or 'a namespace package'}; an import of it "
                               "had failed)")
                fresh.append(Dependency("present", dep.name, digest=found))
            else:
                fresh.append(dep)
            continue
        if dep.kind == "package":
            version = _installed_version(dep.name, tuple(search_path))
            if version != dep.version:
                changes.append(f"package {dep.name} {dep.version} -> {version or 'not installed'}")
                if version is None:
                    missing = True
            fresh.append(Dependency("package", dep.name, version=version))
            continue
        try:
            st = os.stat(dep.path)
        except (OSError, TypeError):
            changes.append(f"{dep.name} removed ({dep.path})")
            missing = True
            continue
        if (st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (dep.size, dep.mtime_ns, dep.ctime_ns):
            fresh.append(dep)
            continue
        try:
            digest = digest_file(dep.path)
        except OSError:
            changes.append(f"{dep.name} unreadable ({dep.path})")
            missing = True
            continue
        if digest != dep.digest:
            changes.append(f"{dep.name} changed ({dep.path})")
        fresh.append(Dependency(dep.kind, dep.name, digest=digest, path=dep.path, size=st.st_size,
                                mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns))
    return SourcesCheck(None if missing else sources_digest(fresh), tuple(changes), tuple(fresh))


def _installed_version(name: str, search_path: tuple[str, ...]) -> str | None:
    for dist in metadata.distributions(name=name, path=[*search_path, *sys.path]):
        return dist.version
    return None


# ---------------------------------------------------------------- finding sources without importing them


def find_module_file(module_name: str, search_path: Iterable[str]) -> str | None:
    """The file (or package ``__init__``) of ``module_name``, found the way import would,
    without executing it (parents included). None when it cannot be found."""
    path: list[str] | None = [*search_path, *sys.path]
    spec = None
    parts = module_name.split(".")
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        if name in sys.modules and getattr(sys.modules[name], "__spec__", None) is not None:
            spec = sys.modules[name].__spec__
        else:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None and i == 0:  # editable installs answer through their own finders
                try:
                    spec = importlib.util.find_spec(name)
                except (ImportError, ValueError):
                    spec = None
        if spec is None:
            return None
        path = list(spec.submodule_search_locations or [])
    return spec.origin if spec is not None and spec.origin not in (None, "built-in", "frozen") else ""


def _defined_names(source_file: str) -> set[str] | None:
    """Top-level names a module defines, or None when they cannot be known statically."""
    try:
        tree = ast.parse(Path(source_file).read_bytes(), filename=source_file)
    except (OSError, SyntaxError, ValueError):
        return None
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add((alias.asname or alias.name).partition(".")[0])
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            return None  # conditional definitions: not worth guessing
    if "__getattr__" in names:
        return None
    return names


def check_source(source: str, search_path: Iterable[str], *, file: str | None, line: int | None,
                 field: str) -> None:
    """Refuse a ``source`` whose module cannot be found, or whose module visibly lacks the
    function, before any build starts (ConfigError with file, line and field)."""
    module_name, _, function = source.partition(":")
    top = module_name.partition(".")[0]
    if top in sys.stdlib_module_names:
        shadow = next((os.path.join(d, p) for d in search_path if d for p in (f"{top}.py", top)
                       if os.path.exists(os.path.join(d, p))), None)
        if shadow is not None:
            raise ConfigError(f"{shadow} has the name of the standard-library module {top!r}, which Python (or "
                              "torch) has imported before any model: the build would use that one", file=file,
                              line=line, field=field, hint=f"rename {os.path.basename(shadow)} and the source")
    found = find_module_file(module_name, search_path)
    if found is None:
        top = module_name.partition(".")[0]
        hint = f"put {top}.py (or the package {top}/) beside the config file, or install it"
        raise ConfigError(f"cannot find module {module_name!r} for source {source!r}", file=file, line=line,
                          field=field, hint=hint)
    if not found:
        return
    names = _defined_names(found)
    if names is not None and function not in names:
        raise ConfigError(f"module {module_name!r} ({found}) defines no {function!r}", file=file, line=line,
                          field=field, hint=did_you_mean(function, sorted(n for n in names if not n.startswith("_")))
                          or "source is module:function, the function returning a torch.nn.Module")


def predict_dependencies(source: str, search_path: Iterable[str]) -> list[Dependency]:
    """What a first build will most likely record, found without importing: the source module
    and its parent packages when they are model code (not the toolchain, not installed packages).
    Modules it imports and files it reads are only known once it has been built."""
    module_name = source.partition(":")[0]
    parts = module_name.split(".")
    stdlib, site = _system_dirs()
    deps = []
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        if parts[0] == "buildsys" and not name.startswith(MODEL_ZOO + "."):
            continue
        path = find_module_file(name, search_path)
        if not path:
            continue
        real = os.path.realpath(path)
        if real.startswith(stdlib + site):
            continue
        dep = _file_dependency("module", name, real)
        if dep is not None:
            deps.append(dep)
    return deps


def model_file_dependencies(path: str | os.PathLike) -> list[Dependency]:
    """A model file source (config/modelfiles.py) as the key sees it: the file and, for ONNX, the
    external-data files its weights are in, by content (streamed: files of hundreds of MB)."""
    from buildsys.config.modelfiles import file_kind, read_onnx_file
    from buildsys.errors import BuildError

    path = str(path)
    files = [path]
    if file_kind(path) == "onnx":
        try:
            files += read_onnx_file(path).external_data
        except ConfigError as exc:
            raise BuildError(exc.message, stage="model") from None
    deps = []
    for name in files:
        dep = _file_dependency("data", os.path.basename(name), name)
        if dep is None:
            raise BuildError(f"cannot read the model file {name}", stage="model")
        deps.append(dep)
    return deps


def describe_changes(changes: Iterable[str], limit: int = 3) -> str:
    changes = list(changes)
    text = ", ".join(changes[:limit])
    return text + (f" and {len(changes) - limit} more" if len(changes) > limit else "")
