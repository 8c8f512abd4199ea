"""Measures the benchmarks share: bootstrap intervals, correlations with GPT-4 grades, GSM8K answers."""

from __future__ import annotations

import re
import statistics

import numpy as np

from selfj_rlhf.training.head_selection import within_group_spearman  # noqa: F401  (one implementation, the library's)


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def bootstrap_ci(diff: np.ndarray, draws: int, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (draws, len(diff)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def final_number(text: str) -> str | None:
    """The last number in a text, without thousands separators or a trailing ``.0`` (GSM8K answers are integers)."""
    found = NUMBER.findall(text)
    if not found:
        return None
    value = found[-1].replace(",", "")
    return value[:-2] if value.endswith(".0") else value


def reference_answer(reference: str) -> str | None:
    """The final number of a GSM8K reference, which ends "The answer is N."."""
    match = re.search(r"The answer is (.+?)\.?$", reference.strip())
    return final_number(match.group(1)) if match else None


def partial_given_length(scores, grades, tokens) -> float:
    """Correlation of score and grade after a linear fit on log length is removed from each."""
    import numpy as np

    x = np.log1p(np.asarray(tokens, float))

    def residual(v):
        v = np.asarray(v, float)
        slope, intercept = np.polyfit(x, v, 1)
        return v - (slope * x + intercept)

    a, b = residual(scores), residual(grades)
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")


def arena_metrics(rows: list[dict], scores: list[float]) -> dict:
    from scipy.stats import kendalltau, pearsonr, spearmanr

    grades = [r["score"] for r in rows]
    lengths = [len(r["response"]) for r in rows]

    def grouped(key):
        groups: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            groups.setdefault(row[key], []).append(index)
        values = []
        for indices in groups.values():
            g, s = [grades[i] for i in indices], [scores[i] for i in indices]
            if len(set(g)) > 1 and len(set(s)) > 1:
                values.append(spearmanr(s, g).statistic)
        return statistics.fmean(values) if values else float("nan")

    constant = len(set(scores)) == 1
    return {"n": len(rows),
            "pearson": float("nan") if constant else float(pearsonr(scores, grades).statistic),
            "spearman": float("nan") if constant else float(spearmanr(scores, grades).statistic),
            "kendall": float("nan") if constant else float(kendalltau(scores, grades).statistic),
            "spearman_within_model": grouped("model"), "spearman_within_question": grouped("question_id"),
            "spearman_with_length": float("nan") if constant else float(spearmanr(scores, lengths).statistic),
            "score_std": statistics.pstdev(scores)}


def pairwise_accuracy(scores_a: list[float], scores_b: list[float], rows: list[dict]) -> float:
    correct = 0.0
    for a, b, row in zip(scores_a, scores_b, rows):
        if a == b:
            correct += 0.5
        elif (a > b) == (row["preference"] == "a"):
            correct += 1
    return correct / len(rows)
