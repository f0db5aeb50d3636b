"""YAML loading that remembers where each value came from, and refuses hostile YAML.

PyYAML's safe loader forgets line numbers and silently keeps the last of two
duplicate keys; error messages need the first and users need the second to be
an error. Mappings load as ``LocatedDict`` and sequences as ``LocatedList``,
plain containers that also carry the 1-based line of each entry.

A builds.yaml is data, so only plain scalars (text, numbers, true/false,
null), mappings and lists are accepted. Three things a safe loader still lets
through are refused here, each with its line:

- aliases that expand beyond ``MAX_VALUES`` values ("billion laughs": PyYAML
  shares the aliased node, but everything downstream walks the expanded tree),
  and aliases that refer to a node containing them;
- nesting deeper than ``MAX_DEPTH`` (PyYAML's composer recurses once per
  level and would die with a RecursionError);
- tags other than the plain ones (``!!binary``, ``!!set``, ``!!python/...``,
  and timestamps, which YAML reads from an unquoted ``2024-01-01``).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from buildsys.errors import ConfigError

MAX_DEPTH = 100  # a builds.yaml needs about 6 levels
MAX_VALUES = 100_000  # scalars, lists and mappings after aliases are expanded; a real file has hundreds
MAX_NUMBER_CHARS = 100  # int() is quadratic in the digits, and Python refuses > 4300 of them anyway

_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = {_TAG + name for name in ("null", "bool", "int", "float", "str", "seq", "map")}
_TAG_NAMES = {_TAG + "timestamp": "a date or time", _TAG + "binary": "binary data (!!binary)",
              _TAG + "set": "a set (!!set)", _TAG + "omap": "an ordered map (!!omap)",
              _TAG + "pairs": "a list of pairs (!!pairs)"}


class LocatedDict(dict):
    line: int = 0
    key_lines: dict

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class LocatedList(list):
    line: int = 0
    item_lines: list

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line


class _Loader(yaml.SafeLoader):
    filename = "<string>"

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._values = 0  # values composed so far, an alias counting as everything it expands to
        self._sizes: dict[int, int] = {}  # id(node) -> its expanded size, known once it is complete
        self._path: list = []  # where construction is, for messages: ["matrix", "target", 0]

    def _error(self, message: str, mark, hint: str | None = None, field: str | None = None) -> ConfigError:
        return ConfigError(_clip(message), file=self.filename, line=mark.line + 1 if mark else None,
                           field=_clip(field) if field else None, hint=hint)

    # ------------------------------------------------------------ composing (text -> node graph)

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None:  # an undefined alias is PyYAML's error, with its line
                size = self._sizes.get(id(node))
                if size is None:
                    raise self._error(f"alias *{event.anchor} refers to a value that contains it",
                                      event.start_mark, hint="a builds.yaml cannot be recursive; "
                                      "write the value out")
                self._count(size, event.start_mark, f"alias *{event.anchor} (it stands for {size} values)")
            return super().compose_node(parent, index)
        event = self.peek_event()
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise self._error(f"values are nested more than {MAX_DEPTH} levels deep", event.start_mark,
                                  hint="a builds.yaml needs a handful of levels; check the brackets")
            self._count(1, event.start_mark, "this value")
            before = self._values
            node = super().compose_node(parent, index)
            self._sizes[id(node)] = self._values - before + 1
            return node
        finally:
            self._depth -= 1

    def _count(self, size: int, mark, what: str) -> None:
        self._values += size
        if self._values > MAX_VALUES:
            raise self._error(f"the file expands to more than {MAX_VALUES} values at {what}", mark,
                              hint="aliases (*name) that repeat large anchored values multiply; "
                                   "write the values out or use fewer aliases")

    # ------------------------------------------------------------ constructing (node graph -> values)

    def construct_object(self, node, deep=False):
        # one place that turns what constructors raise on odd scalars (!!int "x", !!bool "maybe")
        # into a ConfigError naming the line and field
        try:
            return super().construct_object(node, deep=deep)
        except ConfigError:
            raise
        except yaml.constructor.ConstructorError as exc:  # !!str [1], !!int {a: 1} ...
            raise self._error(f"invalid YAML: {exc.problem}", exc.problem_mark, field=self.field()) from None
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            raise self._error(f"cannot read this {_describe_tag(node.tag)} value: {exc}", node.start_mark,
                              field=self.field()) from None

    def field(self) -> str | None:
        text = ""
        for part in self._path:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
        return text or None

    def _descend(self, part, node, deep=True):
        self._path.append(part)
        try:
            return self.construct_object(node, deep=deep)
        finally:
            self._path.pop()


def _clip(text: str, limit: int = 400) -> str:  # a message quotes the value, which may be a megabyte
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _describe_tag(tag: str) -> str:
    return tag[len(_TAG):] if tag.startswith(_TAG) else tag


def _construct_mapping(loader: _Loader, node) -> LocatedDict:
    if not isinstance(node, MappingNode):
        raise loader._error("!!map is written on a value that is not a mapping", node.start_mark,
                            field=loader.field())
    loader.flatten_mapping(node)
    result = LocatedDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise ConfigError("a mapping key must be a plain value", file=loader.filename, line=line,
                              field=loader.field())
        if key in result:
            raise ConfigError(
                f"duplicate key {key!r} (first at line {result.key_lines[key]})",
                file=loader.filename, line=line, hint="YAML keeps only the last one; remove one of them")
        result[key] = loader._descend(key, value_node)
        result.key_lines[key] = line
    return result


def _construct_sequence(loader: _Loader, node) -> LocatedList:
    if not isinstance(node, SequenceNode):
        raise loader._error("!!seq is written on a value that is not a list", node.start_mark,
                            field=loader.field())
    result = LocatedList(loader._descend(i, child) for i, child in enumerate(node.value))
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


def _construct_int(loader: _Loader, node) -> int:
    if isinstance(node, ScalarNode) and len(node.value) > MAX_NUMBER_CHARS:
        raise loader._error(f"a number of {len(node.value)} characters is not a usable value", node.start_mark,
                            field=loader.field(), hint="numbers in a builds.yaml are small; quote it if it is text")
    return yaml.SafeLoader.construct_yaml_int(loader, node)


def _refuse_tag(loader: _Loader, node) -> None:
    tag = node.tag
    what = _TAG_NAMES.get(tag) or f"the tag {tag[len(_TAG):] if tag.startswith(_TAG) else tag}"
    hint = ("quote it ('2024-01-01') to use it as text" if tag == _TAG + "timestamp"
            else "a builds.yaml holds text, numbers, true/false, lists and mappings only")
    raise loader._error(f"{what} is not accepted here", node.start_mark, hint=hint, field=loader.field())


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
_Loader.add_constructor(_TAG + "int", _construct_int)
for _tag in (*_TAG_NAMES, None):  # None: any tag without a constructor (!!python/object, !custom ...)
    _Loader.add_constructor(_tag, _refuse_tag)
assert set(_Loader.yaml_constructors) - {None} - set(_TAG_NAMES) == _PLAIN_TAGS


def load_yaml(text: str, filename: str) -> Any:
    """Parse YAML text; syntax errors become ConfigError with file and line."""
    loader = None
    try:
        loader = _Loader(text)
        loader.filename = filename
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"invalid YAML: {problem}", file=filename, line=line) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, control codes)
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(f"invalid YAML: character {exc.character!r} is not allowed", file=filename,
                          line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=filename) from None
    finally:
        if loader is not None:
            loader.dispose()
