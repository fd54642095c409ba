"""Stage 1 — load: spec text -> `Document` (plain data + the location of every value).

The loader is built on PyYAML's *event* parser and composes values itself, so that it
decides every rule that matters for safety and for honest values:

- no tags at all (`!!python/object`, `!!str`, `!custom`): a spec is data, never code;
- one document per file, UTF-8 only, no control or bidi-override characters;
- limits on file size, nesting depth and the expanded size of aliases and merge keys,
  so that "billion laughs" bombs fail fast instead of exhausting memory;
- duplicate keys are errors, mapping keys are always strings (`0:` is the key "0");
- plain scalars follow YAML 1.2's core schema, and the YAML 1.1 readings that would
  silently change a value (`no` as false, `010` as octal 8, `1:30` as 90, `1_000`)
  are errors that ask the author to write what they mean.

Every value's position is kept in `Document.locs`, keyed by its path tuple
(`("nodes", "conv1", "kernel_size")`); mapping members are located at their key.
`include:` lists other spec files (block libraries); they are loaded here, relative to
the including file, with cycles reported as the chain of files.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import LoadError, Location, not_a_regular_file
from .zoo import is_zoo_name, zoo_spec

__all__ = ["Document", "SpecSource", "load_spec_source", "load_document", "nearest_loc", "LIMITS"]

LIMITS = {
    "max_bytes": 1 << 20,  # 1 MiB of YAML is far beyond any hand-written spec
    "max_depth": 48,  # nesting of mappings/sequences
    "max_nodes": 200_000,  # values after expanding aliases and merge keys
    "max_int": 2**53,  # larger integers are almost surely typos
    "max_includes": 64,
}

_Parser = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# C0/C1 controls except tab/newline/CR, plus Unicode bidi overrides (trojan-source).
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)\Z")
_HEX_OCT = re.compile(r"[-+]?0(x[0-9a-fA-F]+|o[0-7]+)\Z")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_NONFINITE = re.compile(r"[-+]?\.(inf|Inf|INF)\Z|\.(nan|NaN|NAN)\Z")
_LEADING_ZERO = re.compile(r"[-+]?0[0-9_]+\Z")
_UNDERSCORE_NUM = re.compile(r"[-+]?[0-9][0-9_]*_[0-9_]*(\.[0-9_]*)?\Z")
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?\Z")
_YAML11_BOOL = {
    "yes": True, "Yes": True, "YES": True, "on": True, "On": True, "ON": True,
    "no": False, "No": False, "NO": False, "off": False, "Off": False, "OFF": False,
}  # fmt: skip
_NULL = {"", "~", "null", "Null", "NULL"}
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}


@dataclass(frozen=True)
class Document:
    """One loaded YAML file: its data and where each value was written."""

    data: Any
    file: str
    locs: dict[tuple, Location] = field(repr=False, default_factory=dict)

    def loc(self, path: tuple) -> Location | None:
        """The location of `path`, or of its nearest located ancestor."""
        return nearest_loc(self.locs, path) or self.locs.get((), Location(self.file, 1, 1))


def nearest_loc(locs: dict[tuple, Location], path: tuple) -> Location | None:
    """The location of `path` or of its nearest ancestor in `locs` (None if none is)."""
    path = tuple(path)
    while path:
        if path in locs:
            return locs[path]
        path = path[:-1]
    return None


@dataclass(frozen=True)
class SpecSource:
    """A spec and the block libraries it includes (transitively, each file once)."""

    main: Document
    includes: tuple[Document, ...] = ()


def load_spec_source(source: str | os.PathLike, *, name: str | None = None) -> SpecSource:
    """Load a spec from a path or from YAML text, following `include:`.

    >>> load_spec_source("yamlnet: 1\\nnodes: {fc: {op: Linear, out_features: 2}}").main.data["yamlnet"]
    1
    """
    variant: dict = {}
    if is_zoo_name(source):  # zoo:resnet, or zoo:resnet50 (the file with depth: 50)
        source, variant = zoo_spec(source)
    if isinstance(source, os.PathLike) or ("\n" not in str(source) and _looks_like_path(source)):
        path = os.fspath(source)
        main = load_document(_read_file(path, None), path)
        base = os.path.dirname(os.path.abspath(path))
        if variant:  # the variant's values replace the file's defaults; overrides still win
            main.data["vars"] = {**(main.data.get("vars") or {}), **variant}
    else:
        main = load_document(str(source).encode("utf-8"), name or "<spec>")
        base = os.getcwd()
    includes: list[Document] = []
    _follow_includes(main, base, [os.path.abspath(main.file)], includes, set())
    return SpecSource(main, tuple(includes))


def _looks_like_path(text: str) -> bool:
    text = str(text)
    return text.endswith((".yaml", ".yml")) or os.path.exists(text)


def _read_file(path: str, loc: Location | None) -> bytes:
    kind = not_a_regular_file(path)
    if kind is not None:
        raise LoadError(f"cannot read {path}: it is {kind}, not a file", loc or Location(path, 1, 1))
    try:
        size = os.path.getsize(path)
        if size > LIMITS["max_bytes"]:
            raise LoadError(
                f"file is {size} bytes; the limit is {LIMITS['max_bytes']}",
                loc or Location(path, 1, 1),
            )
        with open(path, "rb") as fh:
            return fh.read(LIMITS["max_bytes"] + 1)
    except OSError as err:
        where = loc or Location(path, 1, 1)
        raise LoadError(f"cannot read {path}: {err.strerror or err}", where) from err


def _follow_includes(doc: Document, base: str, chain: list[str], out: list, seen: set) -> None:
    data = doc.data if isinstance(doc.data, dict) else {}
    items = data.get("include", [])
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list):
        return  # the schema stage reports the wrong type, located
    for i, rel in enumerate(items):
        if not isinstance(rel, str):
            continue
        loc = doc.loc(("include", i))
        if is_zoo_name(rel):
            found, sets = zoo_spec(rel, loc)
            if sets:
                raise LoadError(f"include names a zoo family, not a variant ({rel}): include "
                                f"zoo:{found.stem} and set its variables", loc, f"include[{i}]")  # fmt: skip
        path = os.path.abspath(found if is_zoo_name(rel) else os.path.join(base, rel))
        if path in chain:
            cycle = " -> ".join(os.path.relpath(p) for p in chain[chain.index(path):] + [path])
            raise LoadError(f"include cycle: {cycle}", loc, f"include[{i}]")
        if path in seen:
            continue
        if len(seen) >= LIMITS["max_includes"]:
            raise LoadError(f"more than {LIMITS['max_includes']} included files", loc, "include")
        if not os.path.isfile(path):
            kind = not_a_regular_file(path)
            raise LoadError(f"included file {rel} is {kind}, not a file" if kind else
                            f"included file not found: {rel}", loc, f"include[{i}]")  # fmt: skip
        seen.add(path)
        inc = load_document(_read_file(path, loc), os.path.relpath(path))
        if not isinstance(inc.data, dict):
            raise LoadError("an included file must be a mapping with blocks:", inc.loc(()))
        _follow_includes(inc, os.path.dirname(path), chain + [path], out, seen)
        out.append(inc)


def load_document(raw: bytes, file: str) -> Document:
    """Parse one YAML document safely. Raises `LoadError` with a location."""
    if len(raw) > LIMITS["max_bytes"]:
        raise LoadError(f"spec is over {LIMITS['max_bytes']} bytes", Location(file, 1, 1))
    text = _decode(raw, file)
    bad = _BAD_CHARS.search(text)
    if bad:
        line, col = _line_col(text, bad.start())
        raise LoadError(
            f"control character U+{ord(bad.group()):04X} is not allowed", Location(file, line, col)
        )
    composer = _Composer(file)
    try:
        data = composer.compose(yaml.parse(text, Loader=_Parser))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        raise LoadError(f"YAML syntax error: {err.problem or err.context}", loc) from None
    except yaml.YAMLError as err:  # e.g. reader errors without a mark
        raise LoadError(f"YAML error: {err}", Location(file, 1, 1)) from None
    return Document(data, file, composer.locs)


def _decode(raw: bytes, file: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line, col = _line_col(raw[: err.start].decode("utf-8", "replace"), err.start)
        raise LoadError(
            f"file is not UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start})",
            Location(file, line, col),
        ) from None


def _check_decoded(value: str, loc: Location) -> None:
    """The character rule again on a scalar as YAML decoded it: a double-quoted "\\e" or
    "\\u202e" is an escape in the file but a control or bidi character in the value."""
    bad = _BAD_CHARS.search(value)
    if bad:
        raise LoadError(f"control character U+{ord(bad.group()):04X} is not allowed (written as an "
                        "escape)", loc)  # fmt: skip


def _line_col(text: str, index: int) -> tuple[int, int]:
    before = text[:index]
    line = before.count("\n") + 1
    return line, index - (before.rfind("\n") + 1) + 1


class _Composer:
    """Turns a PyYAML event stream into plain values, enforcing the rules above."""

    def __init__(self, file: str):
        self.file = file
        self.locs: dict[tuple, Location] = {}
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.count = 0

    def compose(self, events) -> Any:
        self.events = iter(events)
        self._expect(yaml.StreamStartEvent)
        event = next(self.events)
        if isinstance(event, yaml.StreamEndEvent):
            raise LoadError("the spec is empty", Location(self.file, 1, 1))
        data, _ = self._value(next(self.events), (), 0)
        self._expect(yaml.DocumentEndEvent)
        event = next(self.events)
        if not isinstance(event, yaml.StreamEndEvent):
            raise LoadError(
                "only one YAML document is allowed per spec (found '---' starting another)",
                self._loc(event),
            )
        return data

    def _expect(self, kind):
        event = next(self.events)
        assert isinstance(event, kind), event  # PyYAML guarantees the stream grammar
        return event

    def _loc(self, event) -> Location:
        mark = event.start_mark
        return Location(self.file, mark.line + 1, mark.column + 1)

    def _grow(self, n: int, event) -> None:
        self.count += n
        if self.count > LIMITS["max_nodes"]:
            raise LoadError(
                f"spec expands to more than {LIMITS['max_nodes']} values (alias or merge-key bomb?)",
                self._loc(event),
            )

    def _value(self, event, path: tuple, depth: int) -> tuple[Any, int]:
        """Compose one value; returns it and its expanded size."""
        loc = self._loc(event)
        self.locs.setdefault(path, loc)
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in self.anchors:
                raise LoadError(f"unknown alias *{event.anchor}", loc)
            value, size = self.anchors[event.anchor]
            self._grow(size, event)
            return value, size
        if getattr(event, "tag", None) is not None:
            tag = event.tag.replace("tag:yaml.org,2002:", "!!")  # as the author wrote it
            raise LoadError(
                f"YAML tags are not allowed in a spec (found '{tag}'): a spec is plain data", loc
            )
        if depth > LIMITS["max_depth"]:
            raise LoadError(f"nesting deeper than {LIMITS['max_depth']} levels", loc)
        self._grow(1, event)
        if isinstance(event, yaml.ScalarEvent):
            _check_decoded(event.value, loc)
            value, size = _resolve_scalar(event, loc), 1
        elif isinstance(event, yaml.SequenceStartEvent):
            value, size = self._sequence(path, depth)
        elif isinstance(event, yaml.MappingStartEvent):
            value, size = self._mapping(path, depth, loc)
        else:  # pragma: no cover - the event grammar allows nothing else here
            raise LoadError(f"unexpected YAML event {type(event).__name__}", loc)
        if event.anchor is not None:
            self.anchors[event.anchor] = (value, size)
        return value, size

    def _sequence(self, path: tuple, depth: int) -> tuple[list, int]:
        items, size = [], 1
        for event in self.events:
            if isinstance(event, yaml.SequenceEndEvent):
                return items, size
            value, n = self._value(event, path + (len(items),), depth + 1)
            items.append(value)
            size += n
        raise AssertionError("unterminated sequence")  # pragma: no cover

    def _mapping(self, path: tuple, depth: int, loc: Location) -> tuple[dict, int]:
        result: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        size = 1
        for event in self.events:
            if isinstance(event, yaml.MappingEndEvent):
                for key, value in merged.items():
                    result.setdefault(key, value)
                return result, size
            key_loc = self._loc(event)
            key = self._key(event, key_loc)
            if key == "<<" and not getattr(event, "style", None):
                value, n = self._value(next(self.events), path + ("<<",), depth + 1)
                self._merge(merged, value, key_loc)
                size += n
                continue
            if key in result:
                first = self.locs[path + (key,)]
                raise LoadError(
                    f"duplicate key '{key}' (first written at line {first.line})", key_loc
                )
            self.locs[path + (key,)] = key_loc
            value, n = self._value(next(self.events), path + (key,), depth + 1)
            result[key] = value
            size += n
        raise AssertionError("unterminated mapping")  # pragma: no cover

    def _key(self, event, loc: Location) -> str:
        if isinstance(event, yaml.AliasEvent):
            value, _ = self.anchors.get(event.anchor, (None, 0))
            if isinstance(value, str):
                return value
        elif isinstance(event, yaml.ScalarEvent) and event.tag is None:
            _check_decoded(event.value, loc)
            return event.value
        raise LoadError("mapping keys must be plain strings", loc)

    @staticmethod
    def _merge(merged: dict, value: Any, loc: Location) -> None:
        sources = value if isinstance(value, list) else [value]
        for src in sources:
            if not isinstance(src, dict):
                raise LoadError("a merge key '<<' needs a mapping or a list of mappings", loc)
            for key, item in src.items():
                merged.setdefault(key, item)


def _resolve_scalar(event, loc: Location) -> Any:
    text = event.value
    if event.style:  # quoted or block scalar: always a string (plain is None or "")
        return text
    if text in _NULL:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if text in _YAML11_BOOL:
        word = "true" if _YAML11_BOOL[text] else "false"
        raise LoadError(
            f"'{text}' is ambiguous (YAML 1.1 reads it as {word})",
            loc,
            hint=f"write {word}, or quote it as '{text}' if you mean the word",
        )
    if _INT.match(text) or _HEX_OCT.match(text):
        return _checked_int(text, loc)
    if _LEADING_ZERO.match(text):
        raise LoadError(
            f"'{text}' is ambiguous (YAML 1.1 reads a leading 0 as octal)",
            loc,
            hint=f"write {text.lstrip('+-0') or '0'}, or quote it as '{text}'",
        )
    if _UNDERSCORE_NUM.match(text) or _SEXAGESIMAL.match(text):
        kind = "base-60 number" if ":" in text else "number with underscores"
        raise LoadError(
            f"'{text}' is ambiguous (YAML 1.1 reads it as a {kind})",
            loc,
            hint=f"write the number without separators, or quote it as '{text}'",
        )
    if _NONFINITE.match(text):
        raise LoadError(f"non-finite number '{text}' is not allowed", loc)
    if _FLOAT.match(text):
        value = float(text)
        if not math.isfinite(value):
            raise LoadError(f"number '{text}' overflows to infinity", loc)
        return value
    return text


def _checked_int(text: str, loc: Location) -> int:
    value = int(text, 0) if len(text) <= 24 else None  # long digit strings: skip int()
    if value is None or abs(value) > LIMITS["max_int"]:
        shown = text if len(text) <= 24 else text[:20] + "..."
        raise LoadError(f"integer {shown} is too large (limit 2**53)", loc)
    return value
