"""builds.yaml -> validated, frozen ``BuildSpec`` list.

The matrix works the way CI matrices do: the axes under ``matrix`` expand as a
cartesian product, an axis that is not listed takes its value from
``defaults``, ``exclude`` removes every combination that matches all the
fields of an entry, and ``include`` adds whole entries (missing fields from
``defaults``). Per-model options (source, task, weights, kwargs, tolerance)
live under ``models``; the top-level ``verify`` says where parity runs for another
architecture (``config/verify.py``). See README.md for the reference.

Longer than 400 lines on purpose: this is the schema of builds.yaml, every field's parsing and
error text (file, line, field, hint) in one place, in the order the README documents them.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from buildsys.errors import ConfigError, did_you_mean
from buildsys.config.passes import validate_disabled_passes
from buildsys.config import modelfiles
from buildsys.config.signature import inputs_from_file, parse_batch, parse_inputs
from buildsys.format.signature import STATIC_1, Batch, Input, image_input
from buildsys.format.values import FrozenDict, freeze
from buildsys.config.targets import normalize_target
from buildsys.format.target import Target
from buildsys.config.verify import RPC_FIELDS, VERIFY_FIELDS, RpcRoute, rpc_from_config
from buildsys.config.yamlsource import LocatedDict, LocatedList, load_yaml

CONFIG_VERSION = 1
AXES = ("model", "input_size", "target", "opt_level", "disabled_passes", "tuning", "batch")
TASKS = ("classification", "detection")
TOP_LEVEL = ("version", "models", "defaults", "matrix", "verify")
MODEL_FIELDS = ("source", "task", "weights", "seed", "kwargs", "tolerance", "skip", "inputs")
MIN_SIZE, MAX_SIZE = 16, 4096
DEFAULT_TOLERANCE = 1e-4
BUILTIN_DEFAULTS = {"target": "llvm", "opt_level": 3, "disabled_passes": [], "tuning": "off", "batch": 1}
TUNING_FIELDS = ("trials", "per_task", "per_iter", "population", "genetic_iters", "seed")
MAX_WHOLE = 2**63 - 1  # seeds and counts reach torch and TVM as int64; larger ones overflow there
MAX_CONFIG_BYTES = 4 << 20  # a builds.yaml has a few KiB; /dev/zero has no end
MAX_ENTRIES = 10_000  # matrix entries before exclude; more is a typo (or hostile), and planning would crawl


@dataclass(frozen=True)
class WeightsSpec:
    """Where a model's weights come from: ``none`` (random, seeded), ``hub``, or ``file``."""

    source: str
    seed: int = 0
    name: str | None = None  # torchvision weights name for "hub", e.g. "DEFAULT"
    path: str | None = None  # absolute path for "file"

    def to_dict(self) -> dict:
        # The file path is left out on purpose: the key uses the file's digest,
        # so moving a weights file does not trigger a rebuild.
        return {"source": self.source, "seed": self.seed, "name": self.name}


@dataclass(frozen=True)
class TuningSettings:
    """MetaSchedule tuning for one entry. ``trials`` is the model's budget; 0 applies the
    records already in the target's tuning database and never tunes."""

    trials: int
    per_task: int | None = None  # cap per task; default none: MetaSchedule's gradient scheduler spreads the budget
    per_iter: int = 8  # candidates per task per search round: records are saved as each round ends
    population: int = 128  # evolutionary search (the shipped 512 costs 30-45 s per task first)
    genetic_iters: int = 2
    seed: int = 0

    @property
    def cap(self) -> int:
        """Most trials for one task."""
        return self.per_task if self.per_task is not None else self.trials

    def to_dict(self) -> dict:
        return {"trials": self.trials, "per_task": self.per_task, "per_iter": self.per_iter,
                "population": self.population, "genetic_iters": self.genetic_iters, "seed": self.seed}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # "module:function" returning a torch.nn.Module, or a model file (config/modelfiles.py)
    task: str
    weights: WeightsSpec
    kwargs: FrozenDict = field(default_factory=FrozenDict)  # frozen: hashable, and no builder changes it
    tolerance: float = DEFAULT_TOLERANCE
    skip: str | None = None
    inputs: tuple[Input, ...] | None = None  # declared inputs (buildsys/format/signature.py); None: one image
    # Where the model was declared: its sources resolve beside the config file first, and
    # errors about them name this place. Neither is part of the key (a moved checkout keeps its keys).
    config_dir: str = field(default="", compare=False)
    source_origin: str = field(default="", compare=False)  # "builds.yaml:7"
    # The batch size a model file fixes (its inputs' first dimension is a number), checked against
    # the entry's batch; None when the file leaves it symbolic, and for Python sources.
    file_batch: int | None = field(default=None, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "kwargs", freeze(dict(self.kwargs)))

    @property
    def file_kind(self) -> str | None:
        """"onnx" or "pt2" when ``source`` names a model file, None for ``module:function``."""
        return modelfiles.file_kind(self.source)

    @property
    def file_path(self) -> Path | None:
        """A model file's absolute path (``source`` is relative to the config's folder)."""
        return modelfiles.resolve_model_file(self.source, self.config_dir) if self.file_kind else None

    def to_dict(self) -> dict:
        model = {"name": self.name, "source": self.source, "task": self.task,
                 "weights": self.weights.to_dict(), "kwargs": self.kwargs}
        if self.inputs is not None:  # absent for image models, so their keys stay what they were
            model["inputs"] = [i.to_dict() for i in self.inputs]
        return model


