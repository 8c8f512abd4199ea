"""Scalar heads on cached score-position states, as the benchmarks train and cross-validate them: a design (the
``ScalarHeadConfig`` fields, plus ``augment``: whether the off-topic and injected label rows train it) fitted on a row
mask, and folds by question."""

from __future__ import annotations

import random

import numpy as np


def fit(design: dict, rows, states, tokens, train: np.ndarray, layer: int):
    """(head, length fit) of one design trained on the row mask ``train``."""
    from selfj_rlhf.judge.head import LengthControl
    from selfj_rlhf.training.scalar_head import ScalarHeadConfig, train_scalar_head

    spec = dict(design)
    augment = spec.pop("augment", True)
    keep = train & (np.array([r["kind"] == "pool" for r in rows]) | augment)
    index = np.flatnonzero(keep)
    labels = [rows[i]["score_label"] for i in index]
    head, _ = train_scalar_head(ScalarHeadConfig(layer=layer, distill=False, **spec), states[index], labels,
                                [rows[i]["group"] for i in index], tokens[index])
    return head, LengthControl.fit(labels, tokens[index])


def question_folds(rows, folds: int, seed: int) -> list[set]:
    groups = sorted({r["group"] for r in rows})
    random.Random(seed).shuffle(groups)
    return [set(groups[k::folds]) for k in range(folds)]


def save_head_judge(directory: str, model: str, max_length: int, head, length_fit, map_states, map_labels,
                    provenance: dict) -> dict:
    """Save a judge directory of a fitted head on ``model``: its length control, and a score map onto 0-9 fitted
    from the head's scores of ``map_states`` to ``map_labels``."""
    from selfj_rlhf import SelfJudge
    from selfj_rlhf.judge.head import ScoreMap

    score_map = ScoreMap.fit(head.predict(map_states), map_labels)
    base = SelfJudge.from_pretrained(model, max_length=max_length)
    judge = SelfJudge(base.model, base.tokenizer, base.template, max_length, base_model=model, head=head,
                      length_fit=length_fit, score_map=score_map)
    judge.save_pretrained(directory, extra={"training": provenance})
    return {"directory": directory, "score_map": score_map.to_dict(), "length_control": length_fit.to_dict(),
            **provenance}
