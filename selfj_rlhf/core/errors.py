"""Errors that mean "the user's input is wrong": recipes print them as one clear line, no traceback."""

from __future__ import annotations

import os


class SelfJError(ValueError):
    """Base class of user-facing errors."""


class ConfigError(SelfJError):
    """An invalid or conflicting configuration value."""


class ModelSpecError(SelfJError):
    """A --policy/--judge/--model argument that names nothing loadable."""


class DigitTokenError(SelfJError):
    """The judge tokenizer cannot represent the digits 0-9 as single tokens."""


class RecordError(SelfJError):
    """Bad input data, located precisely: ``path:line: field 'name': problem``."""

    def __init__(self, path: str | os.PathLike | None, line: int | None, field: str | None, problem: str):
        self.path, self.line, self.field, self.problem = path, line, field, problem
        where = str(path) if path is not None else "<records>"
        if line is not None:
            where += f":{line}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {problem}")
