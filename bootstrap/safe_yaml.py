"""The one way this project reads YAML that a person wrote: inventories, stack files, the
encryption key file.

`yaml.safe_load` builds no arbitrary objects, but it still accepts what a settings file never
needs and what turns a typo or a hostile file into a traceback or a hung machine: any bytes
(UTF-16 and binary files), nesting deep enough to exhaust Python's stack, a few KB of aliases
that expand into billions of values, the same key twice (the last one silently wins), keys
that are not text, and YAML's own types (dates, bytes, sets) that the consumers cannot hold.

Here every one of those is refused before anything is built from the file, as one
`ConfigError` line: `<file>: line N: <what is wrong>; <what to do>`. What comes back is only
plain data: mappings with text keys, lists, text, whole numbers, numbers, booleans, None.
Standard library and PyYAML only: the Pulumi program and the bootstrap both use it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NoReturn

import yaml

from bootstrap.errors import ConfigError

MAX_BYTES = 4 * 1024 * 1024  # a settings file is a few KiB; an inventory of 5,000 hosts ~1 MiB
MAX_DEPTH = 64  # nesting, counted through aliases; our files need fewer than ten levels
MAX_NODES = 250_000  # values, counted as if every alias were written out

_MERGE = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """A rule of this module, broken at a line of the file (1-based; None: the whole file)."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _shown(key: Any) -> str:
    """A key as YAML read it: `on`, `yes` and `true` are all true."""
    if isinstance(key, bool):
        return f"{str(key).lower()} (YAML reads on/off/yes/no as true/false)"
    return "null" if key is None else repr(key)


def _line(node_or_mark: Any) -> int | None:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    return mark.line + 1 if mark is not None and hasattr(mark, "line") else None


def _refuse_tag(loader: _Loader, node: yaml.Node) -> NoReturn:
    name = node.tag.rsplit(":", 1)[-1]
    raise _Refused(_line(node), f"a !!{name} value is not accepted in this file; "
                                "write plain text, numbers, lists and mappings")


def _timestamp_as_text(loader: _Loader, node: yaml.Node) -> str:
    """A date stays the text it was written as (`expiresAt: 2026-01-31`): the consumers
    check dates themselves, and a `datetime` cannot be passed on as JSON."""
    return str(loader.construct_scalar(node))  # type: ignore[arg-type]


