"""The one exception family of yamlnet.

Every mistake a user can make in a spec raises a `SpecError` (or a subclass) whose
text is `file:line:col: spec.path: message (hint)`. Several problems found at once
(the schema stage reports all of them) travel together in one `SpecError` whose
`diagnostics` list holds one `Diagnostic` per problem; `str()` prints one per line.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass

__all__ = [
    "Location",
    "Diagnostic",
    "SpecError",
    "LoadError",
    "SchemaError",
    "ExprError",
    "GraphError",
    "ShapeError",
    "PluginError",
    "did_you_mean",
]


@dataclass(frozen=True)
class Location:
    """A position in a spec file (1-based line and column)."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class ChangedBy(Location):
    """A place in a file whose value was changed by overrides (`--set classes=0`, or a
    run configuration's `--set train.optimizer.lr=-1` under `optimizer:`): an error there
    may be the override's doing, so both are named, after the file's position."""

    items: tuple[str, ...] = ()

    def __str__(self) -> str:
        return ", ".join([f"{self.file}:{self.line}:{self.col}", *self.items])


@dataclass(frozen=True)
class Diagnostic:
    """One located problem: where, which spec path, what, and how to fix it."""

    message: str
    loc: Location | None = None
    path: str = ""
    hint: str = ""

    def __str__(self) -> str:
        head = f"{self.loc}: " if self.loc else ""
        path = f"{self.path}: " if self.path else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{head}{path}{self.message}{hint}"

    def as_dict(self) -> dict:
        loc = self.loc
        return {
            "file": loc.file if loc else None,
            "line": loc.line if loc else None,
            "column": loc.col if loc else None,
            "path": self.path,
            "message": self.message + (f" ({self.hint})" if self.hint else ""),
        }


class SpecError(Exception):
    """A user error in a spec. `str(err)` is one located line per problem."""

    def __init__(
        self,
        message: str = "",
        loc: Location | None = None,
        path: str = "",
        hint: str = "",
        *,
        diagnostics: list[Diagnostic] | None = None,
    ):
        self.diagnostics = diagnostics or [Diagnostic(message, loc, path, hint)]
        super().__init__("\n".join(str(d) for d in self.diagnostics))

    @property
    def loc(self) -> Location | None:
        return self.diagnostics[0].loc

    @property
    def path(self) -> str:
        return self.diagnostics[0].path


class LoadError(SpecError):
    """The file is not a safe, well-formed YAML spec (syntax, tags, limits)."""


class SchemaError(SpecError):
    """The spec does not match the yamlnet schema or an op's argument schema."""


class ExprError(SpecError):
    """An expression `${...}` is malformed, unsafe, or fails to evaluate."""


class GraphError(SpecError):
    """The network is not a valid graph: unknown inputs, cycles, dead nodes."""


class ShapeError(SpecError):
    """Shapes do not fit: a node cannot accept the tensors it is given."""


class PluginError(SpecError):
    """A plugin module could not be loaded or registered an invalid op."""


def did_you_mean(word: str, choices, n: int = 1) -> str:
    """A ' (did you mean X?)'-style hint, or '' when nothing is close.

    >>> did_you_mean("kernal_size", ["kernel_size", "stride"])
    'did you mean kernel_size?'
    """
    choices = [str(c) for c in choices]
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return f"did you mean {lowered[word.lower()]}?"
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.6)
    return f"did you mean {' or '.join(close)}?" if close else ""


def not_a_regular_file(path) -> str | None:
    """What `path` is when it is not a regular file one can read to its end ("a FIFO", "a
    character device", "a folder", ...); None for a regular file or a missing path (the
    open then says why). Checked with stat, which never blocks, before anything opens a
    path a user named: opening a FIFO waits for a writer forever, and a device such as
    /dev/zero never ends."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]  # fmt: skip
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


_UNPRINTABLE_OR_LINES = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str, lines: bool = True) -> str:
    """`text` with every control and bidi character written as an escape (`\\x1b`,
    `\\u202e`), newlines and tabs kept: what an error line may echo of a name, a path or
    a value the user gave, so it cannot move the cursor, clear the screen or reverse
    the line on a terminal. With `lines=False` newlines and tabs are escaped too (a
    file name inside a one-line message)."""
    pattern = _UNPRINTABLE if lines else _UNPRINTABLE_OR_LINES
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                       else f"\\u{ord(m.group()):04x}", text)  # fmt: skip