@dataclass(frozen=True)
class BuildSpec:
    """One matrix entry, frozen. Only ``load_specs`` makes these."""

    model: ModelSpec
    input_size: tuple[int, int] | None  # None when the model declares its inputs
    target: Target  # normalized (config/targets.py)
    opt_level: int
    disabled_passes: tuple[str, ...] = ()
    tuning: TuningSettings | None = None  # None when off
    batch: Batch = STATIC_1
    origin: str = field(default="", compare=False)  # "builds.yaml:12", for messages
    # Where parity runs for another architecture (builds.yaml's verify.rpc; config/verify.py): not
    # the artifact's business, so neither compared nor in to_dict, hence not in the key.
    rpc: RpcRoute | None = field(default=None, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "target", Target(self.target))

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The image input at batch 1 (image models only)."""
        return (1, 3, *self.input_size)

    @property
    def inputs(self) -> tuple[Input, ...]:
        """The signature: the declared inputs, or the one image ``input_size`` stands for."""
        return self.model.inputs if self.model.inputs is not None else (image_input(self.input_size),)

    @property
    def size_label(self) -> str:
        if self.input_size is not None:
            return f"{self.input_size[0]}x{self.input_size[1]}"
        shapes = dict.fromkeys("x".join(str(d) for d in i.shape[1:]) for i in self.inputs)
        text = ",".join(shapes)
        return text if len(text) <= 20 else text[:19] + "+"  # the registry's column holds 20 characters

    @property
    def target_label(self) -> str:
        return self.target.cli()

    def describe(self) -> str:
        passes = f" -{','.join(self.disabled_passes)}" if self.disabled_passes else ""
        tuning = self.tuning
        tuned = "" if tuning is None else f" tuned:{tuning.trials}"
        batch = "" if self.batch == STATIC_1 else f" batch:{self.batch.label}"
        return (f"{self.model.name} {self.size_label}{batch} [{self.target_label}] O{self.opt_level}{passes}"
                f"{tuned}")

    def to_dict(self) -> dict:
        """Everything about the entry that shapes the output (the key's ``spec`` field)."""
        spec = {"model": self.model.to_dict(), "target": self.target, "opt_level": self.opt_level,
                "disabled_passes": list(self.disabled_passes)}
        if self.input_size is not None:  # the image at batch 1; declared inputs are in model.inputs
            spec["input_shape"] = list(self.input_shape)
        if self.tuning is not None:  # absent when off, so untuned keys stay what they were
            spec["tuning"] = self.tuning.to_dict()
        if self.batch != STATIC_1:  # likewise: batch-1 keys are unchanged
            spec["batch"] = self.batch.to_dict()
        return spec


def spec_from_dict(data: dict, tolerance: float = DEFAULT_TOLERANCE, config_dir: str = "") -> BuildSpec:
    """A BuildSpec back from ``BuildSpec.to_dict`` (as the registry keeps it). A weights file
    comes back without its path (the key keeps its digest, not where it was); the model's
    sources resolve beside ``config_dir`` (the folder of the builds.yaml in use)."""
    model = data["model"]
    weights = WeightsSpec(**model["weights"])
    tuning = data.get("tuning")
    inputs = model.get("inputs")
    return BuildSpec(model=ModelSpec(name=model["name"], source=model["source"], task=model["task"], weights=weights,
                                     kwargs=model["kwargs"],
                                     tolerance=tolerance, config_dir=config_dir,
                                     inputs=None if inputs is None else tuple(Input.from_dict(i) for i in inputs)),
                     input_size=tuple(data["input_shape"][2:]) if "input_shape" in data else None,
                     batch=Batch.from_dict(data.get("batch")),
                     target=data["target"],
                     opt_level=data["opt_level"], disabled_passes=tuple(data["disabled_passes"]),
                     tuning=None if tuning is None else TuningSettings(**tuning))


def spec_from_manifest(manifest: Mapping[str, Any], spec: Mapping[str, Any] | None = None,
                       config_dir: str = "") -> BuildSpec:
    """The spec an artifact was built from, read back from its manifest: the key's ``spec`` (or
    ``spec``, the registry row's copy of it) with the parity tolerance the artifact was accepted
    with, which the key leaves out (``manifest.parity.tolerance``; the default when it is absent
    or no positive finite number)."""
    parity = manifest.get("parity")
    tolerance = parity.get("tolerance") if isinstance(parity, Mapping) else None
    usable = (isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool)
              and math.isfinite(tolerance) and tolerance > 0)
    return spec_from_dict(manifest["spec"] if spec is None else spec, config_dir=config_dir,
                          **({"tolerance": float(tolerance)} if usable else {}))


