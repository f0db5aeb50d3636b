"""YAML loading that remembers where each value came from.

PyYAML's safe loader forgets line numbers and silently keeps the last of two
duplicate keys; error messages need the first and users need the second to be
an error. Mappings load as ``LocatedDict`` and sequences as ``LocatedList``,
plain containers that also carry the 1-based line of each entry.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError


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


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
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
            raise ConfigError("a mapping key must be a plain value", file=loader.filename, line=line)
        if key in result:
            raise ConfigError(
                f"duplicate key {key!r} (first at line {result.key_lines[key]})",
                file=loader.filename, line=line, hint="YAML keeps only the last one; remove one of them")
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocatedList:
    result = LocatedList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


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
