"""The first stage of the own-samples cycle: the policy's own answers to training prompts, n per prompt.

A judge that ranks what a policy writes is trained on what that policy writes (SELF-J samples the policy it turns
into a judge). This stage draws ``n`` answers per prompt at the sampling settings of the loops that will use the
judge, each prompt seeded from (seed, prompt id), so the samples do not depend on how many processes share the work.
Sharded with accelerate: each process appends finished prompts to its own shard, a rerun skips them, and the main
process writes the outputs atomically at the end:

* ``samples.jsonl``: one row per prompt (``id``, ``instruction``, ``reference``, ``meta``, ``policy``,
  ``candidates``: ``[{"text", "num_tokens", "finished"}]``, ``finished`` False when the answer was cut at
  ``max_new_tokens``);
* ``pool.jsonl``: one row per answer, the response-pool layout that ``recipes/label.py`` labels (``id`` is
  ``<prompt id>#<k>``, ``question_id`` the prompt, ``model`` the policy).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import ConfigError
from ..core.generation import BACKENDS, candidate_generator, generate_into_shard
from ..core.io import atomic_write_json, atomic_write_jsonl, ordered_shard_rows, start_sharded_run
from ..core.models import DEFAULT_POLICY, validate_model_spec
from ..data.prompts import load_prompts, prompt_content

# settings that decide what a row holds: pinned in run_config.json, so a resumed run never mixes two of them
PINNED_FIELDS = ("policy", "dataset", "dataset_split", "n", "max_new_tokens", "temperature", "top_p", "seed",
                 "dtype", "backend", "max_prompts", "prompts_per_batch")


@dataclass
class SampleConfig:
    """Which policy answers which prompts, how often and how."""

    policy: str = field(default=DEFAULT_POLICY, metadata={"help": "Policy: hub id, local directory or embedded alias."})
    dataset: str | None = field(default=None, metadata={
        "help": "Training prompts with references: a local JSON/JSONL/parquet file, a hub id or a preset spec "
                "(`selfj data prepare` writes rl_prompts/prompts_judge_train.jsonl). Never an evaluation set."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a hub dataset."})
    instruction_field: str = field(default="instruction", metadata={"help": "Column holding the instruction."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    n: int = field(default=8, metadata={"help": "Answers per prompt."})
    max_new_tokens: int = field(default=256, metadata={"help": "Token cap per answer (answers cut there are marked)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (> 0): the loops' setting."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling threshold."})
    seed: int = field(default=7, metadata={"help": "Run seed; each prompt is seeded from (seed, prompt id)."})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), float32, bfloat16."})
    backend: str = field(default="hf", metadata={
        "help": "hf (transformers generate, a prompt's n answers in one batch) or vllm (GPU, many prompts per call)."})
    prompts_per_batch: int = field(default=1, metadata={
        "help": "hf: prompts sampled in one generate call. 1: a prompt's n answers in one call, drawn from the seed "
                "of (seed, prompt id). More: every answer drawn with its own generator seeded from (seed, prompt id, "
                "index), so it does not depend on the batch's other prompts (up to padding's floating-point effect); "
                "4 decodes about twice as many tokens per second on a CPU."})
    vllm_chunk_prompts: int = field(default=64, metadata={
        "help": "vllm: prompts per call (rows are written after each call, so a kill loses at most one)."})
    vllm_gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vllm: share of GPU memory it may take."})
    output_dir: str = field(default="runs/own_samples", metadata={"help": "Where samples.jsonl, pool.jsonl go."})

    def __post_init__(self):
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0 (a judge learns to rank different answers), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.prompts_per_batch < 1:
            raise ConfigError(f"prompts_per_batch must be >= 1, got {self.prompts_per_batch}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got '{self.backend}'")


def pool_rows(samples: list[dict]) -> list[dict]:
    """One response-pool row per answer: the prompt is the answer group and the policy the answering model."""
    return [{"id": f"{s['id']}#{k}", "question_id": s["id"], "model": s["policy"], "instruction": s["instruction"],
             "response": c["text"], "reference": s["reference"], "finished": c["finished"],
             "num_tokens": c["num_tokens"]}
            for s in samples for k, c in enumerate(s["candidates"])]


def run_sampling(cfg: SampleConfig, accelerator=None) -> dict | None:
    """Sample (or resume sampling) every prompt; returns the summary on the main process, None elsewhere."""
    from accelerate import Accelerator

    accelerator = accelerator or Accelerator()
    validate_model_spec(cfg.policy)
    prompts = load_prompts(cfg.dataset, split=cfg.dataset_split, instruction_field=cfg.instruction_field,
                           max_prompts=cfg.max_prompts)
    missing = next((p for p in prompts if p.reference is None), None)
    if missing is not None:
        raise ConfigError(f"prompt '{missing.id}' of {cfg.dataset} has no reference: the teacher that labels these "
                          "samples needs one for every prompt")
    out = Path(cfg.output_dir)
    settings = {k: v for k, v in asdict(cfg).items() if k in PINNED_FIELDS}
    shard_dir, done, todo = start_sharded_run(accelerator, out, settings, prompts, lambda p: p.id, prompt_content)
    start = time.perf_counter()
    with accelerator.split_between_processes(todo) as mine:
        if mine:
            with accelerator.main_process_first():  # the first load converts/caches the embedded GGUF
                generate, _, _ = candidate_generator(
                    cfg.policy, backend=cfg.backend, n=cfg.n, seed=cfg.seed, max_new_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature, top_p=cfg.top_p, dtype=cfg.dtype, device=str(accelerator.device),
                    gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, batched=cfg.prompts_per_batch > 1)
            rank = accelerator.process_index
            generate_into_shard(shard_dir / f"part-{rank:03d}.jsonl", mine, generate,
                                cfg.vllm_chunk_prompts if cfg.backend == "vllm" else cfg.prompts_per_batch,
                                lambda prompt, candidates: {
                                    "id": prompt.id, "instruction": prompt.instruction, "reference": prompt.reference,
                                    "meta": prompt.meta, "policy": cfg.policy, "temperature": cfg.temperature,
                                    "candidates": candidates},
                                desc=f"sample {cfg.n} [rank {rank}]", position=rank)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    ordered = ordered_shard_rows(shard_dir, [p.id for p in prompts], "samples")
    atomic_write_jsonl(out / "samples.jsonl", ordered)
    pool = pool_rows(ordered)
    atomic_write_jsonl(out / "pool.jsonl", pool)
    summary = {"prompts": len(ordered), "answers": len(pool), "resumed_prompts": len(done), "n": cfg.n,
               "policy": cfg.policy, "num_processes": accelerator.num_processes,
               "finished_share": sum(r["finished"] for r in pool) / len(pool),
               "mean_tokens": sum(r["num_tokens"] for r in pool) / len(pool),
               "wall_s_this_run": round(time.perf_counter() - start, 2)}
    atomic_write_json(out / "summary.json", summary)
    return summary