# ---------------------------------------------------------------- parsing


class _Reader:
    """Validation helpers that know the file name, for messages."""

    def __init__(self, filename: str):
        self.filename = filename

    def error(self, message: str, line: int | None, field: str, hint: str | None = None) -> ConfigError:
        # messages quote the offending value, which may be a 100000-value list: keep them to a screen
        return ConfigError(_clip(message), file=self.filename, line=line, field=_clip(field),
                           hint=_clip(hint) if hint else hint)

    def mapping(self, value: Any, line: int | None, field: str) -> LocatedDict:
        if not isinstance(value, dict):
            raise self.error(f"expected a mapping, got {_type_name(value)}", line, field)
        return value

    def sequence(self, value: Any, line: int | None, field: str) -> LocatedList:
        if not isinstance(value, list):
            raise self.error(f"expected a list, got {_type_name(value)}", line, field,
                             hint=f"write {field}: [{value!r}]" if value is not None else None)
        return value

    def check_keys(self, mapping: LocatedDict, allowed: Iterable[str], field: str) -> None:
        allowed = tuple(allowed)
        for key in mapping:
            if key not in allowed:
                where = f"{field}.{key}" if field else str(key)
                raise self.error(f"unknown field {key!r}", mapping.line_of(key), where,
                                 hint=did_you_mean(str(key), allowed) or f"allowed: {', '.join(allowed)}")


