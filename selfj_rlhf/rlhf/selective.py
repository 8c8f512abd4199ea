"""Selective instruction following: answer only when the judge predicts good quality.

Metrics follow the selective-prediction literature (Geifman & El-Yaniv 2017; Ding et al. 2020 for the
excess AURC). Items are ranked by judge score, most confident first; the risk at coverage k/n is the mean
loss of the k most confident items. Items with tied scores cannot be separated by any threshold, so the
curve is the expectation over random orderings of each tie group: inside a group every item counts with
the group's mean loss. Losses are in [0, 1]: 1 - correctness, ``grade < cut``, or a wrong pairwise pick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..core.errors import ConfigError
from ..core.generation import generate_candidates

DEFAULT_DECLINE_MESSAGE = ("I'm not confident I can answer this well, so I'd rather not guess. "
                           "Could you rephrase or give more detail?")


def _arrays(scores: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    s, l = np.asarray(scores, dtype=float), np.asarray(losses, dtype=float)
    if s.ndim != 1 or s.shape != l.shape or s.size == 0:
        raise ValueError(f"scores and losses must be non-empty 1-D sequences of one length, got {s.shape} and {l.shape}")
    if not (np.isfinite(s).all() and np.isfinite(l).all()):
        raise ValueError("scores and losses must be finite")
    if (l < 0).any() or (l > 1).any():
        raise ValueError("losses must lie in [0, 1]")
    return s, l


def risk_coverage_curve(scores: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(coverage, risk)`` at coverage k/n for k = 1..n, ties averaged (see the module docstring)."""
    s, l = _arrays(scores, losses)
    order = np.argsort(-s, kind="stable")
    s, l = s[order], l[order]
    _, starts, counts = np.unique(-s, return_index=True, return_counts=True)
    expected = l.copy()
    for start, count in zip(starts, counts):
        expected[start:start + count] = l[start:start + count].mean()
    k = np.arange(1, s.size + 1)
    return k / s.size, np.cumsum(expected) / k


def aurc(scores: Sequence[float], losses: Sequence[float]) -> float:
    """Area under the risk-coverage curve: the mean of the risks at coverage 1/n, 2/n, ..., 1."""
    return float(risk_coverage_curve(scores, losses)[1].mean())


def oracle_aurc(losses: Sequence[float]) -> float:
    """The AURC of a perfect ranking (lowest losses first)."""
    l = np.asarray(losses, dtype=float)
    return aurc(-l, l)


def excess_aurc(scores: Sequence[float], losses: Sequence[float]) -> float:
    """AURC minus the oracle's: 0 for a perfect ranking, whatever the base risk."""
    return aurc(scores, losses) - oracle_aurc(losses)


def selective_risk_at_coverage(scores: Sequence[float], losses: Sequence[float], coverage: float) -> float:
    """Risk of the ceil(coverage * n) most confident items."""
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    cov, risk = risk_coverage_curve(scores, losses)
    return float(risk[max(1, math.ceil(coverage * cov.size - 1e-9)) - 1])


def coverage_at_risk(scores: Sequence[float], losses: Sequence[float], target_risk: float) -> float:
    """The largest coverage whose risk is at most ``target_risk`` (0.0 when even the top item is riskier)."""
    cov, risk = risk_coverage_curve(scores, losses)
    ok = np.nonzero(risk <= target_risk + 1e-12)[0]
    return float(cov[ok[-1]]) if ok.size else 0.0


@dataclass
class AbstentionThreshold:
    """Answer when ``score >= threshold``; coverage and risk are those measured where it was chosen."""

    threshold: float
    coverage: float
    risk: float
    target: dict = field(default_factory=dict)


def apply_threshold(scores: Sequence[float], losses: Sequence[float], threshold: float) -> dict:
    """Coverage and risk of answering exactly the items with ``score >= threshold`` (risk NaN-free:
    0.0 when nothing is answered)."""
    s, l = _arrays(scores, losses)
    answered = s >= threshold
    return {"coverage": float(answered.mean()), "risk": float(l[answered].mean()) if answered.any() else 0.0,
            "answered": int(answered.sum()), "items": int(s.size)}


