"""DPO preference pairs from judge-scored candidates.

Input rows are best-of-n ``candidates.jsonl`` rows (``instruction`` + ``candidates: [{text, score,
num_tokens}]``) or generic rows (``prompt`` as a string or a message list, ``completions`` as strings or
assistant message lists, ``scores``). Output rows follow TRL's DPO format (``prompt``, ``chosen``,
``rejected``; conversational when asked or when the prompt is a message list) plus ``score_chosen``,
``score_rejected`` and ``margin``.

Lengths are the candidate's ``num_tokens`` when present (best-of-n writes it) and whitespace words
otherwise.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, RecordError
from ..core.generation import prompt_seed
from ..core.io import require_finite
from ..data.datasets import iter_records

STRATEGIES = ("max_min", "max_random", "max_second", "length_aware", "max_below_sd")
OUTPUT_FORMATS = ("auto", "standard", "conversational")
DROP_REASONS = ("too_few_candidates", "identical_texts", "tie", "below_min_margin", "chosen_below_min_score",
                "length_ratio", "none_below_sd")


@dataclass
class PairConfig:
    """How to turn scored candidates into one (chosen, rejected) pair per prompt."""

    strategy: str = field(default="max_min", metadata={
        "help": "max_min: best vs worst; max_random: best vs a random other (seeded per prompt); max_second: best "
                "vs runner-up; length_aware: best vs worst by score minus length_penalty per 100 tokens; "
                "max_below_sd: best vs each candidate scoring at most the prompt's mean minus rejected_below_sd "
                "standard deviations, the highest-scoring of them first, up to max_pairs_per_prompt pairs (a clear "
                "but typical loser rather than the worst, whose fault is often only a broken answer)."})
    min_margin: float = field(default=0.0, metadata={
        "help": "Drop pairs whose margin (chosen minus rejected, by the strategy's score) is below this. "
                "Ties (margin 0) are always dropped."})
    max_length_ratio: float | None = field(default=None, metadata={
        "help": "Drop pairs where the longer answer is more than this many times the shorter (length hacking guard)."})
    min_chosen_score: float | None = field(default=None, metadata={
        "help": "Drop prompts whose best candidate scores below this."})
    length_penalty: float = field(default=0.0, metadata={
        "help": "length_aware only: subtracted from the score per 100 tokens of the candidate."})
    output_format: str = field(default="auto", metadata={
        "help": "auto: conversational when the prompt is a message list; standard: strings; conversational: "
                "message lists (DPOTrainer then applies the chat template)."})
    pair_seed: int = field(default=0, metadata={"help": "Seed of max_random (per prompt, independent of order)."})
    rejected_below_sd: float = field(default=1.0, metadata={
        "help": "max_below_sd only: a rejected answer scores at most the prompt's mean minus this many (population) "
                "standard deviations of its candidates' scores."})
    max_pairs_per_prompt: int = field(default=1, metadata={
        "help": "max_below_sd only: pairs per prompt at most (each with the prompt's best as chosen)."})

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got '{self.strategy}'")
        if self.output_format not in OUTPUT_FORMATS:
            raise ConfigError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got '{self.output_format}'")
        if not math.isfinite(self.min_margin) or self.min_margin < 0:
            raise ConfigError(f"min_margin must be a finite number >= 0, got {self.min_margin}")
        if self.max_length_ratio is not None and not (math.isfinite(self.max_length_ratio) and self.max_length_ratio >= 1):
            raise ConfigError(f"max_length_ratio must be >= 1, got {self.max_length_ratio}")
        if self.min_chosen_score is not None and not math.isfinite(self.min_chosen_score):
            raise ConfigError(f"min_chosen_score must be finite, got {self.min_chosen_score}")
        if not math.isfinite(self.length_penalty) or self.length_penalty < 0:
            raise ConfigError(f"length_penalty must be a finite number >= 0, got {self.length_penalty}")
        if self.length_penalty and self.strategy != "length_aware":
            raise ConfigError("length_penalty only applies to strategy length_aware")
        if self.max_pairs_per_prompt < 1 or not (math.isfinite(self.rejected_below_sd) and self.rejected_below_sd >= 0):
            raise ConfigError(f"max_pairs_per_prompt must be >= 1 and rejected_below_sd a finite number >= 0, got "
                              f"{self.max_pairs_per_prompt} and {self.rejected_below_sd}")
        if self.max_pairs_per_prompt > 1 and self.strategy != "max_below_sd":
            raise ConfigError("max_pairs_per_prompt > 1 only applies to strategy max_below_sd")


@dataclass
class ScoredCandidate:
    text: str
    score: float
    length: int
    finished: bool = True  # False when generation stopped at its token cap (best-of-n's ``finished``)


@dataclass
class ScoredPrompt:
    """One prompt and its judge-scored candidates; ``prompt`` is a string or a message list."""

    id: str
    prompt: str | list[dict]
    candidates: list[ScoredCandidate]
    extra: dict = field(default_factory=dict)


def _is_messages(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in value))


def _completion_text(value: Any, path, line, field_name: str) -> str:
    if isinstance(value, str):
        return value
    if _is_messages(value) and len(value) == 1 and value[0]["role"] == "assistant":
        return value[0]["content"]
    raise RecordError(path, line, field_name, "expected a string or a single assistant message list")


def _length(text: str, num_tokens: Any) -> int:
    if isinstance(num_tokens, int) and not isinstance(num_tokens, bool) and num_tokens >= 0:
        return num_tokens
    return len(text.split())


def parse_scored_row(row: dict, path, line: int) -> ScoredPrompt:
    """Validate one input row (best-of-n or generic format); errors name the file, line and field."""
    raw_id = row.get("id", f"{Path(str(path)).stem}:{line}")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or not str(raw_id).strip():
        raise RecordError(path, line, "id", f"expected a non-empty string or integer, got {raw_id!r}")
    if "candidates" in row:
        prompt = row.get("instruction", row.get("prompt"))
        if not (isinstance(prompt, str) and prompt.strip()) and not _is_messages(prompt):
            raise RecordError(path, line, "instruction", "expected a non-empty string (or `prompt` message list)")
        if not isinstance(row["candidates"], list):
            raise RecordError(path, line, "candidates", "expected a list")
        candidates = []
        for index, cand in enumerate(row["candidates"]):
            where = f"candidates[{index}]"
            if not isinstance(cand, dict):
                raise RecordError(path, line, where, "expected an object with `text` and `score`")
            if not isinstance(cand.get("text"), str):
                raise RecordError(path, line, f"{where}.text", "expected a string")
            if "score" not in cand:
                raise RecordError(path, line, f"{where}.score", "missing")
            score = require_finite(cand["score"], path, line, f"{where}.score")
            finished = cand.get("finished", True)
            if not isinstance(finished, bool):
                raise RecordError(path, line, f"{where}.finished", "expected true or false")
            candidates.append(ScoredCandidate(cand["text"], score, _length(cand["text"], cand.get("num_tokens")),
                                              finished))
    elif "completions" not in row:
        raise RecordError(path, line, "candidates", "missing: expected best-of-n `candidates`, or `prompt` + "
                                                    "`completions` + `scores`")
    else:
        prompt = row.get("prompt")
        if not (isinstance(prompt, str) and prompt.strip()) and not _is_messages(prompt):
            raise RecordError(path, line, "prompt", "expected a non-empty string or a message list")
        completions, scores = row.get("completions"), row.get("scores")
        if not isinstance(completions, list):
            raise RecordError(path, line, "completions", "expected a list (or use the best-of-n `candidates` format)")
        if not isinstance(scores, list) or len(scores) != len(completions):
            raise RecordError(path, line, "scores", f"expected a list of {len(completions)} numbers, one per completion")
        candidates = [ScoredCandidate(text := _completion_text(c, path, line, f"completions[{i}]"),
                                      require_finite(s, path, line, f"scores[{i}]"), _length(text, None))
                      for i, (c, s) in enumerate(zip(completions, scores))]
    extra = {k: row[k] for k in ("reference", "dataset", "length_control") if k in row}
    return ScoredPrompt(str(raw_id), prompt, candidates, extra)


def load_scored_prompts(path: str | Path) -> list[ScoredPrompt]:
    """Read and validate a JSONL/JSON file of scored candidates (ids must be unique)."""
    prompts, seen = [], {}
    for line, row in iter_records(path):
        item = parse_scored_row(row, path, line)
        if item.id in seen:
            raise RecordError(path, line, "id", f"duplicate id '{item.id}' (first seen on line {seen[item.id]})")
        seen[item.id] = line
        prompts.append(item)
    if not prompts:
        raise RecordError(path, None, None, "no scored prompts")
    return prompts


def _ranked(item: ScoredPrompt, cfg: PairConfig) -> list[tuple[float, int]]:
    """(strategy score, index) best first; ties keep the earlier candidate first."""
    penalty = cfg.length_penalty if cfg.strategy == "length_aware" else 0.0
    values = [(c.score - penalty * c.length / 100.0, i) for i, c in enumerate(item.candidates)]
    return sorted(values, key=lambda v: (-v[0], v[1]))


def select_pair(item: ScoredPrompt, cfg: PairConfig) -> tuple[int, int, float] | str:
    """(chosen index, rejected index, margin) for one prompt, or the reason it yields no pair (the first pair of
    ``select_pairs``)."""
    picked = select_pairs(item, cfg)
    return picked if isinstance(picked, str) else picked[0]


def select_pairs(item: ScoredPrompt, cfg: PairConfig) -> list[tuple[int, int, float]] | str:
    """The prompt's pairs, (chosen index, rejected index, margin) each, or the reason it yields none."""
    if len(item.candidates) < 2:
        return "too_few_candidates"
    ranked = _ranked(item, cfg)
    best_value, best = ranked[0]
    if cfg.strategy == "max_below_sd":
        values = [value for value, _ in ranked]
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        losers = [(value, index) for value, index in ranked[1:] if value <= mean - cfg.rejected_below_sd * sd]
        if not losers:
            return "none_below_sd"
        checked = [_checked_pair(item, cfg, best_value, best, value, index) for value, index in losers]
        kept = [pair for pair in checked if not isinstance(pair, str)][:cfg.max_pairs_per_prompt]
        return kept or checked[0]
    if cfg.strategy == "max_second":
        worst_value, worst = ranked[1]
    elif cfg.strategy == "max_random":
        worst_value, worst = random.Random(prompt_seed(cfg.pair_seed, item.id)).choice(ranked[1:])
    else:
        worst_value, worst = ranked[-1]
    picked = _checked_pair(item, cfg, best_value, best, worst_value, worst)
    return picked if isinstance(picked, str) else [picked]


