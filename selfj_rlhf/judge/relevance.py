"""How much an answer is about its instruction, read from the judge's own base model: the relevance gate.

A scalar head reads one position's hidden state, and from it a linear map tells an answer to another question
from an answer to this one only weakly: heads trained that way on the embedded policy's own samples score another
prompt's answer at or above an honest answer of the prompt in about a third of the out-of-fold pairs
(evals/results/own_samples_chain.md). The base model itself knows better. An answer's relevance is its pointwise mutual information with the instruction:

    relevance = mean over the answer's first max_tokens tokens of
                log p(token | chat turn holding the instruction) - log p(token | chat turn holding nothing)

An answer to another question is about as likely with or without this instruction (relevance near 0); an answer to
it is far more likely with it. The gate adds ``weight * min(relevance, cap)`` to the head's score: capped, so an
answer that copies the instruction back (the most "relevant" text of all) gains no more than a typical honest
answer does, and the head still has to score it. ``weight`` is learned with the head (one more input of its linear
map, ``selfj_rlhf.training.head_selection``), ``cap`` is a quantile of the training answers' relevance.

It costs one forward of the full model over each instruction's chat turn and the empty turn, and two over each
answer's head, beside the head's own forward.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.prefix_cache import broadcast_cache, cache_argument, continuation_batch, prefix_kv
from .features import save_part

KIND = "instruction_pmi"


@dataclass
class RelevanceGate:
    """``weight * min(relevance, cap)``, added to a scalar head's raw score (see the module docstring)."""

    weight: float
    cap: float
    max_tokens: int = 64
    max_instruction_tokens: int = 256

    def __post_init__(self):
        if self.max_tokens < 1 or self.max_instruction_tokens < 1:
            raise ConfigError(f"relevance max_tokens and max_instruction_tokens must be >= 1, got {self.max_tokens}, "
                              f"{self.max_instruction_tokens}")

    def apply(self, relevance) -> np.ndarray:
        return self.weight * np.minimum(np.asarray(relevance, dtype=np.float64), self.cap)

    def to_dict(self) -> dict:
        return {"kind": KIND, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "RelevanceGate":
        if data.get("kind") != KIND:
            raise ConfigError(f"unknown relevance kind {data.get('kind')!r}")
        return cls(weight=float(data["weight"]), cap=float(data["cap"]), max_tokens=int(data["max_tokens"]),
                   max_instruction_tokens=int(data["max_instruction_tokens"]))


def turn_ids(tokenizer, instruction: str, max_instruction_tokens: int) -> list[int]:
    """Token ids of a user turn holding ``instruction`` (cut to its first ``max_instruction_tokens`` tokens) and the
    opening of the answer: the tokenizer's chat template, or ``instruction`` and a blank line without one."""
    ids = tokenizer.encode(instruction, add_special_tokens=False)[:max_instruction_tokens]
    text = tokenizer.decode(ids)
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        return tokenizer.encode(rendered, add_special_tokens=False)
    return tokenizer.encode(f"{text}\n\n", add_special_tokens=False)  # never empty: the answer needs a prefix


@torch.inference_mode()
def answer_log_probs(model, prefix: list[int], answers: Sequence[list[int]], pad_token_id: int,
                     batch_size: int = 8) -> list[np.ndarray]:
    """Per answer, the log-probabilities of its tokens after ``prefix`` (non-empty): the prefix runs once, and
    left-padded batches of answers read its KV cache (``selfj_rlhf.core.prefix_cache``), keeping only the logits
    they need."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    config = getattr(model, "config", None)
    argument = cache_argument(model)
    cache = DynamicCache(config=config)
    ids = torch.tensor([prefix], device=device)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1,
                   **{argument: cache}).logits
    first = torch.log_softmax(logits[0, -1].float(), dim=-1)  # predicts every answer's first token
    kv = prefix_kv(cache)
    out: list[np.ndarray] = [np.zeros(0)] * len(answers)
    order = sorted((i for i in range(len(answers)) if answers[i]), key=lambda i: len(answers[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = continuation_batch([list(answers[i]) for i in chunk], pad_token_id, len(prefix), device)
        keep = max(len(answers[i]) for i in chunk)
        log_probs = torch.log_softmax(model(**batch, use_cache=True, logits_to_keep=keep,
                                            **{argument: broadcast_cache(kv, len(chunk), config)}).logits.float(), -1)
        for row, i in enumerate(chunk):
            targets = torch.tensor(answers[i], device=device)
            # the logits at position t predict token t + 1; the prefix's last position predicts the first
            rest = log_probs[row, keep - len(targets):keep - 1].gather(1, targets[1:, None])[:, 0]
            out[i] = torch.cat([first[targets[:1]], rest]).cpu().numpy().astype(np.float64)
    return out


def relevance_scores(model, tokenizer, instructions: Sequence[str], responses: Sequence[str], *,
                     max_tokens: int = 64, max_instruction_tokens: int = 256, batch_size: int = 8,
                     progress: bool = False, memo: dict | None = None) -> np.ndarray:
    """Each answer's relevance to its instruction (see the module docstring); 0 for an empty answer. Each
    instruction's chat turn runs once for all its answers, and the empty turn once for all answers. ``memo`` keeps
    the values by (instruction, the answer's first tokens) across calls: an answer and the same answer with a note
    appended, scored in two calls, are computed once."""
    from tqdm.auto import tqdm

    if len(instructions) != len(responses):
        raise ValueError(f"{len(instructions)} instructions but {len(responses)} responses")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    answers = [tuple(tokenizer.encode(r, add_special_tokens=False)[:max_tokens]) for r in responses]
    # only the answer's first max_tokens tokens count: answers that share them (an answer and the same answer padded
    # or with a note appended) are computed once
    found: dict[tuple, float] = memo if memo is not None else {}
    by_instruction: dict[str, set[tuple]] = {}
    for instruction, answer in zip(instructions, answers):
        if answer and (instruction, answer) not in found:
            by_instruction.setdefault(instruction, set()).add(answer)
    if by_instruction:
        unconditional = sorted(set().union(*by_instruction.values()))
        without = answer_log_probs(model, turn_ids(tokenizer, "", max_instruction_tokens), unconditional, pad,
                                   batch_size)
        mean_without = {answer: float(np.mean(values)) for answer, values in zip(unconditional, without)}
        for instruction in tqdm(sorted(by_instruction), desc="relevance", unit="prompt", disable=not progress):
            group = sorted(by_instruction[instruction])
            with_instruction = answer_log_probs(model, turn_ids(tokenizer, instruction, max_instruction_tokens),
                                                group, pad, batch_size)
            for answer, values in zip(group, with_instruction):
                found[(instruction, answer)] = float(np.mean(values)) - mean_without[answer]
    return np.array([found.get((instructions[i], answers[i]), 0.0) for i in range(len(responses))])


def relevance_key(base_model: str, max_tokens: int, max_instruction_tokens: int, instruction: str,
                  response: str) -> str:
    payload = json.dumps([KIND, base_model, max_tokens, max_instruction_tokens, instruction, response],
                         ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def cached_relevance(judge, instructions: Sequence[str], responses: Sequence[str], cache: str | Path, *,
                     max_tokens: int = 64, max_instruction_tokens: int = 256, flush_every: int = 64,
                     progress: bool = True) -> np.ndarray:
    """``relevance_scores`` of the judge's base model on its cleaned texts, kept in ``cache`` (a directory of
    ``relevance-NNNNN.npz`` parts, each written atomically): a killed run keeps its finished parts, a rerun
    computes only what is missing."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    known: dict[str, float] = {}
    for part in sorted(cache.glob("relevance-*.npz")):
        with np.load(part) as data:
            known.update(zip(data["keys"].tolist(), data["values"].tolist()))
    texts = [(judge.clean(i), judge.clean(r)) for i, r in zip(instructions, responses)]
    keys = [relevance_key(judge.base_model, max_tokens, max_instruction_tokens, *t) for t in texts]
    from tqdm.auto import tqdm

    # by instruction, so that a part holds whole prompts and each prompt's turn runs once (relevance_scores)
    todo = sorted({k: t for k, t in zip(keys, texts) if k not in known}.items(), key=lambda item: (item[1][0], item[0]))
    for start in tqdm(range(0, len(todo), flush_every), desc="relevance", unit="part", disable=not progress):
        chunk = todo[start:start + flush_every]
        values = relevance_scores(judge.model, judge.tokenizer, [t[0] for _, t in chunk], [t[1] for _, t in chunk],
                                  max_tokens=max_tokens, max_instruction_tokens=max_instruction_tokens)
        save_part(cache, "relevance", keys=np.array([k for k, _ in chunk]), values=values)
        known.update(zip([k for k, _ in chunk], values.tolist()))
    return np.array([known[k] for k in keys], dtype=np.float64)
