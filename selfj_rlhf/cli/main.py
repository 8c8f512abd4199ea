"""The ``selfj`` command line: ``selfj alpaca-eval generate|evaluate|bundle``, ``selfj serve``, ``selfj data prepare``
and the judge-building stages ``selfj sample``, ``selfj label`` and ``selfj train-judge`` (the recipes' twins).

    selfj alpaca-eval generate --policy smollm2-135m-instruct --n 4 --max_prompts 20 --output_dir runs/ae
    selfj alpaca-eval evaluate --model_outputs runs/ae/model_outputs.json --annotator local:smollm2-135m-instruct \
        --output_dir runs/ae/eval
    selfj alpaca-eval bundle --model_outputs runs/ae/model_outputs.json --eval_dir runs/ae/eval --output_dir runs/ae/bundle

    selfj serve --judge selfj-smollm2-135m --port 5000     # the judge as an HTTP reward service (selfj_rlhf/serving/server.py)

    selfj data prepare --data_dir data --check             # a SELFJ_DATA_DIR for every preset (selfj_rlhf/data/prepare.py)

    selfj sample --config recipes/configs/sample_own.yaml                   # the policy's own answers
    selfj label --config recipes/configs/label_own_samples.yaml             # the teacher's labels of them
    selfj train-judge --config recipes/configs/train_judge_own_samples.yaml # the judge, design chosen by CV

    selfj probe-judge --judge selfj-smollm2-135m --answers runs/own_samples/samples.jsonl --fail_on_violation true

``generate`` is best-of-n (recipes/best_of_n.py) with AlpacaEval defaults: the 805 AlpacaEval instructions
and greedy decoding when ``--n 1``. Every subcommand takes ``--config file.yaml`` like the recipes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable

from ..data.prepare import check, prepare, print_report
from ..judge.probe import render_probe, run_probe
from ..rlhf.alpacaeval import evaluate_outputs, write_bundle
from ..rlhf.best_of_n import run_best_of_n
from ..training.sampling import run_sampling
from .stages import run_label_stage, run_train_judge_stage
from .recipes import cpu_training_defaults, make_trl_parser, run_cli

ALPACA_EVAL_INSTRUCTIONS = "preset:alpaca_eval"  # the 805 AlpacaEval instructions (see selfj_rlhf.data.datasets)


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


def _generate(config) -> None:
    summary = run_best_of_n(config)
    if summary is not None:
        print(f"{config.output_dir}/model_outputs.json: {summary['prompts']} outputs")


def _evaluate(config) -> None:
    import json

    print(json.dumps(evaluate_outputs(config), indent=2))


def _bundle(config) -> None:
    out = write_bundle(config.model_outputs, config.eval_dir, config.output_dir, name=config.name,
                       policy=config.policy, pretty_name=config.pretty_name, link=config.link)
    print(f"bundle written to {out} (see its README.md for the submission checklist)")


def _serve(reward, config) -> None:
    # imported here: the server needs the serve extra (fastapi), which the other subcommands do not
    from ..serving.server import serve

    serve(reward, config)


def _data_prepare(config) -> None:
    if not config.check:
        print_report(prepare(config), config.target())
        print("then: export SELFJ_DATA_DIR=" + str(config.target().resolve()))
    print_report(check(config), config.target())


def _sample(config) -> None:
    summary = run_sampling(config)
    if summary is not None:
        print(summary)


def _label(config, pool, run_args) -> None:
    summary = run_label_stage(config, pool, run_args)
    if summary is not None:
        print({k: v for k, v in summary.items() if k != "config"})


def _train_judge(config, training_args) -> None:
    print(f"judge saved to {run_train_judge_stage(config, training_args)}")


def _probe_judge(config) -> None:
    result = run_probe(config)
    print(render_probe(result))
    print(f"written to {config.output_dir}/probe.json and probe.md")
    if config.fail_on_violation and not result["passed"]:
        sys.exit(1)


def _env() -> None:
    import json

    print(json.dumps(environment(), indent=2))


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


@dataclass
class Subcommand:
    """One ``selfj`` subcommand: what it does, the config dataclasses its flags come from (``module:Class``, imported
    when used), defaults that differ from those dataclasses', and the function called with the parsed configs."""

    help: str
    configs: tuple[str, ...]
    run: Callable
    defaults: dict = field(default_factory=dict)

    def config_classes(self) -> list[type]:
        import importlib

        classes = []
        for spec in self.configs:
            module, name = spec.split(":")
            classes.append(getattr(importlib.import_module(module, __package__), name))
        return classes

    def parser(self):
        from transformers import TrainingArguments

        classes = self.config_classes()
        parser = make_trl_parser(*classes)
        if any(issubclass(c, TrainingArguments) for c in classes):  # a training stage runs on CPU-only machines too
            cpu_training_defaults(parser)
        parser.set_defaults(**self.defaults)
        return parser


