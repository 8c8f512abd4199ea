"""A scalar judge head on one layer's score-position hidden state (``head: scalar``).

The digit judge reads the rating from the LM head after the last layer. Linear probes on the embedded model
say the quality signal is strongest in the middle layers (evals/results/label_transfer.md), so a scalar head
reads the residual stream after decoder layer ``layer`` at the position where the rating begins and maps it
to a 0-9 score. The layers above ``layer`` never run when scoring, which makes the judge cheaper too.

Training keeps SELF-J's shape with the digit cross-entropies turned into regression on the expected score:
one head reads both prompts, the teacher's (with the reference) and the student's (without it):

    loss = MSE(h(teacher), y) + 0.3 MSE(h(student), y) + 2 MSE(h(student), stopgrad(h(teacher)))

(``distill=False``: the student term alone), optionally plus a Bradley-Terry loss on pairs of answers to the
same instruction whose labels differ by at least ``pair_margin`` (``loss: pairwise`` uses it alone and maps the
scores back to the label scale afterwards). The base model is frozen, so the head trains on cached states
(``selfj_rlhf.judge.features``) in seconds.

``LengthControl`` removes the part of a score that a line in log response length explains, fitted on the
training labels (so it corrects the length trend the teacher passed on, not one measured on test data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..core.errors import ConfigError
from ..judge.head import ScalarHead

LOSSES = ("expected_mse", "pairwise", "mse+pairwise")
HONEST = "pool"  # the label rows' ``kind`` of the answers themselves (the others are augmentation rows)
# augmentation rows answering nothing that was asked
CONTENT_FREE_KINDS = ("content_free", "offtopic", "restated", "echoed")


@dataclass
class ScalarHeadConfig:
    """How the scalar head is trained on cached states."""

    layer: int = field(default=18, metadata={"help": "Decoder layer whose output the head reads (1..num_layers)."})
    loss: str = field(default="expected_mse", metadata={"help": "expected_mse | pairwise | mse+pairwise."})
    distill: bool = field(default=True, metadata={
        "help": "SELF-J distillation: the head also reads the with-reference teacher prompt (needs its states)."})
    student_weight: float = field(default=0.3, metadata={"help": "Weight of the student's own label loss."})
    distill_weight: float = field(default=2.0, metadata={"help": "Weight of student-to-teacher matching."})
    pair_margin: float = field(default=1.0, metadata={"help": "Smallest label gap (0-9 scale) of a training pair."})
    max_length_ratio: float | None = field(default=None, metadata={
        "help": "Only pair answers whose token lengths differ by at most this factor (length-matched pairs)."})
    weight_decay: float | None = field(default=None, metadata={
        "help": "L2 on the standardised weights; None picks it on held-back training groups by label fit."})
    augment_pair_weight: float | None = field(default=None, metadata={
        "help": "Share of the pairwise loss given to pairs with an augmentation row (an off-topic, injected, "
                "content-free, restated or padded answer), the rest to pairs of honest answers; None weighs every "
                "pair alike (augmentation pairs, one per honest answer, then outnumber the honest ones)."})
    floor_pairs: bool = field(default=False, metadata={
        "help": "Pair every content-free, off-topic and restated row with every honest answer of its prompt, "
                "whatever their label gap: they answer nothing the prompt asked, so they rank below every answer to "
                "it (the teacher's within-prompt labels give the worst honest answer 0 too, and no pair then says "
                "so)."})
    steps: int = field(default=400, metadata={"help": "Full-batch optimisation steps."})
    lr: float = field(default=0.02, metadata={"help": "Adam learning rate."})
    seed: int = field(default=0, metadata={"help": "Seed of the held-back groups and of initialisation."})

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got '{self.loss}'")
        if self.layer < 1:
            raise ConfigError(f"layer must be >= 1, got {self.layer}")
        if self.max_length_ratio is not None and self.max_length_ratio < 1:
            raise ConfigError(f"max_length_ratio must be >= 1, got {self.max_length_ratio}")
        if self.augment_pair_weight is not None and not 0 <= self.augment_pair_weight <= 1:
            raise ConfigError(f"augment_pair_weight must be in [0, 1], got {self.augment_pair_weight}")


def training_pairs(labels: np.ndarray, groups: Sequence[str], response_tokens: np.ndarray, margin: float,
                   max_length_ratio: float | None, kinds: Sequence[str] | None = None,
                   floor_pairs: bool = False) -> np.ndarray:
    """``[P, 2]`` (better, worse) row pairs within a group whose labels differ by at least ``margin``; with
    ``floor_pairs``, also every (honest answer, ``CONTENT_FREE_KINDS`` row) pair of a group (``kinds``)."""
    floor = np.array([k in CONTENT_FREE_KINDS for k in kinds]) if floor_pairs and kinds is not None else None
    honest = np.array([k == HONEST for k in kinds]) if floor is not None else None
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    pairs = []
    for rows in members.values():
        for a in rows:
            for b in rows:
                if floor is not None and honest[a] and floor[b]:
                    pairs.append((a, b))
                    continue
                if labels[a] - labels[b] < margin:
                    continue
                if max_length_ratio is not None:
                    la, lb = max(int(response_tokens[a]), 1), max(int(response_tokens[b]), 1)
                    if max(la, lb) / min(la, lb) > max_length_ratio:
                        continue
                pairs.append((a, b))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def pair_weights(pairs: np.ndarray, augmented: np.ndarray | None, augment_share: float | None) -> np.ndarray:
    """Per pair, its weight in the Bradley-Terry mean (summing to 1): uniform, or ``augment_share`` spread over the
    pairs with an ``augmented`` row and the rest over the honest pairs (uniform when either kind has none)."""
    uniform = np.full(len(pairs), 1.0 / max(len(pairs), 1))
    if augment_share is None or augmented is None or not len(pairs):
        return uniform
    with_augmented = augmented[pairs].any(axis=1)
    count = int(with_augmented.sum())
    if count in (0, len(pairs)):
        return uniform
    return np.where(with_augmented, augment_share / count, (1.0 - augment_share) / (len(pairs) - count))


def pairwise_loss(scores: torch.Tensor, pairs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry: the mean of ``-log sigmoid(s_better - s_worse)`` over the pairs (weighted by ``weights``,
    which sum to 1, when given)."""
    losses = torch.nn.functional.softplus(scores[pairs[:, 1]] - scores[pairs[:, 0]])
    return losses.mean() if weights is None else (losses * weights).sum()


