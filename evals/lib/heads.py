"""Scalar heads on cached score-position states, as the benchmarks train and cross-validate them: a design (the
``HeadDesign`` fields as a dict, ``layers`` optional) fitted on a row mask by the library
(``selfj_rlhf.training.head_selection``), and folds by question."""

from __future__ import annotations

import numpy as np

from selfj_rlhf.training.head_selection import HeadDesign, fit_head_design, prompt_folds
from selfj_rlhf.training.scalar_head import ScalarHeadConfig


def fit(design: dict, rows, states, tokens, train: np.ndarray, layer: int):
    """(head, length fit) of one design trained on the row mask ``train``, reading the ``[N, hidden]`` states of
    ``layer``."""
    spec = HeadDesign(name="benchmark design", layers=(layer,), **design)
    scored = [{**r, "score": r["score_label"]} for r in rows]
    # the library reads layer ``layer`` of [N, layers + 1, hidden] states: a view that puts these states there
    stacked = np.broadcast_to(np.asarray(states)[:, None, :], (len(rows), layer + 1, states.shape[-1]))
    fitted = fit_head_design(spec, scored, stacked, np.asarray(tokens), train, ScalarHeadConfig(distill=False))
    return fitted.head, fitted.length_fit


def question_folds(rows, folds: int, seed: int) -> list[set]:
    return prompt_folds([r["group"] for r in rows], folds, seed)


def save_head_judge(directory: str, model: str, max_length: int, head, length_fit, map_states, map_labels,
                    provenance: dict, role: str, policy: str) -> dict:
    """Save a judge directory of a fitted head on ``model``: its role and policy, its length control, and a score map
    onto 0-9 fitted from the head's scores of ``map_states`` to ``map_labels``."""
    from selfj_rlhf import SelfJudge
    from selfj_rlhf.judge.head import ScoreMap

    score_map = ScoreMap.fit(head.predict(map_states), map_labels)
    base = SelfJudge.from_pretrained(model, max_length=max_length)
    judge = SelfJudge(base.model, base.tokenizer, base.template, max_length, base_model=model, head=head,
                      length_fit=length_fit, score_map=score_map)
    judge.save_pretrained(directory, extra={"role": role, "policy": policy, "training": provenance})
    return {"directory": directory, "score_map": score_map.to_dict(), "length_control": length_fit.to_dict(),
            **provenance}