def _checked_pair(item: ScoredPrompt, cfg: PairConfig, best_value: float, best: int, worst_value: float,
                  worst: int) -> tuple[int, int, float] | str:
    """The pair, or the reason the filters drop it."""
    chosen, rejected = item.candidates[best], item.candidates[worst]
    margin = best_value - worst_value
    if chosen.text.strip() == rejected.text.strip():
        return "identical_texts"
    if margin <= 0:
        return "tie"
    if margin < cfg.min_margin:
        return "below_min_margin"
    if cfg.min_chosen_score is not None and chosen.score < cfg.min_chosen_score:
        return "chosen_below_min_score"
    if cfg.max_length_ratio is not None:
        longer, shorter = max(chosen.length, rejected.length), min(chosen.length, rejected.length)
        if longer > cfg.max_length_ratio * max(shorter, 1):
            return "length_ratio"
    return best, worst, margin


def _as_format(item: ScoredPrompt, chosen: str, rejected: str, conversational: bool) -> dict:
    if not conversational:
        prompt = item.prompt if isinstance(item.prompt, str) else None
        if prompt is None:
            raise ConfigError(f"prompt '{item.id}' is a message list; use output_format auto or conversational")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    prompt = item.prompt if _is_messages(item.prompt) else [{"role": "user", "content": item.prompt}]
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def build_pairs(prompts: list[ScoredPrompt], cfg: PairConfig) -> tuple[list[dict], dict]:
    """DPO rows and a report: ``{"prompts", "pairs", "dropped": {reason: count}}`` (dropped counts prompts that
    yield no pair)."""
    rows, dropped = [], Counter()
    for item in prompts:
        picked = select_pairs(item, cfg)
        if isinstance(picked, str):
            dropped[picked] += 1
            continue
        conversational = cfg.output_format == "conversational" or (cfg.output_format == "auto"
                                                                   and _is_messages(item.prompt))
        for k, (best, worst, margin) in enumerate(picked):
            chosen, rejected = item.candidates[best], item.candidates[worst]
            # a prompt's second and later pairs get ids of their own (DPO reads pairs, not prompts)
            rows.append({"id": item.id if k == 0 else f"{item.id}#{k}",
                         **_as_format(item, chosen.text, rejected.text, conversational),
                         "score_chosen": chosen.score, "score_rejected": rejected.score, "margin": margin,
                         "length_chosen": chosen.length, "length_rejected": rejected.length, **item.extra})
    report = {"prompts": len(prompts), "pairs": len(rows),
              "dropped": {reason: dropped[reason] for reason in DROP_REASONS if dropped[reason]},
              "strategy": cfg.strategy,
              "length_control": sorted({str(item.extra["length_control"]) for item in prompts
                                        if "length_control" in item.extra}) or "not recorded"}
    return rows, report