def _clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _type_name(value: Any) -> str:
    for kind, name in ((bool, "true/false"), (dict, "a mapping"), (list, "a list"), (str, "a string"),
                       ((int, float), "a number"), (type(None), "nothing")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def _parse_size(value: Any, reader: _Reader, line: int | None, where: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise reader.error(f"an input size is a number, \"HxW\" or [H, W], got {value!r}", line, where)
    if isinstance(value, int):
        dims = (value, value)
    elif isinstance(value, str) and _SIZE_RE.match(value):
        match = _SIZE_RE.match(value)
        if max(len(match.group(1)), len(match.group(2))) > 9:  # int() refuses more than 4300 digits
            raise reader.error(f"input size {_clip(value, 40)!r} is out of range; each side must be "
                               f"{MIN_SIZE}..{MAX_SIZE} pixels", line, where)
        dims = (int(match.group(1)), int(match.group(2)))
    elif isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                             for v in value):
        dims = (value[0], value[1])
    else:
        raise reader.error(f"an input size is a number, \"HxW\" or [H, W], got {value!r}", line, where)
    for dim in dims:
        if not MIN_SIZE <= dim <= MAX_SIZE:
            raise reader.error(f"input size {dims[0]}x{dims[1]} is out of range; each side must be "
                               f"{MIN_SIZE}..{MAX_SIZE} pixels", line, where)
    return dims


def _parse_opt_level(value: Any, reader: _Reader, line: int | None, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 4:
        raise reader.error(f"opt_level must be a whole number 0..4, got {value!r}", line, where)
    return value


def _parse_model(name: str, raw: Any, reader: _Reader, line: int, base_dir: Path) -> ModelSpec:
    where = f"models.{name}"
    raw = reader.mapping(raw, line, where)
    reader.check_keys(raw, MODEL_FIELDS, where)
    source = raw.get("source")
    kind = modelfiles.file_kind(source) if isinstance(source, str) else None
    if kind is None and (not isinstance(source, str) or ":" not in source or source.startswith(":")
                         or source.endswith(":")):
        raise reader.error(f"source must be \"module:function\" or a model file (.onnx, .pt2), got {source!r}",
                           raw.line_of("source"), f"{where}.source",
                           hint="e.g. torchvision.models:resnet18, mypkg.models:build or models/encoder.onnx")
    task = raw.get("task", "classification")
    if task not in TASKS:
        raise reader.error(f"unknown task {task!r}", raw.line_of("task"), f"{where}.task",
                           hint=did_you_mean(str(task), TASKS) or f"one of: {', '.join(TASKS)}")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_WHOLE:
        raise reader.error(f"seed must be a whole number >= 0 (at most 2**63-1), got {seed!r}", raw.line_of("seed"),
                           f"{where}.seed")
    weights = _parse_weights(raw.get("weights", "none"), seed, reader, raw.line_of("weights"), f"{where}.weights",
                             base_dir)
    kwargs = raw.get("kwargs", {})
    kwargs = reader.mapping(kwargs if kwargs is not None else {}, raw.line_of("kwargs"), f"{where}.kwargs")
    if any(not isinstance(k, str) for k in kwargs):
        raise reader.error("kwargs keys must be strings", raw.line_of("kwargs"), f"{where}.kwargs")
    tolerance = raw.get("tolerance", DEFAULT_TOLERANCE)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
        raise reader.error(f"tolerance is the largest accepted relative error, a number in (0, 1), got "
                           f"{tolerance!r}", raw.line_of("tolerance"), f"{where}.tolerance")
    skip = raw.get("skip")
    if skip is not None and (not isinstance(skip, str) or not skip.strip()):
        raise reader.error("skip takes the reason as text", raw.line_of("skip"), f"{where}.skip")
    inputs, file_batch = None, None
    if "inputs" in raw and task == "detection":
        raise reader.error("a detector takes one image (input_size); it cannot declare inputs",
                           raw.line_of("inputs"), f"{where}.inputs")
    if kind is not None:
        inputs, file_batch = _model_file_inputs(source, kind, raw, reader, line, where, base_dir, weights, task)
    elif "inputs" in raw:
        inputs = parse_inputs(raw["inputs"], reader, raw.line_of("inputs"), f"{where}.inputs")
    return ModelSpec(name=name, source=source, task=task, weights=weights, inputs=inputs,
                     kwargs=_plain_at(kwargs, reader, raw.line_of("kwargs"), f"{where}.kwargs"),
                     tolerance=float(tolerance), skip=skip, config_dir=str(base_dir),
                     source_origin=f"{reader.filename}:{raw.line_of('source') or line}", file_batch=file_batch)


def _model_file_inputs(source: str, kind: str, raw: LocatedDict, reader: _Reader, line: int, where: str,
                       base_dir: Path, weights: WeightsSpec, task: str) -> tuple[tuple[Input, ...] | None, int | None]:
    """A model file's checks, and its signature: an ONNX file's inputs completed by ``inputs:``;
    a .pt2 program's declared (``inputs:``, or the image ``input_size`` stands for)."""
    at = raw.line_of("source") or line
    for name, present in (("weights", weights.source != "none"), ("kwargs", bool(raw.get("kwargs"))),
                          ("seed", "seed" in raw)):
        if present:
            raise reader.error(f"{name} does not apply to a model file: {source} holds its weights",
                               raw.line_of(name), f"{where}.{name}", hint=f"remove {name}")
    if task == "detection":
        raise reader.error("a detector is built from its Python source (the ONNX route wraps its outputs); "
                           "a model file builds as a classifier-like model", raw.line_of("task"), f"{where}.task")
    try:
        path = modelfiles.resolve_model_file(source, base_dir)
    except modelfiles.ModelFileError as exc:
        raise reader.error(exc.message, at, f"{where}.source") from None
    options = {"file": reader.filename, "line": at, "field_name": f"{where}.source"}
    if kind == "pt2":
        modelfiles.check_pt2_file(path, **options)
        declared = raw.get("inputs")
        return (None if declared is None else
                parse_inputs(declared, reader, raw.line_of("inputs"), f"{where}.inputs")), None
    info = modelfiles.read_onnx_file(path, **options)
    return inputs_from_file(info.inputs, raw.get("inputs"), reader, raw.line_of("inputs") or at, f"{where}.inputs",
                            source)


def _parse_weights(raw: Any, seed: int, reader: _Reader, line: int, where: str, base_dir: Path) -> WeightsSpec:
    if raw is None or (isinstance(raw, str) and raw.lower() == "none"):
        return WeightsSpec(source="none", seed=seed)
    if not isinstance(raw, str) or not raw.strip():
        raise reader.error(f"weights is none, DEFAULT (a torchvision weights name) or a file path, got {raw!r}",
                           line, where)
    if raw.isidentifier() and raw.upper() == raw:
        # DEFAULT, IMAGENET1K_V1, COCO_V1 ...: torchvision weights looked up in the torch hub cache.
        return WeightsSpec(source="hub", seed=seed, name=raw)
    try:
        path = (base_dir / os.path.expanduser(raw)).resolve()
        is_file = path.is_file()
    except (ValueError, OSError) as exc:  # NUL bytes, names too long ...
        raise reader.error(f"weights is not a usable file path: {exc}", line, where) from None
    if not is_file:
        raise reader.error(f"weights file {str(path)!r} does not exist", line, where,
                           hint="give a path relative to builds.yaml, or `none` for seeded random weights")
    if not os.access(path, os.R_OK):
        raise reader.error(f"weights file {str(path)!r} is not readable", line, where)
    return WeightsSpec(source="file", seed=seed, path=str(path))


def _parse_tuning(value: Any, reader: _Reader, line: int | None, where: str) -> TuningSettings | None:
    """off | a trial budget | {trials, per_task, per_iter, population, genetic_iters, seed}."""
    if value is None or value is False or (isinstance(value, str) and value.lower() == "off"):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"trials": value}
    if not isinstance(value, dict):
        raise reader.error(f"tuning is off, a trial budget, or a mapping with trials, got {value!r}", line, where,
                           hint="e.g. tuning: 320, or tuning: {trials: 320, per_task: 16}")
    reader.check_keys(value, TUNING_FIELDS, where)
    if "trials" not in value:
        raise reader.error("tuning needs trials (0 applies existing records without tuning)", line, where)
    settings = {}
    for name in TUNING_FIELDS:
        if name not in value:
            continue
        number = value[name]
        low = 0 if name in ("trials", "seed") else 1
        if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= MAX_WHOLE:
            raise reader.error(f"tuning {name} must be a whole number >= {low} (at most 2**63-1), got {number!r}",
                               value.line_of(name) if hasattr(value, "line_of") else line, f"{where}.{name}")
        settings[name] = number
    return TuningSettings(**settings)


def _plain_at(value: Any, reader: "_Reader", line: int | None, where: str) -> Any:
    """``_plain`` with the file, line and field in its error."""
    try:
        return _plain(value)
    except ConfigError as exc:
        raise reader.error(exc.message, line, where, hint=exc.hint) from None


def _plain(value: Any) -> Any:
    """Located containers -> plain JSON-able values (rejects what JSON cannot hold)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{value!r} cannot be used here: the build key is JSON, which has no NaN or infinity",
                          hint="write a finite number")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ConfigError(f"value {value!r} of type {type(value).__name__} cannot be used here")


_INT_TARGET_OPTIONS = ("num-cores", "opt-level")
_TEXT_TARGET_FIELDS = ("kind", "mcpu", "mtriple", "mabi")


def _check_target_types(target: Any, reader: _Reader, line: int | None, where: str) -> None:
    """Value types of a target mapping, before normalize_target turns them into TVM's (which would
    iterate an int mattr, or truncate num-cores: 2.7 and read num-cores: true as 1)."""
    if not isinstance(target, dict):
        return  # a string is parsed by normalize_target; anything else it refuses
    for name, value in target.items():  # unknown names are left to normalize_target ("did you mean")
        if name in _TEXT_TARGET_FIELDS:
            if not isinstance(value, str):
                raise reader.error(f"target {name} must be text, got {value!r}", line, where,
                                   hint="e.g. {kind: llvm, mcpu: znver3}")
        elif name in _INT_TARGET_OPTIONS:
            whole = isinstance(value, int) and not isinstance(value, bool)
            if not whole and not (isinstance(value, str) and value.strip().isdigit()):
                raise reader.error(f"target option {name!r} needs a whole number, got {value!r}", line, where,
                                   hint=f"e.g. {name}: 4")
        elif name == "mattr" and not isinstance(value, str) and not (
                isinstance(value, list) and all(isinstance(a, str) for a in value)):
            raise reader.error(f"target option 'mattr' is text or a list of texts, got {value!r}", line, where,
                               hint='e.g. mattr: "+avx2,+fma" or mattr: [+avx2, +fma]')


class _AxisValues:
    """Parses and normalizes axis values, caching the costly ones (targets, passes)."""

    def __init__(self, reader: _Reader, models: Mapping[str, ModelSpec]):
        self.reader, self.models = reader, models
        self._targets: dict[str, Target] = {}
        self._passes: dict[str, tuple] = {}

    def parse(self, axis: str, value: Any, line: int | None, where: str) -> Any:
        reader = self.reader
        if axis == "model":
            if not isinstance(value, str) or value not in self.models:
                raise reader.error(f"unknown model {value!r}", line, where,
                                   hint=did_you_mean(str(value), self.models)
                                   or f"define it under models: ({', '.join(self.models) or 'none defined'})")
            return value
        if axis == "input_size":
            return _parse_size(_plain_at(value, reader, line, where), reader, line, where)
        if axis == "opt_level":
            return _parse_opt_level(value, reader, line, where)
        if axis == "tuning":
            return _parse_tuning(value, reader, line, where)
        if axis == "batch":
            return parse_batch(value, reader, line, where)
        if axis == "target":
            plain = _plain_at(value, reader, line, where)
            _check_target_types(plain, reader, line, where)
            cache_key = json.dumps(plain, sort_keys=True)
            if cache_key not in self._targets:
                try:
                    normalized = normalize_target(plain, where)
                except ConfigError as exc:
                    raise reader.error(exc.message, line, where, hint=exc.hint) from None
                self._targets[cache_key] = normalized
            return self._targets[cache_key]
        if axis == "disabled_passes":
            if isinstance(value, str):
                value = [value]
            names = _plain_at(reader.sequence(value, line, where), reader, line, where)
            cache_key = json.dumps(names, sort_keys=True)
            if cache_key not in self._passes:
                try:
                    self._passes[cache_key] = validate_disabled_passes(names, where)
                except ConfigError as exc:
                    raise reader.error(exc.message, line, where, hint=exc.hint) from None
            return self._passes[cache_key]
        raise AssertionError(axis)


def _parse_verify(doc: LocatedDict, reader: _Reader) -> RpcRoute | None:
    """The top-level ``verify`` mapping: ``rpc: {tracker, key, timeout}`` (config/verify.py)."""
    if doc.get("verify") is None:
        return None
    raw = reader.mapping(doc["verify"], doc.line_of("verify"), "verify")
    reader.check_keys(raw, VERIFY_FIELDS, "verify")
    if raw.get("rpc") is None:
        return None
    rpc = reader.mapping(raw["rpc"], raw.line_of("rpc"), "verify.rpc")
    reader.check_keys(rpc, RPC_FIELDS, "verify.rpc")
    try:
        return rpc_from_config(_plain_at(rpc, reader, raw.line_of("rpc"), "verify.rpc"),
                               origin=f"{reader.filename}:{raw.line_of('rpc')} (verify.rpc)")
    except ConfigError as exc:
        raise reader.error(exc.message, rpc.line_of(exc.field.rsplit(".", 1)[-1]), exc.field, hint=exc.hint) from None


def _entry_spec(entry: dict, model: ModelSpec, reader: _Reader, line: int | None, origin: str,
                rpc: RpcRoute | None = None) -> BuildSpec:
    """One expanded entry -> BuildSpec, with the checks that need the model and the entry together."""
    size, batch = entry["input_size"], entry["batch"]
    lines, where = entry.get("_lines", {}), entry.get("_where", "matrix")
    if model.inputs is not None and size is not None:
        raise reader.error(f"model {model.name!r} declares its inputs (models.{model.name}.inputs); input_size "
                           f"{size[0]}x{size[1]} does not apply to it", lines.get("input_size", line), f"{where}.input_size",
                           hint=f"build {model.name} from an include entry without input_size, or exclude it")
    if model.inputs is None and size is None:
        raise reader.error("the matrix lists axes but no value for input_size", line, "matrix",
                           hint="add matrix.input_size or defaults.input_size")
    if model.file_batch is not None and batch != Batch.static(model.file_batch):
        raise reader.error(f"model {model.name!r}: {model.source} fixes the batch at {model.file_batch} (its inputs' "
                           f"first dimension), not batch {batch.label}", lines.get("batch", line), f"{where}.batch",
                           hint=f"build it with batch: {model.file_batch}, or export the file with a dynamic batch axis")
    if model.task == "detection" and batch != STATIC_1:
        raise reader.error(f"model {model.name!r} is a detector: its ONNX route takes a list of one image, so "
                           f"it builds with batch 1 only, not batch {batch.label}", lines.get("batch", line), f"{where}.batch",
                           hint=f"exclude {{model: {model.name}, batch: ...}}, or batch detections in the "
                                "deployment by running the artifact per image")
    return BuildSpec(model=model, input_size=size, target=entry["target"], opt_level=entry["opt_level"],
                     disabled_passes=entry["disabled_passes"], tuning=entry["tuning"], batch=batch,
                     origin=origin, rpc=rpc)


def load_specs(path: str | os.PathLike) -> list[BuildSpec]:
    """Read and expand a builds.yaml. Every problem is a ConfigError naming file and line."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            _check_regular(handle.fileno(), path)
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(path), hint="run from the project root or pass --config") from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"byte {data[exc.start]:#04x} is not UTF-8", file=str(path),
                          line=data.count(b"\n", 0, exc.start) + 1, hint="save the file as UTF-8") from None
    return parse_specs(text, filename=str(path), base_dir=path.resolve().parent)