def choose_threshold(scores: Sequence[float], losses: Sequence[float], *, target_coverage: float | None = None,
                     target_risk: float | None = None) -> AbstentionThreshold:
    """Pick the abstention threshold on a calibration split. Only thresholds at observed scores are
    realisable (a tie group is answered or declined as a whole).

    ``target_coverage``: the highest threshold that still answers at least that fraction.
    ``target_risk``: the lowest threshold (most coverage) whose risk is at most the target; if none
    qualifies, the highest score (answer only the most confident group) is returned.
    """
    if (target_coverage is None) == (target_risk is None):
        raise ConfigError("give exactly one of target_coverage and target_risk")
    s, l = _arrays(scores, losses)
    candidates = np.unique(s)[::-1]  # descending: coverage grows along the list
    stats = [apply_threshold(s, l, t) for t in candidates]
    if target_coverage is not None:
        if not 0 < target_coverage <= 1:
            raise ConfigError(f"target_coverage must be in (0, 1], got {target_coverage}")
        index = next(i for i, st in enumerate(stats) if st["coverage"] >= target_coverage - 1e-12)
        target = {"coverage": target_coverage}
    else:
        if not 0 <= target_risk <= 1:
            raise ConfigError(f"target_risk must be in [0, 1], got {target_risk}")
        ok = [i for i, st in enumerate(stats) if st["risk"] <= target_risk + 1e-12]
        index = ok[-1] if ok else 0
        target = {"risk": target_risk}
    return AbstentionThreshold(float(candidates[index]), stats[index]["coverage"], stats[index]["risk"], target)


def selective_report(scores: Sequence[float], losses: Sequence[float],
                     coverages: Sequence[float] = (0.5, 0.8), target_risks: Sequence[float] = ()) -> dict:
    """AURC, excess AURC, risks at the given coverages and coverages at the given risks."""
    _, risk = risk_coverage_curve(scores, losses)
    return {"items": len(risk), "base_risk": float(risk[-1]), "aurc": aurc(scores, losses),
            "oracle_aurc": oracle_aurc(losses), "excess_aurc": excess_aurc(scores, losses),
            **{f"risk@{c:g}": selective_risk_at_coverage(scores, losses, c) for c in coverages},
            **{f"coverage@risk{r:g}": coverage_at_risk(scores, losses, r) for r in target_risks}}


class SelectiveResponder:
    """Generate with a policy, score with a SELF-J judge, and decline when the score is below a threshold.

    ``respond(instruction)`` returns ``{"output", "answered", "score", "candidate"}``: ``candidate`` is the
    generated text (kept even when declined, for auditing) and ``output`` is what the user sees. The default
    answer is greedy; with ``n > 1`` (and a temperature) the best of n samples is the one considered.
    """

    def __init__(self, policy, tokenizer, judge, threshold: float, *, decline_message: str = DEFAULT_DECLINE_MESSAGE,
                 n: int = 1, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 0.95, seed: int = 0):
        if n > 1 and temperature <= 0:
            raise ConfigError("n > 1 needs temperature > 0 (greedy samples are identical)")
        self.policy, self.tokenizer, self.judge = policy, tokenizer, judge
        self.threshold, self.decline_message = threshold, decline_message
        self.n, self.max_new_tokens, self.temperature, self.top_p, self.seed = n, max_new_tokens, temperature, top_p, seed

    def decide(self, score: float, candidate: str) -> dict:
        answered = score >= self.threshold
        return {"output": candidate if answered else self.decline_message, "answered": answered, "score": score,
                "candidate": candidate}

    def respond(self, instruction: str, prompt_id: str = "0") -> dict:
        candidates = generate_candidates(self.policy, self.tokenizer, instruction, n=self.n, seed=self.seed,
                                         prompt_id=prompt_id, max_new_tokens=self.max_new_tokens,
                                         temperature=self.temperature, top_p=self.top_p)
        texts = [c["text"] for c in candidates]
        scores = self.judge.score([instruction] * len(texts), texts)
        best = max(range(len(texts)), key=lambda i: (scores[i], -i))
        return self.decide(scores[best], texts[best])
