"""How a judge's score of an answer depends on the batch the answer runs in, and whether that changes best-of-n
picks: the same answers scored alone, with the other answers to their prompt, and in batches mixed across prompts
(a seeded shuffle), compared with a reference scoring (fp32, or a batch composition)."""

from __future__ import annotations

import random

import numpy as np

COMPOSITIONS = ("alone (batch 1)", "with its prompt's answers", "mixed across prompts")


def composition_batches(groups: list[str], composition: str, batch_size: int, seed: int = 0) -> list[list[int]]:
    """Index batches of one composition; ``groups[i]`` names the prompt of answer i."""
    order = list(range(len(groups)))
    if composition == COMPOSITIONS[0]:
        return [[i] for i in order]
    if composition == COMPOSITIONS[2]:
        random.Random(seed).shuffle(order)
        return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    by_group: dict[str, list[int]] = {}
    for i in order:
        by_group.setdefault(groups[i], []).append(i)
    return [members[k:k + batch_size] for members in by_group.values() for k in range(0, len(members), batch_size)]


def scores_by_composition(judge, instructions, responses, groups, batch_size: int, seed: int = 0) -> dict:
    """Raw scores of every answer under each composition, each batch run as one forward (no prefix sharing)."""
    sharing, judge.share_prefix = judge.share_prefix, "never"
    out = {}
    for composition in COMPOSITIONS:
        scores = np.zeros(len(responses))
        for batch in composition_batches(groups, composition, batch_size, seed):
            details = judge.score_details([instructions[i] for i in batch], [responses[i] for i in batch],
                                          batch_size=len(batch))
            scores[batch] = [d.raw_score for d in details]
        out[composition] = scores
    judge.share_prefix = sharing
    return out


def picks(groups: list[str], scores: np.ndarray) -> dict[str, int]:
    """Each prompt's best answer (the first maximum)."""
    best: dict[str, int] = {}
    for i, group in enumerate(groups):
        if group not in best or scores[i] > scores[best[group]]:
            best[group] = i
    return best


def compare(groups: list[str], reference: np.ndarray, runs: dict[str, np.ndarray]) -> dict:
    """Score differences to the reference and between runs, and the share of prompts whose pick changes."""
    base = picks(groups, reference)
    chosen = {name: picks(groups, scores) for name, scores in runs.items()}
    return {"max_abs_vs_reference": max(float(np.abs(v - reference).max()) for v in runs.values()),
            "mean_abs_vs_reference": float(np.mean([np.abs(v - reference).mean() for v in runs.values()])),
            "max_abs_between_runs": max(float(np.abs(a - b).max()) for a in runs.values() for b in runs.values()),
            "pick_changed_vs_reference": {name: float(np.mean([c[g] != base[g] for g in base]))
                                          for name, c in chosen.items()},
            "pick_changed_between_runs": float(np.mean([len({c[g] for c in chosen.values()}) > 1 for g in base])),
            "prompts": len(base)}
