"""The ``selfj`` command line: ``selfj alpaca-eval generate|evaluate|bundle``, ``selfj serve`` and
``selfj data prepare``.

    selfj alpaca-eval generate --policy smollm2-135m-instruct --n 4 --max_prompts 20 --output_dir runs/ae
    selfj alpaca-eval evaluate --model_outputs runs/ae/model_outputs.json --annotator local:smollm2-135m-instruct \
        --output_dir runs/ae/eval
    selfj alpaca-eval bundle --model_outputs runs/ae/model_outputs.json --eval_dir runs/ae/eval --output_dir runs/ae/bundle

    selfj serve --judge selfj-smollm2-135m --port 5000     # the judge as an HTTP reward service (selfj_rlhf/server.py)

    selfj data prepare --data_dir data --check             # a SELFJ_DATA_DIR for every preset (selfj_rlhf/data_prepare.py)

``generate`` is best-of-n (recipes/best_of_n.py) with AlpacaEval defaults: the 805 AlpacaEval instructions
and greedy decoding when ``--n 1``. Every subcommand takes ``--config file.yaml`` like the recipes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

USAGE = ("usage: selfj alpaca-eval {generate,evaluate,bundle} [--config FILE] [flags]\n"
         "       selfj serve [--config FILE] [flags]\n"
         "       selfj data prepare [--data_dir DIR] [--raw NAME=PATH ...] [--check]   (add --help for the flags)\n"
         "       selfj env   (what this machine has: torch and CUDA, GPUs, vLLM, DeepSpeed, flash-attn)")
ALPACA_EVAL_INSTRUCTIONS = "preset:alpaca_eval"  # the 805 AlpacaEval instructions (see selfj_rlhf.datasets)


@dataclass
class BundleConfig:
    """Where the evaluated outputs are and where the leaderboard submission layout goes."""

    model_outputs: str = field(default="runs/alpaca_eval/model_outputs.json", metadata={"help": "Evaluated outputs."})
    eval_dir: str = field(default="runs/alpaca_eval/eval", metadata={"help": "The `evaluate` output directory."})
    output_dir: str = field(default="runs/alpaca_eval/bundle", metadata={"help": "Bundle directory."})
    name: str | None = field(default=None, metadata={"help": "Leaderboard name (default: the evaluated name)."})
    policy: str | None = field(default=None, metadata={"help": "Policy id for the model config."})
    pretty_name: str | None = field(default=None, metadata={"help": "Display name on the leaderboard."})
    link: str = field(default="", metadata={"help": "URL describing the model and its decoding."})


def _generate(argv: list[str]) -> None:
    from .best_of_n import BestOfNConfig, run_best_of_n
    from .cli import make_trl_parser

    parser = make_trl_parser(BestOfNConfig)
    # temperature stays unset: greedy for --n 1, best-of-n's sampling temperature for --n > 1
    parser.set_defaults(dataset=ALPACA_EVAL_INSTRUCTIONS, n=1, max_new_tokens=512, output_dir="runs/alpaca_eval")
    (config,) = parser.parse_args_and_config(argv)
    summary = run_best_of_n(config)
    if summary is not None:
        print(f"{config.output_dir}/model_outputs.json: {summary['prompts']} outputs")


def _evaluate(argv: list[str]) -> None:
    import json

    from .alpacaeval import EvaluateConfig, evaluate_outputs
    from .cli import make_trl_parser

    (config,) = make_trl_parser(EvaluateConfig).parse_args_and_config(argv)
    print(json.dumps(evaluate_outputs(config), indent=2))


def _bundle(argv: list[str]) -> None:
    from .alpacaeval import write_bundle
    from .cli import make_trl_parser

    (config,) = make_trl_parser(BundleConfig).parse_args_and_config(argv)
    out = write_bundle(config.model_outputs, config.eval_dir, config.output_dir, name=config.name,
                       policy=config.policy, pretty_name=config.pretty_name, link=config.link)
    print(f"bundle written to {out} (see its README.md for the submission checklist)")


def _serve(argv: list[str]) -> None:
    from .cli import make_trl_parser
    from .reward import SelfJRewardConfig
    from .server import ServeConfig, serve

    reward, config = make_trl_parser(SelfJRewardConfig, ServeConfig).parse_args_and_config(argv)
    serve(reward, config)


def _data_prepare(argv: list[str]) -> None:
    from .cli import make_trl_parser
    from .data_prepare import DataPrepareConfig, check, prepare, print_report

    (config,) = make_trl_parser(DataPrepareConfig).parse_args_and_config(argv)
    if not config.check:
        print_report(prepare(config), config.target())
        print("then: export SELFJ_DATA_DIR=" + str(config.target().resolve()))
    print_report(check(config), config.target())


def environment() -> dict:
    """What a run here can use: versions of the stack, CUDA and its GPUs, and the optional engines."""
    import importlib.metadata
    import platform

    import torch

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "gpus": len(gpus), "gpu_names": gpus,
            "bf16": bool(gpus) and torch.cuda.is_bf16_supported(),
            **{name: version(name) for name in ("selfj-rlhf", "transformers", "trl", "peft", "accelerate", "vllm",
                                                "deepspeed", "flash-attn")}}


COMMANDS = {"generate": _generate, "evaluate": _evaluate, "bundle": _bundle}


def main(argv: list[str] | None = None) -> None:
    from .cli import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        run_cli(lambda: _serve(argv[1:]))
        return
    if argv[:1] == ["env"]:
        import json

        print(json.dumps(environment(), indent=2))
        return
    if argv[:2] == ["data", "prepare"]:
        run_cli(lambda: _data_prepare(argv[2:]))
        return
    if len(argv) < 2 or argv[0] != "alpaca-eval" or argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    run_cli(lambda: COMMANDS[argv[1]](argv[2:]))


if __name__ == "__main__":
    main()
