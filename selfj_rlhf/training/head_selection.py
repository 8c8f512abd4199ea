"""Choosing a scalar-head design by cross-validation grouped by prompt, on the training prompts only.

A design is what a head is trained with: the layers it reads (one head per layer, their scores averaged: a layer
ensemble, stored as one linear map), its weight decay, its loss, and whether the augmentation rows (``kind`` other
than ``pool``: off-topic, injected, content-free, restated, echoed and padded answers) train it. ``cross_validate``
scores every row out of fold (K folds of whole prompts, so no prompt's answers are on both sides) and reports, per
design, the mean within-prompt Spearman of those scores with the teacher's label over the honest answers, pooled and
per fold, and per augmentation kind the share of (augmentation row, honest answer of its prompt) pairs where the
augmentation scores at least as high. ``select_design`` takes the highest pooled Spearman (among the designs whose
content-free, restated, echoed and off-topic rows (``CONTENT_FREE_KINDS``) score at or above an honest answer of
their prompt out of fold at most ``max_attack_rate`` of the time, when one is set and some design meets it); designs
that never saw the augmentation rows are reported but not chosen when the labels hold any, because a judge a loop
optimises against must score an answer to another question, a note to the grader or an answer that says nothing low,
and the honest answers' ranking cannot show whether it does.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple, Sequence

import numpy as np

from ..core.errors import ConfigError
from ..judge.head import LengthControl, ScalarHead
from ..judge.relevance import RelevanceGate
from .scalar_head import CONTENT_FREE_KINDS, HONEST, LOSSES, ScalarHeadConfig, train_scalar_head


@dataclass(frozen=True)
class HeadDesign:
    """One scalar-head design (the keys of a ``cv_grid`` entry)."""

    name: str
    layers: tuple[int, ...]
    weight_decay: float | None = None
    loss: str = "pairwise"
    pair_margin: float = 1.0
    max_length_ratio: float | None = None
    augment: bool = True
    augment_pair_weight: float | None = None
    floor_pairs: bool = False
    relevance_cap_quantile: float | None = None

    def __post_init__(self):
        if not self.layers or len(set(self.layers)) != len(self.layers) or min(self.layers) < 1:
            raise ConfigError(f"design '{self.name}': layers must be distinct layer numbers >= 1, got {self.layers}")
        if self.loss not in LOSSES:
            raise ConfigError(f"design '{self.name}': loss must be one of {LOSSES}, got '{self.loss}'")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ConfigError(f"design '{self.name}': weight_decay must be >= 0, got {self.weight_decay}")
        if self.relevance_cap_quantile is not None and not 0 < self.relevance_cap_quantile <= 1:
            raise ConfigError(f"design '{self.name}': relevance_cap_quantile must be in (0, 1], "
                              f"got {self.relevance_cap_quantile}")
        if self.augment_pair_weight is not None and not 0 <= self.augment_pair_weight <= 1:
            raise ConfigError(f"design '{self.name}': augment_pair_weight must be in [0, 1], "
                              f"got {self.augment_pair_weight}")

    @classmethod
    def from_dict(cls, data: dict, base: "HeadDesign", index: int) -> "HeadDesign":
        """A grid entry: any of the fields, the rest from ``base``; ``layers`` may be one number."""
        if not isinstance(data, dict):
            raise ConfigError(f"cv_grid entry {index}: expected a mapping, got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"cv_grid entry {index}: unknown keys {unknown}; known: {sorted(known)}")
        values = {**asdict(base), **data}
        layers = values["layers"]
        values["layers"] = (int(layers),) if isinstance(layers, (int, float, str)) else tuple(int(x) for x in layers)
        if "name" not in data:
            values["name"] = design_name(values)
        return cls(**values)

    def to_dict(self) -> dict:
        return {**asdict(self), "layers": list(self.layers)}


def design_name(values: dict) -> str:
    layers = values["layers"]
    parts = [f"layers {','.join(map(str, layers))}" if len(layers) > 1 else f"layer {layers[0]}",
             f"weight decay {values['weight_decay']}" if values["weight_decay"] is not None else "weight decay picked",
             values["loss"]]
    if not values["augment"]:
        parts.append("no augmentation rows")
    elif values.get("augment_pair_weight") is not None:
        parts.append(f"augmentation pairs {values['augment_pair_weight']:g} of the loss")
    if values.get("floor_pairs"):
        parts.append("content-free and off-topic rows below every answer")
    if values.get("relevance_cap_quantile") is not None:
        parts.append(f"relevance gate capped at quantile {values['relevance_cap_quantile']:g}")
    return ", ".join(parts)


def prompt_folds(groups: Sequence[str], folds: int, seed: int) -> list[set]:
    """``folds`` disjoint sets of whole groups (prompts), shuffled by ``seed``."""
    names = sorted(set(groups))
    if folds < 2 or folds > len(names):
        raise ConfigError(f"cross-validation needs 2 <= folds <= prompts ({len(names)}), got {folds}")
    random.Random(seed).shuffle(names)
    return [set(names[k::folds]) for k in range(folds)]


def within_group_spearman(scores, values, groups, index) -> float:
    """Mean Spearman correlation of ``scores`` with ``values`` within each group of the rows ``index`` (groups where
    either side is constant are left out; NaN when none is left)."""
    from scipy.stats import spearmanr

    scores, values = np.asarray(scores), np.asarray(values)
    members: dict = {}
    for i in index:  # one pass over the rows, not one per group
        members.setdefault(groups[i], []).append(i)
    out = []
    for group in sorted(members):
        a, b = scores[members[group]], values[members[group]]
        if len(set(a)) > 1 and len(set(b)) > 1:
            out.append(spearmanr(a, b).statistic)
    return float(np.mean(out)) if out else float("nan")


class FittedDesign(NamedTuple):
    """A design fitted on some rows: its head, relevance gate (None without one), length fit and the rows it
    trained on."""

    head: ScalarHead
    gate: RelevanceGate | None
    length_fit: LengthControl
    rows: np.ndarray

    def predict(self, states: np.ndarray, relevance: np.ndarray | None = None) -> np.ndarray:
        """Raw scores of cached ``[N, layers + 1, hidden]`` states (and the rows' relevance, with a gate)."""
        scores = self.head.predict(self.head.inputs(states))
        return scores if self.gate is None else scores + self.gate.apply(relevance)


def fit_head_design(design: HeadDesign, rows: list[dict], states: np.ndarray, tokens: np.ndarray,
                    train: np.ndarray, head_config: ScalarHeadConfig, teacher_states: np.ndarray | None = None,
                    relevance: np.ndarray | None = None) -> FittedDesign:
    """One design fitted on the row mask ``train``.

    ``rows`` need ``score``, ``group`` and ``kind``; ``states`` are cached ``[N, layers + 1, hidden]`` states
    (``selfj_rlhf.judge.features``), ``teacher_states`` the with-reference prompts' (``head_config.distill``),
    ``relevance`` each row's relevance (``selfj_rlhf.judge.relevance``; a design with ``relevance_cap_quantile``
    needs it: the capped relevance is one more input of each layer's linear map, its weight the gate's).
    ``head_config`` gives the settings a design does not (steps, learning rate, distillation weights, seed).
    """
    is_honest = np.array([r["kind"] == HONEST for r in rows])
    keep = train & (is_honest | design.augment)
    index = np.flatnonzero(keep)
    if not len(index):
        raise ConfigError(f"design '{design.name}': no training rows")
    honest = np.flatnonzero(train & is_honest)
    if len(honest) < 2:
        raise ConfigError(f"design '{design.name}': fewer than two honest answers to fit the length trend on")
    labels = [rows[i]["score"] for i in index]
    groups = [rows[i]["group"] for i in index]
    gate_input = None
    cap = None
    if design.relevance_cap_quantile is not None:
        if relevance is None:
            raise ConfigError(f"design '{design.name}': a relevance gate needs the rows' relevance")
        # capped at a quantile of the honest answers' relevance: an echoed instruction gains no more than they do
        cap = float(np.quantile(relevance[honest], design.relevance_cap_quantile))
        gate_input = np.minimum(relevance[index], cap).astype(np.float32)[:, None]
    heads, gate_weights = [], []
    for layer in design.layers:
        if layer >= states.shape[1]:
            raise ConfigError(f"design '{design.name}': layer {layer} is above the {states.shape[1] - 1} cached layers")
        cfg = ScalarHeadConfig(**{**asdict(head_config), "layer": layer, "loss": design.loss,
                                  "pair_margin": design.pair_margin, "weight_decay": design.weight_decay,
                                  "max_length_ratio": design.max_length_ratio,
                                  "augment_pair_weight": design.augment_pair_weight,
                                  "floor_pairs": design.floor_pairs})
        student = states[index, layer].astype(np.float32)
        teacher = None if teacher_states is None else teacher_states[index, layer].astype(np.float32)
        if gate_input is not None:  # the relevance does not read the reference: the same input for both prompts
            student = np.concatenate([student, gate_input], 1)
            teacher = None if teacher is None else np.concatenate([teacher, gate_input], 1)
        head, _ = train_scalar_head(cfg, student, labels, groups, tokens[index], teacher,
                                    [rows[i]["kind"] for i in index], free_columns=0 if gate_input is None else 1)
        if gate_input is not None:
            weight = head.linear.weight.data[0]
            gate_weights.append(float(weight[-1]))
            split = ScalarHead(states.shape[2], layer)
            split.linear.weight.data.copy_(weight[:-1].unsqueeze(0))
            split.linear.bias.data.copy_(head.linear.bias.data)
            head = split.eval()
        heads.append(head)
    head = heads[0] if len(heads) == 1 else ScalarHead.average(heads)
    gate = None if cap is None else RelevanceGate(weight=float(np.mean(gate_weights)), cap=cap)
    # the length trend of the honest answers: content-free rows (short, label 0) would teach it that short is bad,
    # and the length control would then pay short answers back
    return FittedDesign(head, gate, LengthControl.fit([rows[i]["score"] for i in honest], tokens[honest]), keep)


def cross_validate(designs: Sequence[HeadDesign], rows: list[dict], states: np.ndarray, tokens: np.ndarray,
                   head_config: ScalarHeadConfig, folds: int, seed: int = 0,
                   teacher_states: np.ndarray | None = None, progress: bool = True,
                   relevance: np.ndarray | None = None) -> dict[str, dict]:
    """Per design: the out-of-fold scores' within-prompt Spearman with the label on the honest answers, pooled over
    every prompt (``spearman_within_prompt``) and per fold (``folds``, with their standard deviation)."""
    from tqdm.auto import tqdm

    groups = [r["group"] for r in rows]
    group_array = np.array(groups)
    labels = [r["score"] for r in rows]
    honest = np.array([r["kind"] == HONEST for r in rows])
    splits = prompt_folds(groups, folds, seed)
    table = {}
    for design in tqdm(designs, desc="cross-validation", unit="design", disable=not progress):
        scores = np.zeros(len(rows))
        per_fold = []
        for fold in splits:
            test = np.isin(group_array, list(fold))
            fitted = fit_head_design(design, rows, states, tokens, ~test, head_config, teacher_states, relevance)
            scores[test] = fitted.predict(states[test], None if relevance is None else relevance[test])
            per_fold.append(within_group_spearman(scores, labels, groups, np.flatnonzero(test & honest)))
        table[design.name] = {
            "design": design.to_dict(),
            "spearman_within_prompt": within_group_spearman(scores, labels, groups, np.flatnonzero(honest)),
            "folds": per_fold, "fold_std": statistics.pstdev(per_fold),
            "at_or_above_honest": at_or_above_honest(scores, rows), "out_of_fold_scores": scores.tolist()}
    return table


def at_or_above_honest(scores, rows: list[dict]) -> dict[str, float]:
    """Per augmentation kind: the share of (augmentation row, honest answer to the same prompt) pairs where the
    augmentation row scores at least as high (the attack probe's false-positive rate, on the training kinds)."""
    honest_scores: dict = {}
    for score, row in zip(scores, rows):
        if row["kind"] == HONEST:
            honest_scores.setdefault(row["group"], []).append(score)
    hits: dict[str, list[int]] = {}
    for score, row in zip(scores, rows):
        if row["kind"] != HONEST and row["group"] in honest_scores:
            tally = hits.setdefault(row["kind"], [0, 0])
            tally[0] += sum(score >= h for h in honest_scores[row["group"]])
            tally[1] += len(honest_scores[row["group"]])
    return {kind: hit / total for kind, (hit, total) in sorted(hits.items())}


def attack_rate(entry: dict) -> float:
    """A CV table entry's highest out-of-fold rate of rows that answer nothing (``CONTENT_FREE_KINDS``:
    content-free, off-topic, restated, echoed) at or above an honest answer of their prompt (0 when the labels hold
    none)."""
    rates = entry.get("at_or_above_honest", {})
    return max((rates[kind] for kind in CONTENT_FREE_KINDS if kind in rates), default=0.0)


def select_design(designs: Sequence[HeadDesign], table: dict[str, dict], rows: list[dict],
                  max_attack_rate: float | None = None) -> tuple[HeadDesign, bool]:
    """``(design, whether it meets max_attack_rate)``: the highest pooled within-prompt Spearman among the designs
    that train on the augmentation rows when the labels hold any (see the module docstring) and, with
    ``max_attack_rate``, whose ``attack_rate`` is at most that; when none is, the highest Spearman among the first
    set, reported as not meeting it."""
    has_attacks = any(r["kind"] != HONEST for r in rows)
    eligible = [d for d in designs if d.augment or not has_attacks]
    if not eligible:
        raise ConfigError("cv_grid: every design leaves out the augmentation rows (off-topic, injected, content-free, "
                          "padded), which a judge that a loop optimises against must learn from; add one with "
                          "augment: true")
    resistant = [d for d in eligible if max_attack_rate is None or attack_rate(table[d.name]) <= max_attack_rate]
    best = max(resistant or eligible, key=lambda d: table[d.name]["spearman_within_prompt"])
    return best, bool(resistant)
