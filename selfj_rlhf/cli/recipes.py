"""Shared plumbing of the thin ``recipes/*.py`` launchers."""

from __future__ import annotations

import sys
from typing import Callable

from ..core.errors import ConfigError, SelfJError
from .launch import spawn_cpu_workers_if_requested


def make_trl_parser(*config_classes):
    """A TrlParser over the recipe's config dataclasses (``--config recipe.yaml`` plus flags; unknown
    YAML keys are rejected). Its ``ValueError``s (unknown keys, invalid training arguments) become
    ``ConfigError``s, so recipes report them as one ``error:`` line."""
    from trl import TrlParser

    class StrictTrlParser(TrlParser):
        def parse_args_and_config(self, args=None, **kwargs):
            try:
                return super().parse_args_and_config(args, **kwargs)
            except SelfJError:
                raise
            except ValueError as err:
                source = _config_path(args)
                raise ConfigError(f"{source + ': ' if source else ''}{err}") from None

    return StrictTrlParser(config_classes)


def _config_path(args) -> str | None:
    argv = list(sys.argv[1:] if args is None else args)
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def cpu_training_defaults(parser):
    """Training-argument defaults that make a recipe run on a machine without CUDA.

    TRL's configs default to bf16, which the Trainer refuses without a GPU. Without CUDA, accelerate's
    DeepSpeed path finds no backend and every process believes it is alone; gloo makes
    ``--use_deepspeed --num_processes N`` on CPU a real N-process job. YAML and flags still override.
    """
    import os

    import torch

    if not torch.cuda.is_available():
        parser.set_defaults(bf16=False)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            parser.set_defaults(ddp_backend="gloo")
    return parser


def run_cli(main: Callable[[], None]) -> None:
    """Run a recipe's ``main``; user errors end as one ``error: ...`` line and exit code 2.

    Under ``accelerate launch --cpu --num_processes N`` this first fans out into N worker processes.
    """

    code = spawn_cpu_workers_if_requested()
    if code is not None:
        sys.exit(code)
    try:
        main()
    except SelfJError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