def _objective(cfg: ScalarHeadConfig, student: torch.Tensor, teacher: torch.Tensor | None, y: torch.Tensor,
               pairs: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    use_mse = cfg.loss in ("expected_mse", "mse+pairwise")
    use_pairs = cfg.loss in ("pairwise", "mse+pairwise") and len(pairs)
    loss = student.new_zeros(())
    if teacher is not None:
        if use_mse:
            loss = loss + torch.mean((teacher - y) ** 2) + cfg.student_weight * torch.mean((student - y) ** 2)
        if use_pairs:
            loss = (loss + pairwise_loss(teacher, pairs, weights)
                    + cfg.student_weight * pairwise_loss(student, pairs, weights))
        loss = loss + cfg.distill_weight * torch.mean((student - teacher.detach()) ** 2)
    else:
        if use_mse:
            loss = loss + torch.mean((student - y) ** 2)
        if use_pairs:
            loss = loss + pairwise_loss(student, pairs, weights)
    return loss


def _fit(cfg: ScalarHeadConfig, student: np.ndarray, teacher: np.ndarray | None, labels: np.ndarray,
         groups: Sequence[str], response_tokens: np.ndarray, weight_decay: float,
         kinds: Sequence[str] | None, free_columns: int = 0) -> tuple[np.ndarray, float]:
    """Weight and bias on raw states (standardisation folded in); the last ``free_columns`` inputs are not decayed."""
    torch.manual_seed(cfg.seed)
    mean = student.mean(0)
    scale = student.std(0) + 1e-6
    xs = torch.tensor((student - mean) / scale, dtype=torch.float32)
    xt = torch.tensor((teacher - mean) / scale, dtype=torch.float32) if teacher is not None else None
    y = torch.tensor(labels, dtype=torch.float32)
    pair_rows = training_pairs(labels, groups, response_tokens, cfg.pair_margin, cfg.max_length_ratio, kinds,
                               cfg.floor_pairs)
    augmented = None if kinds is None else np.array([k != HONEST for k in kinds])
    weights = (None if cfg.augment_pair_weight is None else
               torch.tensor(pair_weights(pair_rows, augmented, cfg.augment_pair_weight), dtype=torch.float32))
    pairs = torch.tensor(pair_rows)
    if cfg.loss == "pairwise" and not len(pairs):
        raise ConfigError(f"no training pair has a label gap of pair_margin={cfg.pair_margin}")
    weight = torch.zeros(xs.shape[1], requires_grad=True)
    bias = torch.tensor(float(labels.mean()), requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=cfg.lr)
    for _ in range(cfg.steps):
        optimizer.zero_grad()
        loss = _objective(cfg, xs @ weight + bias, None if xt is None else xt @ weight + bias, y, pairs, weights)
        decayed = weight[:weight.shape[0] - free_columns]
        (loss + weight_decay * decayed.pow(2).sum()).backward()
        optimizer.step()
    w = weight.detach().numpy() / scale
    b = float(bias.detach()) - float(w @ mean)
    if cfg.loss == "pairwise":  # Bradley-Terry fixes differences only: map back to the label scale
        raw = student @ w + b
        slope, intercept = np.polyfit(raw, labels, 1) if raw.std() > 0 else (0.0, float(labels.mean()))
        w, b = w * slope, b * slope + intercept
    return w.astype(np.float32), float(b)


def _label_fit(scores: np.ndarray, labels: np.ndarray) -> float:
    """Agreement with the teacher's labels on held-back groups (Pearson; no grade is involved)."""
    if scores.std() == 0 or labels.std() == 0:
        return -1.0
    return float(np.corrcoef(scores, labels)[0, 1])


def train_scalar_head(cfg: ScalarHeadConfig, student_states: np.ndarray, labels: Sequence[float],
                      groups: Sequence[str], response_tokens: Sequence[int],
                      teacher_states: np.ndarray | None = None,
                      kinds: Sequence[str] | None = None, free_columns: int = 0) -> tuple[ScalarHead, dict]:
    """Fit the head on ``[N, hidden]`` student states (and, with ``distill``, the matching teacher states).
    ``kinds`` are the rows' label kinds (``HONEST`` or an augmentation kind), for ``augment_pair_weight`` and
    ``floor_pairs``. The last ``free_columns`` inputs (a feature beside the states, such as the relevance gate's)
    are left out of the weight decay, which is there to keep a direction in the hidden states from overfitting.

    Without a fixed ``weight_decay``, a fifth of the training groups is held back to pick it from a grid by
    how well the head reproduces their teacher labels; the head is then refitted on every group.
    """
    if cfg.distill and teacher_states is None:
        raise ConfigError("distill needs the teacher (with-reference) states; set distill: false to train without")
    teacher = teacher_states if cfg.distill else None
    labels = np.asarray(labels, dtype=np.float64)
    tokens = np.asarray(response_tokens)
    student = np.asarray(student_states, dtype=np.float32)
    kinds = None if kinds is None else list(kinds)
    info: dict = {"rows": len(labels), "layer": cfg.layer, "loss": cfg.loss, "distill": cfg.distill}
    decay = cfg.weight_decay
    if decay is None:
        names = sorted(set(groups))
        held = set(np.random.default_rng(cfg.seed).permutation(names)[: max(1, len(names) // 5)].tolist())
        fit_rows = np.array([g not in held for g in groups])
        grid = {}
        for candidate in (1e-4, 1e-3, 1e-2, 1e-1):
            w, b = _fit(cfg, student[fit_rows], None if teacher is None else teacher[fit_rows], labels[fit_rows],
                        [g for g, keep in zip(groups, fit_rows) if keep], tokens[fit_rows], candidate,
                        None if kinds is None else [k for k, keep in zip(kinds, fit_rows) if keep], free_columns)
            grid[candidate] = _label_fit(student[~fit_rows] @ w + b, labels[~fit_rows])
        decay = max(grid, key=grid.get)
        info["weight_decay_grid"] = {str(k): round(v, 4) for k, v in grid.items()}
    w, b = _fit(cfg, student, teacher, labels, groups, tokens, decay, kinds, free_columns)
    info["weight_decay"] = decay
    head = ScalarHead(student.shape[1], cfg.layer)
    head.linear.weight.data.copy_(torch.tensor(w).unsqueeze(0))
    head.linear.bias.data.fill_(b)
    predictions = student @ w + b
    info["train_label_pearson"] = round(_label_fit(predictions, labels), 4)
    info["train_score_std"] = round(float(predictions.std()), 4)
    return head.eval(), info


