"""Best-of-n with the SELF-J judge: sample n responses per prompt, score them, keep the best.

Sharded across processes with accelerate; each prompt's n samples come from one ``generate`` call
seeded from (seed, prompt id) and are scored together, so the result does not depend on the number
of processes. Finished prompts are appended to per-process shards and skipped on resume; the final
``candidates.jsonl`` and ``model_outputs.json`` (AlpacaEval format) are written atomically.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import ConfigError
from ..core.generation import candidate_generator, generate_into_shard
from ..core.io import atomic_write_json, atomic_write_jsonl, ordered_shard_rows, start_sharded_run
from ..core.models import DEFAULT_POLICY, validate_model_spec
from ..data.prompts import load_prompts, prompt_content
from ..judge.directory import OWN_SAMPLES, default_judge_for, judge_identity, resolve_judge_dir, warn_if_outside_role
from ..judge.options import JudgeArgs
from ..judge.self_judge import SelfJudge, resolve_length_control
from .selective import DEFAULT_DECLINE_MESSAGE

RESULT_FIELDS = ("policy", "judge", "judge_template", "dataset", "dataset_split", "n", "max_new_tokens",
                 "temperature", "top_p", "seed", "use_reference", "max_judge_length", "dtype", "judge_dtype",
                 "judge_quantize",
                 "backend", "length_control")
# sampling temperature of n > 1 candidates when none is given (n = 1 is greedy)
SAMPLING_TEMPERATURE = 0.7


@dataclass
class BestOfNConfig(JudgeArgs):
    """Best-of-n generation and SELF-J reranking (the judge options are ``JudgeArgs``'s)."""

    policy: str = field(default=DEFAULT_POLICY, metadata={"help": "Policy: hub id, local directory or embedded alias."})
    dataset: str | None = field(default=None, metadata={
        "help": "Hub dataset id or local JSON/JSONL/parquet with an `instruction` field (AlpacaEval format works). "
                "Default: the bundled prompt set."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a hub dataset."})
    instruction_field: str = field(default="instruction", metadata={"help": "Column holding the instruction."})
    n: int = field(default=4, metadata={"help": "Candidates per prompt."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    max_new_tokens: int = field(default=256, metadata={"help": "Generation length cap per candidate."})
    temperature: float | None = field(default=None, metadata={
        "help": f"Sampling temperature (0 = greedy). Unset: {SAMPLING_TEMPERATURE} when n > 1, greedy when n = 1. "
                "n > 1 at temperature 0 is an error (n copies of one answer)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling threshold."})
    seed: int = field(default=42, metadata={"help": "Run seed; each prompt is seeded from (seed, prompt id)."})
    use_reference: bool = field(default=False, metadata={
        "help": "Judge with the with-reference template using the dataset's `reference` column."})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), float32, bfloat16."})
    judge_dtype: str | None = field(default=None, metadata={
        "help": "The judge's dtype, when it should differ from the policy's: float32 for evaluation and AlpacaEval "
                "submissions, whose picks must not depend on batching (docs/performance.md). Default: dtype."})
    backend: str = field(default="hf", metadata={
        "help": "Generation backend: hf (transformers generate, n samples of a prompt in one batch) or vllm "
                "(GPU; batches many prompts; extra `vllm`). The judge always runs in transformers."})
    vllm_chunk_prompts: int = field(default=64, metadata={
        "help": "vllm: prompts generated per call (rows are written after each chunk, so a kill loses at most one)."})
    vllm_gpu_memory_utilization: float = field(default=0.5, metadata={
        "help": "vllm: share of GPU memory vLLM may take (the rest holds the judge)."})
    judge_quantize: str | None = field(default=None, metadata={
        "help": "int8: int8 dynamic quantization of the judge on CPU: 1.37x faster, but it loses the ranking (Spearman "
                "with fp32 -0.01; evals/results/bench_cpu.md), so only for load tests. Default: full precision."})
    generator: str | None = field(default=None, metadata={
        "help": "Name written to AlpacaEval's `generator` field (default: derived from policy and n)."})
    abstain_below: float | None = field(default=None, metadata={
        "help": "Selective instruction following: when the chosen candidate scores below this, model_outputs.json "
                "gets decline_message instead (candidates.jsonl keeps the candidate and marks `answered`)."})
    decline_message: str = field(default=DEFAULT_DECLINE_MESSAGE, metadata={"help": "What a declined prompt outputs."})
    output_dir: str = field(default="runs/best_of_n", metadata={"help": "Where outputs and shards go."})

    def __post_init__(self):
        super().__post_init__()
        if self.judge_server_url:
            raise ConfigError("best-of-n scores in this process (each row keeps the judge's raw score and tokens); "
                              "unset judge_server_url")
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature is None:
            self.temperature = SAMPLING_TEMPERATURE if self.n > 1 else 0.0
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.n > 1 and self.temperature == 0:
            raise ConfigError(f"--n {self.n} with --temperature 0: greedy decoding gives {self.n} copies of one answer; "
                              "leave --temperature unset (or > 0) to sample, or use --n 1")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.backend not in ("hf", "vllm"):
            raise ConfigError(f"backend must be hf or vllm, got '{self.backend}'")
        if self.judge_quantize not in (None, "int8"):
            raise ConfigError(f"judge_quantize must be int8 or unset, got '{self.judge_quantize}'")

    def resolved_judge(self) -> str:
        return self.judge or default_judge_for(self.policy)

    def generator_name(self) -> str:
        return self.generator or f"{Path(self.policy).name}-selfj-best-of-{self.n}"


def _judged_row(judge, cfg: BestOfNConfig, prompt, candidates: list[dict]) -> dict:
    """Score one prompt's candidates (together, so the judge shares their prompt prefix) and pick the best."""
    refs = [prompt.reference] * cfg.n if cfg.use_reference else None
    details = judge.score_details([prompt.instruction] * cfg.n, [c["text"] for c in candidates], refs,
                                  batch_size=cfg.judge_forward_size)
    for candidate, detail in zip(candidates, details):
        candidate.update(score=detail.score, raw_score=detail.raw_score, probs=detail.probs,
                         digit_mass=detail.digit_mass, truncated=detail.truncated,
                         judge_tokens=detail.response_tokens)
    chosen = max(range(cfg.n), key=lambda i: (candidates[i]["score"], -i))  # first best on ties
    row = {"id": prompt.id, "instruction": prompt.instruction, "dataset": prompt.dataset,
           "candidates": candidates, "chosen": chosen, "chosen_score": candidates[chosen]["score"],
           "length_control": judge.length_control}
    if prompt.reference is not None:
        row["reference"] = prompt.reference
    if prompt.meta:
        row["meta"] = prompt.meta
    return row


def run_best_of_n(cfg: BestOfNConfig, accelerator=None, check_role: bool = True) -> dict | None:
    """Run (or resume) best-of-n; returns the summary on the main process, None elsewhere. ``check_role``: warn
    when the judge was not trained on ``cfg.policy``'s samples (a loop whose policy is trained off for rounds
    checks its starting policy instead)."""
    from accelerate import Accelerator

    accelerator = accelerator or Accelerator()
    out = Path(cfg.output_dir)
    prompts = load_prompts(cfg.dataset, split=cfg.dataset_split, instruction_field=cfg.instruction_field,
                           max_prompts=cfg.max_prompts)
    if cfg.use_reference and any(p.reference is None for p in prompts):
        missing = next(p.id for p in prompts if p.reference is None)
        raise ConfigError(f"use_reference is set but prompt '{missing}' has no 'reference' field")
    judge_spec = cfg.resolved_judge()
    validate_model_spec(cfg.policy)
    if resolve_judge_dir(judge_spec) is None:
        validate_model_spec(judge_spec)
    if check_role and accelerator.is_main_process:
        warn_if_outside_role(judge_spec, OWN_SAMPLES, cfg.policy, where="best-of-n")
    settings = {k: v for k, v in asdict(cfg).items() if k in RESULT_FIELDS} | {"judge": judge_spec}
    shard_dir, done, todo = start_sharded_run(accelerator, out, settings, prompts, lambda p: p.id, prompt_content,
                                              {"judge": judge_identity(judge_spec)["hash"]})
    start = time.perf_counter()
    with accelerator.split_between_processes(todo) as mine:
        if mine:
            with accelerator.main_process_first():  # the first load converts/caches the embedded GGUF
                generate, policy, tokenizer = candidate_generator(
                    cfg.policy, backend=cfg.backend, n=cfg.n, seed=cfg.seed, max_new_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature, top_p=cfg.top_p, dtype=cfg.dtype, device=str(accelerator.device),
                    gpu_memory_utilization=cfg.vllm_gpu_memory_utilization)
                judge_dtype = cfg.judge_dtype or cfg.dtype
                if judge_spec == cfg.policy and policy is not None and not cfg.judge_quantize and judge_dtype == cfg.dtype:
                    # self-judging shares the policy's weights
                    judge = SelfJudge(policy, tokenizer, cfg.judge_template or "selfj-chat", cfg.max_judge_length,
                                      base_model=cfg.policy,
                                      length_control=resolve_length_control(cfg.length_control, None, cfg.policy))
                else:
                    judge = SelfJudge.from_pretrained(judge_spec, template=cfg.judge_template, dtype=judge_dtype,
                                                      device=str(accelerator.device), max_length=cfg.max_judge_length,
                                                      quantize=cfg.judge_quantize, length_control=cfg.length_control)
            rank = accelerator.process_index
            generate_into_shard(shard_dir / f"part-{rank:03d}.jsonl", mine, generate,
                                cfg.vllm_chunk_prompts if cfg.backend == "vllm" else 1,
                                lambda prompt, candidates: _judged_row(judge, cfg, prompt, candidates),
                                desc=f"best-of-{cfg.n} [rank {rank}]", position=rank)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    ordered = ordered_shard_rows(shard_dir, [p.id for p in prompts])
    for row in ordered:  # abstention is applied here, so a changed threshold never needs resampling
        row["answered"] = cfg.abstain_below is None or row["chosen_score"] >= cfg.abstain_below
    atomic_write_jsonl(out / "candidates.jsonl", ordered)
    generator = cfg.generator_name()
    atomic_write_json(out / "model_outputs.json", [
        {"instruction": r["instruction"], "output": r["candidates"][r["chosen"]]["text"] if r["answered"]
         else cfg.decline_message, "generator": generator, "dataset": r["dataset"]} for r in ordered])
    summary = {"prompts": len(ordered), "resumed_prompts": len(done), "n": cfg.n, "policy": cfg.policy,
               "judge": judge_spec, "num_processes": accelerator.num_processes,
               "mean_chosen_score": sum(r["chosen_score"] for r in ordered) / len(ordered),
               "mean_candidate_score": sum(c["score"] for r in ordered for c in r["candidates"]) / (len(ordered) * cfg.n),
               "answered": sum(r["answered"] for r in ordered), "abstain_below": cfg.abstain_below,
               "length_control": ordered[0]["length_control"],
               "wall_s_this_run": round(time.perf_counter() - start, 2)}
    atomic_write_json(out / "summary.json", summary)
    return summary