class _Loader(yaml.SafeLoader):
    """SafeLoader with bounds on depth and size, and strict mappings."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    # ------------------------------------------------------------------ composing

    def compose_node(self, parent: Any, index: Any) -> Any:
        # Counted while composing, so that neither the recursion below nor the node
        # objects of an enormous file get far.
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(_line(self.peek_event()),
                               f"nested more than {MAX_DEPTH} levels deep; flatten it")
            if self._nodes > MAX_NODES:
                raise _Refused(_line(self.peek_event()),
                               f"more than {MAX_NODES} values; this is not a settings file, "
                               "check that it is the right file")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    # ------------------------------------------------------------------ constructing

    def construct_mapping(self, node: yaml.MappingNode,  # type: ignore[override]
                          deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int | None] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            line = _line(key_node)
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Refused(line, "a key is a list or a mapping; keys are text")
            key = self.construct_object(key_node)
            if not isinstance(key, str):
                raise _Refused(line, f"key {_shown(key)} is not text; quote it")
            if key in seen:
                raise _Refused(line, f"key {key!r} is given twice (lines {seen[key]} and "
                                     f"{line}); keep one")
            seen[key] = line
        mapping = super().construct_mapping(node, deep=deep)
        for key in mapping:  # keys merged in with `<<` too
            if not isinstance(key, str):
                raise _Refused(_line(node), f"key {_shown(key)} is not text; quote it")
        return mapping

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:  # type: ignore[override]
        try:
            return super().construct_yaml_int(node)
        except ValueError as err:  # more digits than Python converts (sys.int_info)
            raise _Refused(_line(node), "a number with too many digits; write a smaller "
                                        "number") from err


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)
for _tag in ("binary", "set", "omap", "pairs"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a graph that, with every alias written out, is too deep, too large, or has
    no end (an alias inside the node it names). Each node is measured once, so a few KB
    of nested aliases are refused at once instead of being expanded."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels) written out
    open_nodes: set[int] = set()

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        if depth > MAX_DEPTH:
            raise _Refused(_line(node), f"nested more than {MAX_DEPTH} levels deep once its "
                                        "aliases are written out; flatten it")
        key = id(node)
        if key in open_nodes:
            raise _Refused(_line(node), "an alias names a node that contains it, which has "
                                        "no end; remove the loop")
        if key not in measured:
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            open_nodes.add(key)
            values, levels = 1, 1
            for child in children:
                child_values, child_levels = measure(child, depth + 1)
                values += child_values
                levels = max(levels, child_levels + 1)
                if values > MAX_NODES:
                    raise _Refused(_line(node), f"its aliases expand to more than {MAX_NODES} "
                                                "values; write the values out or use fewer "
                                                "aliases")
            open_nodes.discard(key)
            measured[key] = (values, levels)
        values, levels = measured[key]
        if depth + levels - 1 > MAX_DEPTH:
            raise _Refused(_line(node), f"nested more than {MAX_DEPTH} levels deep once its "
                                        "aliases are written out; flatten it")
        return values, levels

    measure(root, 1)


def _decode(data: bytes) -> str:
    if b"\x00" in data:
        line = data[:data.index(b"\x00")].count(b"\n") + 1
        raise _Refused(line, "not UTF-8 text (it holds NUL bytes: UTF-16 or a binary "
                             "file?); save it as UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise _Refused(line, f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                             f"{err.start}); save it as UTF-8") from err
    return text.removeprefix("\ufeff")


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _one_line(text: str) -> str:
    """Line breaks and other control characters escaped: every message is one line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def parse(data: bytes | str, source: str) -> Any:
    """The plain data of one YAML document; any problem is one `ConfigError` line."""
    try:
        if isinstance(data, bytes):
            if len(data) > MAX_BYTES:
                raise _Refused(None, _too_large(len(data)))
            data = _decode(data)
        elif len(data) > MAX_BYTES:
            raise _Refused(None, _too_large(len(data)))
        loader = _Loader(data)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expansion(node)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except _Refused as err:
        where = f" line {err.line}:" if err.line is not None else ""
        raise ConfigError(_one_line(f"{source}:{where} {err.message}")) from err
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = ", ".join(p for p in (err.context, err.problem) if p) or "unreadable"
        raise ConfigError(_one_line(f"{source}:{where} not valid YAML ({problem}); fix the "
                                    "syntax")) from err
    except yaml.reader.ReaderError as err:  # a character YAML does not allow
        text = data if isinstance(data, str) else ""
        line = text[:err.position].count("\n") + 1
        char = (f"U+{err.character:04X}" if isinstance(err.character, int)
                else repr(err.character))
        raise ConfigError(_one_line(f"{source}: line {line}: not valid YAML (the character "
                                    f"{char} is not allowed); remove it")) from err
    except yaml.YAMLError as err:
        raise ConfigError(_one_line(f"{source}: not valid YAML ({err}); fix the syntax")) \
            from err
    except RecursionError as err:  # a fallback: the bounds above should come first
        raise ConfigError(_one_line(f"{source}: nested too deeply to read; flatten it")) \
            from err


def _too_large(size: int) -> str:
    return (f"{size} bytes, more than the {MAX_BYTES // (1024 * 1024)} MiB a settings file "
            "may have; check that this is the right file")


def read_bounded(path: Path) -> bytes:
    """The file's bytes, at most MAX_BYTES + 1 of them (enough to tell it is too large).
    OSError (a missing file, say) is left to the caller."""
    with open(path, "rb") as handle:
        return handle.read(MAX_BYTES + 1)


def load(path: str | Path, *, what: str = "it", fix: str = "check the path") -> Any:
    """Read and parse one YAML file; an unreadable file is one line too: `<path>: cannot
    read <what> (<reason>); <fix>`."""
    path = Path(path)
    try:
        data = read_bounded(path)
    except OSError as err:
        raise ConfigError(_one_line(f"{path}: cannot read {what} ({err.strerror or err}); "
                                    f"{fix}")) from err
    return parse(data, str(path))
