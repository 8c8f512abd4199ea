"""Round-based policy improvement with the SELF-J judge: rejection-sampling fine-tuning and iterative DPO.

Each round lives in ``<output_dir>/round-<k>/`` and runs stages whose outputs mark them done:

1. ``best_of_n/``: the current policy samples ``n`` candidates per prompt and the judge scores them
   (sharded and resumable, see :mod:`selfj_rlhf.rlhf.best_of_n`);
2. ``sft_data.jsonl`` (rejection sampling) or ``pairs.jsonl`` (DPO), written atomically;
3. ``trainer/``: TRL's SFTTrainer or DPOTrainer, resuming from its newest checkpoint;
4. ``policy/``: the trained policy (LoRA merged), renamed into place with ``round.json`` in it, so a
   directory named ``policy`` is always complete. It is the next round's policy.

A killed run restarted with the same command skips every finished stage. The judge is fixed for
all rounds (by default the shipped judge of the starting policy, else the starting policy itself), so
later rounds are not judged by the model being trained.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core.errors import ConfigError
from ..core.generation import prompt_seed
from ..core.io import atomic_write_json, atomic_write_jsonl, last_complete_checkpoint
from ..core.models import load_causal_lm, load_tokenizer, validate_model_spec
from ..data.datasets import iter_records
from ..judge.directory import OWN_SAMPLES, default_judge_for, warn_if_outside_role
from ..judge.options import JudgeArgs, deprecated, rename_deprecated
from .best_of_n import BestOfNConfig, run_best_of_n
from .pairs import PairConfig, ScoredPrompt, build_pairs, load_scored_prompts


@dataclass
class LoopConfig(JudgeArgs):
    """Sampling and judging in every round (the judge, fixed for all rounds, and its options are ``JudgeArgs``'s;
    the policy is ``--model_name_or_path`` of TRL's ModelConfig, the seed and output directory are the training
    arguments')."""

    dataset: str | None = field(default=None, metadata={
        "help": "Prompts: local JSON/JSONL/parquet or hub dataset with an `instruction` column (default: bundled)."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a hub dataset."})
    instruction_field: str = field(default="instruction", metadata={"help": "Column holding the instruction."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    n: int = field(default=4, metadata={"help": "Candidates per prompt per round."})
    max_new_tokens: int = field(default=256, metadata={"help": "Generation cap per candidate."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature of the candidates."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus threshold of the candidates."})
    rounds: int = field(default=1, metadata={"help": "Rounds of generate -> score -> select -> train."})
    sampling_temperature: float | None = deprecated("temperature")
    sampling_top_p: float | None = deprecated("top_p")

    def __post_init__(self):
        rename_deprecated(self, {"sampling_temperature": "temperature", "sampling_top_p": "top_p"})
        super().__post_init__()
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if self.n < 2:
            raise ConfigError(f"n must be >= 2 to select among candidates, got {self.n}")


PICKS = ("highest_score", "random", "shortest")


@dataclass
class RejectionSamplingConfig(LoopConfig):
    """Rejection-sampling fine-tuning: SFT on the judge's best candidate per prompt (or, as a control, on a random
    or the shortest candidate)."""

    score_threshold: float | None = field(default=None, metadata={
        "help": "Keep a prompt's picked candidate only when its score is at least this (0-9)."})
    pick: str = field(default="highest_score", metadata={
        "help": "Which candidate of a prompt SFT trains on: highest_score (the judge's pick: rejection sampling), or "
                "the controls random (seeded by pick_seed and the prompt id) and shortest (fewest tokens; first on "
                "ties)."})
    pick_seed: int | None = field(default=None, metadata={
        "help": "Seed of the random pick (plus the round index); unset: the run seed. Apart from it so that arms "
                "compared with each other can share the training seed."})
    drop_unfinished: bool = field(default=False, metadata={
        "help": "Drop candidates cut at max_new_tokens (best-of-n's `finished` false) before the pick; a prompt "
                "with none left trains nothing."})
    candidates_file: str | None = field(default=None, metadata={
        "help": "Round 0 picks from these scored candidates (best-of-n candidates.jsonl, or prompt + completions + "
                "scores rows) instead of sampling: answers drawn once, or scored by another scorer such as a "
                "teacher's labels, reused across arms."})

    def __post_init__(self):
        super().__post_init__()
        if self.pick not in PICKS:
            raise ConfigError(f"pick must be one of {PICKS}, got '{self.pick}'")


@dataclass
class DPOLoopConfig(LoopConfig):
    """Iterative DPO on judge-built pairs (pair options are PairConfig's)."""

    pairs_file: str | None = field(default=None, metadata={
        "help": "Train round 0 on these built pairs (recipes/build_pairs.py output) instead of generating."})


def round_dir(output_dir: str | Path, index: int) -> Path:
    return Path(output_dir) / f"round-{index:02d}"


def finished_policy(directory: Path) -> bool:
    return (directory / "policy" / "round.json").is_file()


def _judge_for(cfg: LoopConfig, policy: str) -> str:
    return cfg.judge or default_judge_for(policy)


def _sample_and_score(cfg: LoopConfig, policy: str, judge: str, directory: Path, seed: int, state) -> Path:
    """Stage 1: best-of-n candidates of the current policy, scored by the fixed judge."""
    out = directory / "best_of_n"
    if (out / "summary.json").is_file():
        state.print(f"[{directory.name}] best-of-n: done, skipped")
    else:
        run_best_of_n(BestOfNConfig(policy=policy, judge=judge, judge_template=cfg.judge_template,
                                    dataset=cfg.dataset, dataset_split=cfg.dataset_split,
                                    instruction_field=cfg.instruction_field, n=cfg.n, max_prompts=cfg.max_prompts,
                                    max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                    top_p=cfg.top_p, seed=seed, judge_batch_size=cfg.judge_batch_size,
                                    max_judge_length=cfg.max_judge_length, length_control=cfg.length_control,
                                    output_dir=str(out)), accelerator=state, check_role=False)
    state.wait_for_everyone()
    return out / "candidates.jsonl"


def _conversational(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def pick_candidate(item: ScoredPrompt, pick: str, drop_unfinished: bool, seed: int) -> int | None:
    """The index of the candidate ``pick`` chooses among ``item``'s (finished ones only with ``drop_unfinished``;
    None when none is left): highest_score first on ties, shortest first on ties, random seeded by (seed, id)."""
    eligible = [i for i, c in enumerate(item.candidates) if c.finished or not drop_unfinished]
    if not eligible:
        return None
    if pick == "random":
        return random.Random(prompt_seed(seed, item.id)).choice(eligible)
    if pick == "shortest":
        return min(eligible, key=lambda i: (item.candidates[i].length, i))
    return max(eligible, key=lambda i: (item.candidates[i].score, -i))


def select_sft_rows(candidates_path: Path, threshold: float | None, conversational: bool, pick: str = "highest_score",
                    drop_unfinished: bool = False, seed: int = 0) -> tuple[list[dict], dict]:
    """Each prompt's picked candidate (``pick_candidate``) when it clears ``threshold``, in SFT format."""
    rows, report = [], {"prompts": 0, "kept": 0, "below_threshold": 0, "empty": 0, "none_finished": 0, "pick": pick,
                        "dropped_unfinished": 0}
    for item in load_scored_prompts(candidates_path):
        report["prompts"] += 1
        if drop_unfinished:
            report["dropped_unfinished"] += sum(not c.finished for c in item.candidates)
        best = pick_candidate(item, pick, drop_unfinished, seed)
        if best is None:
            report["none_finished"] += 1
            continue
        chosen = item.candidates[best]
        if not chosen.text.strip():
            report["empty"] += 1
            continue
        if threshold is not None and chosen.score < threshold:
            report["below_threshold"] += 1
            continue
        prompt = item.prompt if isinstance(item.prompt, str) else item.prompt[-1]["content"]
        if conversational:
            rows.append({"id": item.id, "messages": [{"role": "user", "content": prompt},
                                                     {"role": "assistant", "content": chosen.text}],
                         "score": chosen.score})
        else:
            rows.append({"id": item.id, "prompt": prompt, "completion": chosen.text, "score": chosen.score})
    report["kept"] = len(rows)
    return rows, report


def _read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in iter_records(path)]


def training_args_in(training_args, directory: Path):
    args = copy.deepcopy(training_args)
    args.output_dir = str(directory / "trainer")
    return args


def load_policy_for_training(policy: str, model_args):
    dtype = model_args.dtype if model_args.dtype not in (None, "auto") else "float32"
    return load_causal_lm(policy, dtype=dtype, device="cpu")  # the trainer places it


def _has_weights(checkpoint: str, model_args) -> bool:
    name = "adapter_model.safetensors" if model_args.use_peft else "model.safetensors"
    return (Path(checkpoint) / name).is_file()


def train_and_publish(trainer, policy: str, model_args, directory: Path, info: dict) -> Path:
    """Train (resuming), then publish the merged policy as ``directory/policy`` with ``round.json``."""
    if trainer.is_world_process_zero():
        last_complete_checkpoint(trainer.args.output_dir)  # removes checkpoints a kill left half-written
    trainer.accelerator.wait_for_everyone()
    checkpoint = last_complete_checkpoint(trainer.args.output_dir)
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text()) if checkpoint else {}
    if state.get("max_steps") and state["global_step"] >= state["max_steps"] and _has_weights(checkpoint, model_args):
        # training had finished when the run was killed; resuming would run one extra step (the Trainer skips
        # the batches already seen, then steps once more before it checks max_steps)
        final, steps, history, seconds = Path(checkpoint), state["global_step"], state["log_history"], None
    else:
        if checkpoint and trainer.is_world_process_zero():
            print(f"[{directory.name}] training: resuming from {checkpoint}")
        result = trainer.train(resume_from_checkpoint=checkpoint)
        final = Path(trainer.args.output_dir) / "final"
        trainer.save_model(str(final))  # gathers ZeRO-3 shards; an adapter only when LoRA is on
        steps, history, seconds = trainer.state.global_step, trainer.state.log_history, result.metrics.get("train_runtime")
    target = directory / "policy"
    if trainer.is_world_process_zero():
        staging = directory / ".policy.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        if model_args.use_peft:
            from peft import PeftModel

            base, _ = load_policy_for_training(policy, model_args)
            PeftModel.from_pretrained(base, str(final)).merge_and_unload().save_pretrained(staging)
        else:
            shutil.copytree(final, staging, ignore=shutil.ignore_patterns(  # the weights, not a checkpoint's state
                "optimizer.pt", "scheduler.pt", "rng_state*.pth", "trainer_state.json", "training_args.bin",
                "global_step*"))
        load_tokenizer(policy).save_pretrained(staging)
        losses = [h["loss"] for h in history if "loss" in h]
        atomic_write_json(staging / "round.json", {**info, "trained_from": policy, "steps": steps,
                                                   "first_loss": losses[0] if losses else None,
                                                   "last_loss": losses[-1] if losses else None,
                                                   "training_s": seconds,
                                                   # the trainer's logged steps: the training curve of this round
                                                   "log_history": history})
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    trainer.accelerator.wait_for_everyone()
    return target


def _prepare(cfg: LoopConfig, training_args, model_args):
    from accelerate import PartialState

    if not model_args.model_name_or_path:
        raise ConfigError("set the starting policy with --model_name_or_path (hub id, directory or embedded alias)")
    validate_model_spec(model_args.model_name_or_path)
    judge = _judge_for(cfg, model_args.model_name_or_path)
    state = PartialState()
    if state.is_main_process:  # the rounds' later policies descend from the starting one, which the judge must fit
        warn_if_outside_role(judge, OWN_SAMPLES, model_args.model_name_or_path, where="rounds")
    return state, judge


def _summary_row(index: int, directory: Path, stage_report: dict) -> dict:
    candidates = directory / "best_of_n" / "summary.json"
    bon = json.loads(candidates.read_text()) if candidates.is_file() else {}
    info = json.loads((directory / "policy" / "round.json").read_text())
    return {"round": index, "mean_candidate_score": bon.get("mean_candidate_score"),
            "mean_chosen_score": bon.get("mean_chosen_score"), **stage_report,
            "steps": info["steps"], "first_loss": info["first_loss"], "last_loss": info["last_loss"],
            "sampling_s": bon.get("wall_s_this_run"), "training_s": info.get("training_s")}


def _run_rounds(cfg: LoopConfig, training_args, model_args, recipe: str, write_round_data, make_trainer,
                report_name: str) -> Path:
    """The round skeleton shared by the recipes: (main process) write the round's training data unless it
    exists, load the current policy, train, publish; record one summary row per round."""
    state, judge = _prepare(cfg, training_args, model_args)
    policy, history = model_args.model_name_or_path, []
    for index in range(cfg.rounds):
        directory = round_dir(training_args.output_dir, index)
        if finished_policy(directory):
            state.print(f"[{directory.name}] policy: done, skipped")
        else:
            data_path = write_round_data(index, directory, policy, judge, state)
            state.wait_for_everyone()
            model, tokenizer = load_policy_for_training(policy, model_args)
            trainer = make_trainer(model, tokenizer, training_args_in(training_args, directory), _read_jsonl(data_path))
            train_and_publish(trainer, policy, model_args, directory, {"recipe": recipe, "round": index, "judge": judge})
            del trainer, model
        history.append(_summary_row(index, directory, json.loads((directory / report_name).read_text())))
        policy = str(directory / "policy")
    if state.is_main_process:
        atomic_write_json(Path(training_args.output_dir) / "rounds.json", history)
    return Path(policy)


def run_rejection_sampling(cfg: RejectionSamplingConfig, training_args, model_args) -> Path:
    """Rounds of best-of-n -> keep the best candidate -> SFT; returns the final policy directory."""
    from datasets import Dataset
    from trl import SFTTrainer, get_peft_config

    # checked when the run starts, not when the config is parsed: a recipe config may name an earlier stage's output
    if cfg.candidates_file and not Path(cfg.candidates_file).is_file():
        raise ConfigError(f"candidates_file {cfg.candidates_file} does not exist")

    def write_round_data(index, directory, policy, judge, state) -> Path:
        seed = training_args.seed + index
        if index == 0 and cfg.candidates_file:
            candidates = Path(cfg.candidates_file)
        else:
            candidates = _sample_and_score(cfg, policy, judge, directory, seed, state)
        pick_seed = (training_args.seed if cfg.pick_seed is None else cfg.pick_seed) + index
        data_path = directory / "sft_data.jsonl"
        if state.is_main_process and not data_path.is_file():
            rows, report = select_sft_rows(candidates, cfg.score_threshold, _conversational(load_tokenizer(policy)),
                                           cfg.pick, cfg.drop_unfinished, pick_seed)
            if not rows:
                raise ConfigError(f"round {index}: no candidate was kept ({report}); lower score_threshold "
                                  f"({cfg.score_threshold}) or keep unfinished candidates")
            atomic_write_json(directory / "sft_report.json", {**report, "candidates": str(candidates)})
            atomic_write_jsonl(data_path, rows)
        return data_path

    def make_trainer(model, tokenizer, args, rows):
        columns = ("messages", "prompt", "completion")
        dataset = Dataset.from_list([{k: v for k, v in r.items() if k in columns} for r in rows])
        return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=get_peft_config(model_args))

    return _run_rounds(cfg, training_args, model_args, "rejection_sampling", write_round_data, make_trainer,
                       "sft_report.json")


def run_dpo_loop(cfg: DPOLoopConfig, pair_cfg: PairConfig, training_args, model_args) -> Path:
    """Rounds of best-of-n -> judge-built pairs -> DPO; returns the final policy directory."""
    from datasets import Dataset
    from trl import DPOTrainer, get_peft_config

    if cfg.pairs_file and not Path(cfg.pairs_file).is_file():
        raise ConfigError(f"pairs_file {cfg.pairs_file} does not exist")

    def write_round_data(index, directory, policy, judge, state) -> Path:
        if index == 0 and cfg.pairs_file:
            if state.is_main_process:
                pairs = sum(1 for _ in iter_records(cfg.pairs_file))
                atomic_write_json(directory / "pairs_report.json", {"pairs_file": cfg.pairs_file, "pairs": pairs})
            return Path(cfg.pairs_file)
        candidates = _sample_and_score(cfg, policy, judge, directory, training_args.seed + index, state)
        pairs_path = directory / "pairs.jsonl"
        if state.is_main_process and not pairs_path.is_file():
            round_cfg = pair_cfg
            if pair_cfg.output_format == "auto" and _conversational(load_tokenizer(policy)):
                round_cfg = replace(pair_cfg, output_format="conversational")
            rows, report = build_pairs(load_scored_prompts(candidates), round_cfg)
            if not rows:
                raise ConfigError(f"round {index}: no pairs survived the filters ({report})")
            atomic_write_json(directory / "pairs_report.json", report)
            atomic_write_jsonl(pairs_path, rows)
        return pairs_path

    def make_trainer(model, tokenizer, args, rows):
        dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
        return DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=get_peft_config(model_args))

    return _run_rounds(cfg, training_args, model_args, "dpo", write_round_data, make_trainer, "pairs_report.json")