SUBCOMMANDS: dict[str, Subcommand] = {
    # temperature stays unset: greedy for --n 1, best-of-n's sampling temperature for --n > 1
    "alpaca-eval generate": Subcommand("Best-of-n outputs for AlpacaEval (its 805 instructions by default).",
                                       ("..rlhf.best_of_n:BestOfNConfig",), _generate,
                                       dict(dataset=ALPACA_EVAL_INSTRUCTIONS, n=1, max_new_tokens=512,
                                            output_dir="runs/alpaca_eval")),
    "alpaca-eval evaluate": Subcommand("Win rates against reference outputs (official, local or SELF-J annotator).",
                                       ("..rlhf.alpacaeval:EvaluateConfig",), _evaluate),
    "alpaca-eval bundle": Subcommand("The leaderboard submission layout of evaluated outputs.",
                                     (".main:BundleConfig",), _bundle),
    "serve": Subcommand("The judge as an HTTP reward service (OpenRLHF, verl, TRL, slime).",
                        ("..judge.reward_signal:SelfJRewardConfig", "..serving.server:ServeConfig"), _serve),
    "data prepare": Subcommand("A SELFJ_DATA_DIR with every preset and the RL prompt files; --check reports.",
                               ("..data.prepare:DataPrepareConfig",), _data_prepare),
    "sample": Subcommand("The policy's own answers to training prompts, n per prompt (recipes/sample.py).",
                         ("..training.sampling:SampleConfig",), _sample),
    "label": Subcommand("The SELF-J teacher's labels of answers (recipes/label.py).",
                        ("..training.labeling:LabelConfig", "..training.pool:PoolLabelConfig", ".stages:LabelRunArgs"),
                        _label),
    "train-judge": Subcommand("Train a judge from labels; scalar heads choose their design by CV "
                              "(recipes/train_judge.py).",
                              ("..training.distill:JudgeTrainingConfig", "transformers:TrainingArguments"),
                              _train_judge),
    "probe-judge": Subcommand("Attack any judge (content-free answers, additions, padding) on your honest answers.",
                              ("..judge.probe:ProbeConfig",), _probe_judge),
    "env": Subcommand("What this machine has: torch and CUDA, GPUs, vLLM, DeepSpeed, flash-attn.", (), _env),
}
USAGE = "usage:\n" + "\n".join(f"  selfj {name}{' [--config FILE] [flags]' if sub.configs else ''}    {sub.help}"
                                for name, sub in SUBCOMMANDS.items()) + "\n(add --help to a subcommand for its flags)"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = next((n for n in SUBCOMMANDS if argv[:len(n.split())] == n.split()), None)
    if name is None:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    sub, rest = SUBCOMMANDS[name], argv[len(name.split()):]

    def run():
        if not sub.configs:
            return sub.run()
        return sub.run(*sub.parser().parse_args_and_config(rest))

    run_cli(run)


if __name__ == "__main__":
    main()
