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

It costs two forwards of the full model over the (instruction and) answer head, beside the head's own forward.
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
from ..core.tensors import left_pad
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
    return tokenizer.encode(f"{text}\n\n" if text else "", add_special_tokens=False)


@torch.inference_mode()
def answer_log_probs(model, sequences: Sequence[list[int]], answer_lengths: Sequence[int],
                     pad_token_id: int) -> list[np.ndarray]:
    """Per sequence, the log-probabilities of its last ``answer_length`` tokens (one left-padded forward that keeps
    only the logits it needs)."""
    batch = {k: v.to(next(model.parameters()).device) for k, v in left_pad(sequences, pad_token_id).items()}
    keep = max(answer_lengths) + 1
    logits = model(**batch, use_cache=False, logits_to_keep=keep).logits.float()
    log_probs = torch.log_softmax(logits, dim=-1)
    out = []
    for row, length in enumerate(answer_lengths):
        if length == 0:
            out.append(np.zeros(0))
            continue
        targets = batch["input_ids"][row, -length:]
        predicted = log_probs[row, -length - 1:-1]  # the logits at position t predict token t + 1
        out.append(predicted.gather(1, targets[:, None])[:, 0].cpu().numpy().astype(np.float64))
    return out


def relevance_scores(model, tokenizer, instructions: Sequence[str], responses: Sequence[str], *,
                     max_tokens: int = 64, max_instruction_tokens: int = 256, batch_size: int = 8,
                     progress: bool = False, memo: dict | None = None) -> np.ndarray:
    """Each answer's relevance to its instruction (see the module docstring); 0 for an empty answer. ``memo`` keeps
    the values by (instruction, the answer's first tokens) across calls: an answer and the same answer with a note
    appended, scored in two calls, are computed once."""
    from tqdm.auto import tqdm

    if len(instructions) != len(responses):
        raise ValueError(f"{len(instructions)} instructions but {len(responses)} responses")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    empty_turn = turn_ids(tokenizer, "", max_instruction_tokens)
    answers = [tuple(tokenizer.encode(r, add_special_tokens=False)[:max_tokens]) for r in responses]
    # only the answer's first max_tokens tokens count: answers that share them (an answer and the same answer padded
    # or with a note appended) are computed once
    found: dict[tuple, float] = memo if memo is not None else {}
    unique = sorted({(instructions[i], answers[i]) for i in range(len(responses)) if answers[i]} - found.keys(),
                    key=lambda item: len(item[1]))
    for start in tqdm(range(0, len(unique), batch_size), desc="relevance", unit="batch", disable=not progress):
        chunk = unique[start:start + batch_size]
        sequences, lengths = [], []
        for instruction, answer in chunk:
            sequences += [turn_ids(tokenizer, instruction, max_instruction_tokens) + list(answer),
                          empty_turn + list(answer)]
            lengths += [len(answer)] * 2
        log_probs = answer_log_probs(model, sequences, lengths, pad)
        for k, item in enumerate(chunk):
            found[item] = float(np.mean(log_probs[2 * k] - log_probs[2 * k + 1]))
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

    todo = sorted({k: t for k, t in zip(keys, texts) if k not in known}.items())
    for start in tqdm(range(0, len(todo), flush_every), desc="relevance", unit="part", disable=not progress):
        chunk = todo[start:start + flush_every]
        values = relevance_scores(judge.model, judge.tokenizer, [t[0] for _, t in chunk], [t[1] for _, t in chunk],
                                  max_tokens=max_tokens, max_instruction_tokens=max_instruction_tokens)
        save_part(cache, "relevance", keys=np.array([k for k, _ in chunk]), values=values)
        known.update(zip([k for k, _ in chunk], values.tolist()))
    return np.array([known[k] for k in keys], dtype=np.float64)