def _check_regular(fd: int, path: Path) -> None:
    """A FIFO would block the read, a device (/dev/zero) never end it."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ConfigError(f"cannot read: {kind}", file=str(path), hint="pass the path of a builds.yaml file")
    if info.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"cannot read: {info.st_size} bytes; a builds.yaml is at most {MAX_CONFIG_BYTES}",
                          file=str(path))


def parse_specs(text: str, filename: str = "builds.yaml", base_dir: Path | None = None) -> list[BuildSpec]:
    reader = _Reader(filename)
    base_dir = base_dir or Path.cwd()
    doc = load_yaml(text, filename)
    if doc is None:
        raise reader.error("the file is empty", None, "", hint="see README.md for a builds.yaml example")
    doc = reader.mapping(doc, 1, "(top level)")
    reader.check_keys(doc, TOP_LEVEL, "")
    version = doc.get("version", CONFIG_VERSION)
    if type(version) is not int or version != CONFIG_VERSION:  # true == 1 and 1.0 == 1 in Python
        raise reader.error(f"unsupported version {version!r}; this buildsys reads version {CONFIG_VERSION}",
                           doc.line_of("version"), "version")

    raw_models = reader.mapping(doc.get("models", LocatedDict()), doc.line_of("models"), "models")
    models = {}
    for name, raw in raw_models.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise reader.error(f"model names use letters, digits, '_', '-', '.': {name!r}",
                               raw_models.line_of(name), "models")
        models[name] = _parse_model(name, raw, reader, raw_models.line_of(name), base_dir)
    rpc = _parse_verify(doc, reader)

    values = _AxisValues(reader, models)
    defaults_raw = reader.mapping(doc.get("defaults", LocatedDict()), doc.line_of("defaults"), "defaults")
    reader.check_keys(defaults_raw, AXES, "defaults")
    defaults: dict[str, tuple[Any, int | None]] = {
        axis: (defaults_raw[axis], defaults_raw.line_of(axis)) if axis in defaults_raw
        else (BUILTIN_DEFAULTS[axis], None)
        for axis in AXES if axis in defaults_raw or axis in BUILTIN_DEFAULTS}

    matrix = reader.mapping(doc.get("matrix"), doc.line_of("matrix"), "matrix")
    matrix_line = doc.line_of("matrix")
    reader.check_keys(matrix, AXES + ("include", "exclude"), "matrix")

    # Cartesian product of the listed axes; unlisted axes come from defaults.
    axis_choices: list[list[tuple[Any, int | None]]] = []
    for axis in AXES:
        if axis in matrix:
            items = reader.sequence(matrix[axis], matrix.line_of(axis), f"matrix.{axis}")
            if not items:
                raise reader.error("an axis needs at least one value", matrix.line_of(axis), f"matrix.{axis}")
            axis_choices.append([(values.parse(axis, v, items.line_of(i), f"matrix.{axis}[{i}]"), items.line_of(i))
                                 for i, v in enumerate(items)])
        elif axis in defaults:
            raw, line = defaults[axis]
            axis_choices.append([(values.parse(axis, raw, line, f"defaults.{axis}"), line)])
        elif axis == "input_size" and "model" in matrix:
            axis_choices.append([(None, None)])  # models that declare inputs need none; _entry_spec checks
        else:
            axis_choices.append([])  # model / input_size with no default: product only if listed

    entries: list[tuple[dict, int | None]] = []
    if all(axis_choices):
        count = 1
        for choices in axis_choices:
            count *= len(choices)
        if count > MAX_ENTRIES:
            raise reader.error(f"the matrix expands to {count} entries before exclude; the most is {MAX_ENTRIES}",
                               matrix_line, "matrix", hint="split it into several files, or list fewer values "
                                                           "and add the odd ones with include")
        for combo in itertools.product(*axis_choices):
            entry = {axis: v for axis, (v, _) in zip(AXES, combo)}
            entry["_lines"] = {axis: line for axis, (_, line) in zip(AXES, combo) if line is not None}
            if "input_size" not in matrix and models[entry["model"]].inputs is not None:
                entry["input_size"] = None  # a default size does not apply to declared inputs
            entries.append((entry, matrix_line))
    elif "model" in matrix or "input_size" in matrix:
        missing = [a for a, c in zip(AXES, axis_choices) if not c]
        raise reader.error(f"the matrix lists axes but no value for {', '.join(missing)}", matrix_line, "matrix",
                           hint=f"add matrix.{missing[0]} or defaults.{missing[0]}")

    # Rules grouped by the axes they name: one set lookup per group and entry, not one test per rule
    # and entry (thousands of rules times thousands of entries would crawl).
    excluded: dict[tuple[str, ...], set[tuple]] = {}
    for i, rule in enumerate(reader.sequence(matrix.get("exclude", []), matrix.line_of("exclude"),
                                             "matrix.exclude")):
        where = f"matrix.exclude[{i}]"
        rule = reader.mapping(rule, matrix["exclude"].line_of(i), where)
        reader.check_keys(rule, AXES, where)
        axes = tuple(sorted(rule))
        excluded.setdefault(axes, set()).add(
            tuple(values.parse(axis, rule[axis], rule.line_of(axis), f"{where}.{axis}") for axis in axes))
    entries = [(e, line) for e, line in entries
               if not any(tuple(e[a] for a in axes) in rows for axes, rows in excluded.items())]

    for i, extra in enumerate(reader.sequence(matrix.get("include", []), matrix.line_of("include"),
                                              "matrix.include")):
        where = f"matrix.include[{i}]"
        extra = reader.mapping(extra, matrix["include"].line_of(i), where)
        reader.check_keys(extra, AXES, where)
        entry = {}
        for axis in AXES:
            if axis in extra:
                entry[axis] = values.parse(axis, extra[axis], extra.line_of(axis), f"{where}.{axis}")
            elif axis == "input_size" and models[entry["model"]].inputs is not None:
                entry[axis] = None  # declared inputs: no image size
            elif axis in defaults:
                raw, line = defaults[axis]
                entry[axis] = values.parse(axis, raw, line, f"defaults.{axis}")
            else:
                raise reader.error(f"an include entry needs {axis!r} (no default for it)", extra.line, where)
        entry["_lines"] = {axis: extra.line_of(axis) for axis in extra}
        entry["_where"] = where
        entries.append((entry, extra.line))

    specs: list[BuildSpec] = []
    seen: set[BuildSpec] = set()
    for entry, line in entries:
        spec = _entry_spec(entry, models[entry["model"]], reader, line, f"{filename}:{line}", rpc)
        if spec not in seen:
            seen.add(spec)
            specs.append(spec)
    if not specs:
        raise reader.error("the matrix expands to no entries", matrix_line, "matrix",
                           hint="list at least one model and input_size, or check that exclude does not remove all")
    return specs
