"""The judge options, declared once: every recipe config and the reward's config inherit ``JudgeArgs``, as TRL's
script arguments share ``ScriptArguments``, so a flag or YAML key means the same wherever it appears.

A renamed option keeps its old name for one release: ``rename_deprecated`` copies the old value onto the new
field with a ``FutureWarning`` (shown by default, unlike ``DeprecationWarning``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields

from ..core.errors import ConfigError
from .self_judge import LENGTH_CONTROL_HELP


DEFAULT_JUDGE_BATCH_SIZE = 8


@dataclass
class JudgeArgs:
    """Which judge scores, and how."""

    judge: str | None = field(default=None, metadata={
        "help": "Judge: model spec (zero-shot self-judge), judge directory or shipped alias. Default: the shipped "
                "judge of the policy, else the policy judging itself."})
    judge_template: str | None = field(default=None, metadata={"help": "Judge template preset (default: the judge's)."})
    judge_batch_size: int | None = field(default=None, metadata={
        "help": f"Items per judge forward (default: {DEFAULT_JUDGE_BATCH_SIZE}; a judge server runs each coalesced "
                "batch as one call, bounded by its max_batch_size and max_batch_tokens, unless this is set)."})
    max_judge_length: int = field(default=2048, metadata={
        "help": "Longest judge prompt in tokens; longer responses are truncated."})
    judge_server_url: str | None = field(default=None, metadata={
        "help": "Score through a `selfj serve` judge server at this URL (e.g. http://127.0.0.1:5000) instead of "
                "loading the judge in this process; the judge options above are then the server's."})
    length_control: bool | None = field(default=None, metadata={"help": LENGTH_CONTROL_HELP})

    def __post_init__(self):
        if self.judge_batch_size is not None and self.judge_batch_size < 1:
            raise ConfigError(f"judge_batch_size must be >= 1, got {self.judge_batch_size}")
        if self.max_judge_length < 1:
            raise ConfigError(f"max_judge_length must be >= 1, got {self.max_judge_length}")

    @property
    def judge_forward_size(self) -> int:
        """Items per judge forward in-process: ``judge_batch_size``, or ``DEFAULT_JUDGE_BATCH_SIZE`` when unset."""
        return self.judge_batch_size or DEFAULT_JUDGE_BATCH_SIZE

    def judge_options(self) -> dict:
        """The ``JudgeArgs`` fields of this config, to build another config from (``SelfJRewardConfig(**...)``)."""
        return {f.name: getattr(self, f.name) for f in fields(JudgeArgs)}


def deprecated(new: str):
    """A field that still accepts an option's old name for one release (default None: not given)."""
    return field(default=None, metadata={"help": f"Deprecated: use {new}. Removed in the next release."})


def rename_deprecated(config, renamed: dict[str, str]) -> None:
    """Move each old option that was given onto its new name, with a ``FutureWarning``; both given is an error."""
    for old, new in renamed.items():
        value = getattr(config, old)
        if value is None:
            continue
        default = next(f.default for f in fields(config) if f.name == new)
        if getattr(config, new) != default and getattr(config, new) != value:
            raise ConfigError(f"{type(config).__name__}: '{old}' is the old name of '{new}'; give only '{new}'")
        warnings.warn(f"{type(config).__name__}: '{old}' is deprecated and will be removed in the next release; "
                      f"use '{new}'", FutureWarning, stacklevel=4)
        setattr(config, new, value)
        setattr(config, old, None)
