"""Exceptions that capshard raises on purpose.

Every error a user can cause is a :class:`CapshardError`; the CLI prints its message on
one line and exits with :attr:`CapshardError.exit_code`, without a traceback. Anything
else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations


class CapshardError(Exception):
    """An error caused by input, options or the environment, not by a bug."""

    exit_code = 1


class UsageError(CapshardError):
    """Options that cannot work together, or a source that cannot be read as asked."""

    exit_code = 2


class SourceError(CapshardError):
    """A malformed annotation file: names the file and the line or row."""

    def __init__(self, file: object, where: object, message: str) -> None:
        self.file = str(file)
        self.where = where
        super().__init__(f"{file}:{where}: {message}")


class BuildError(CapshardError):
    """The build ran but its result must not be used (leaks, id bug, reject budget, ...)."""


class OutputError(CapshardError):
    """The output directory cannot be written, or holds a different build."""


class IntegrityError(CapshardError):
    """A shard or manifest does not match what was written."""
