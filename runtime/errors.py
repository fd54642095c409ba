"""Errors of the runtime. A mistake in `data:`/`train:`, on the command line or in a
checkpoint the user points at is a `ConfigError` (a `SpecError`: one located line, exit
code 2). A run that fails on its own (a non-finite loss) raises `TrainingError` (exit 1).
"""

from __future__ import annotations

from ..compiler.errors import ChangedBy, Location, SpecError

__all__ = ["ConfigError", "CheckpointError", "TrainingError", "ArgLocation", "ChangedBy", "first_line",
           "import_extra"]


class ConfigError(SpecError):
    """The `data:`/`train:` sections, a config file or an override is wrong."""


class CheckpointError(ConfigError):
    """A checkpoint is missing, corrupt, or does not fit the spec."""


class TrainingError(Exception):
    """The run stopped on its own (non-finite loss); the last good checkpoint is kept."""


def import_extra(module: str, extra: str, what: str, package: str | None = None):
    """The optional `module`, or an ImportError saying which extra installs it (callers
    turn it into their own one-line error).

    >>> import_extra("json", "none", "this").__name__
    'json'
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f'{what} needs {package or module}: pip install "yamlnet[{extra}]"') from None


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first line of an error's message (its type's name if it has none)."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


class ArgLocation(Location):
    """A value that came from the command line (`--set train.epochs=5`), not a file."""

    def __str__(self) -> str:
        return self.file
