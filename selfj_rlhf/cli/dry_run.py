"""``--dry_run``: resolve a recipe's config, data, judge template and digit tokens, print the plan, load no weights.

Before launching a multi-GPU job, a dry run checks on any machine (a laptop, a CPU node) what would otherwise fail
minutes into the job: unknown config keys, data that does not resolve or lacks a column, a tokenizer without
single-token digits, a judge prompt that does not fit ``max_length``. Only the tokenizer is read, from the model
spec or from ``--dry_run_tokenizer`` (a tokenizer directory, or a ``.gguf`` file of the same vocabulary, for
offline machines).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ConfigError
from ..core.models import load_tokenizer
from ..data.datasets import is_spec, iter_records, resolve_dataset
from ..judge.directory import resolve_judge_dir
from ..judge.self_judge import digit_token_ids
from ..judge.templates import get_template, render_judge_prompt


@dataclass
class DryRunArgs:
    dry_run: bool = field(default=False, metadata={
        "help": "Resolve the config, the data, the judge template and the digit tokens, print the plan and exit "
                "without loading weights."})
    dry_run_tokenizer: str | None = field(default=None, metadata={
        "help": "Dry run: read the tokenizer from this directory or .gguf file instead of the model spec."})


def allow_gpu_config_on_cpu(parser, argv) -> None:
    """A dry run parses a GPU config (``bf16: true``) on a CPU: transformers accepts bf16 there with ``use_cpu``,
    which a dry run never acts on."""
    args = list(sys.argv[1:] if argv is None else argv)
    asked = any(a == "--dry_run" or a.startswith("--dry_run=") for a in args) and "--dry_run=false" not in args
    if asked and any(action.dest == "use_cpu" for action in parser._actions):
        parser.set_defaults(use_cpu=True)


def load_plan_tokenizer(model: str, override: str | None):
    from transformers import AutoTokenizer

    source = override or model
    try:
        if source.endswith(".gguf"):
            path = Path(source)
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name), source

        return load_tokenizer(source), source
    except Exception as err:  # offline hub id, missing file: say what to pass instead
        raise ConfigError(f"dry run: the tokenizer of '{source}' could not be read ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); pass --dry_run_tokenizer with a local "
                          "tokenizer directory or .gguf file of the same vocabulary") from None


def describe_data(specs: list[str]) -> list[dict]:
    """Rows and columns of each data spec; a plain path that does not exist yet is an earlier stage's output."""

    out = []
    for spec in specs:
        if not is_spec(spec) and not resolve_dataset(spec).exists():
            out.append({"spec": spec, "state": "not present yet (produced by an earlier stage)"})
            continue
        rows = 0
        first = None
        for _, row in iter_records(spec):
            rows += 1
            first = first or row
        out.append({"spec": spec, "file": str(resolve_dataset(spec)), "rows": rows, "columns": sorted(first or {})})
    return out


def config_dict(config) -> dict:
    if dataclasses.is_dataclass(config) and hasattr(config, "to_dict"):  # transformers / TRL argument classes
        keep = ("output_dir", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
                "num_train_epochs", "max_steps", "bf16", "gradient_checkpointing", "deepspeed", "use_vllm",
                "vllm_mode", "num_generations", "max_completion_length", "max_length", "beta", "seed")
        return {k: v for k, v in config.to_dict().items() if k in keep}
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(vars(config))


def dry_run_plan(recipe: str, configs: list, *, model: str, data: list[str], dry: DryRunArgs,
                 judge: str | None = None, template: str | None = None, max_length: int | None = None,
                 stages: list[str] = ()) -> dict:
    """The plan of a recipe run (see the module docstring); raises ``ConfigError`` for what would fail."""

    tokenizer, source = load_plan_tokenizer(model, dry.dry_run_tokenizer)
    data_info = describe_data(list(data))
    judge_template = get_template(template or "selfj-chat")
    sample = None
    present = [d for d in data_info if "rows" in d]
    if present:
        _, row = next(iter_records(present[0]["spec"]))
        sample = (str(row.get("instruction") or row.get("question") or "What is 2+2?"), row.get("reference"))
    instruction, reference = sample or ("What is 2+2?", None)
    prompts = {}
    for name, ref in (("student (no reference)", None), ("teacher (with reference)", reference)):
        if name.startswith("teacher") and ref is None:
            continue
        prefix, suffix = render_judge_prompt(judge_template, instruction, ref, tokenizer)
        prompts[name] = {"prefix_tokens": len(tokenizer.encode(prefix)), "suffix_tokens": len(tokenizer.encode(suffix))}
        if max_length is not None and sum(prompts[name].values()) >= max_length:
            raise ConfigError(f"dry run: the {name} judge prompt of the first data row takes "
                              f"{sum(prompts[name].values())} tokens, no room for a response in max_length {max_length}")
    judge_state = None
    if judge:
        path = Path(judge)
        judge_state = ("judge directory" if path.is_dir() and resolve_judge_dir(judge) is not None
                       else "not present yet (produced by an earlier stage)" if not path.exists() and "/" in judge
                       else "model spec")
    return {"recipe": recipe, "model": model, "tokenizer": {"source": source, "class": type(tokenizer).__name__,
                                                              "vocab": len(tokenizer)},
            "digit_token_ids": digit_token_ids(tokenizer), "judge": judge, "judge_state": judge_state,
            "judge_template": judge_template.name, "judge_prompt_tokens_first_row": prompts,
            "data": data_info, "stages": list(stages), "configs": [config_dict(c) for c in configs],
            "weights_loaded": False}


def print_plan(plan: dict) -> None:
    print(json.dumps(plan, indent=2, default=str))
