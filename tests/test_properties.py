"""Property-based tests (hypothesis) for pair building and the selective-prediction metrics."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfj_rlhf.rlhf.pairs import DROP_REASONS, PairConfig, ScoredCandidate, ScoredPrompt, build_pairs
from selfj_rlhf.rlhf.selective import (apply_threshold, aurc, choose_threshold, coverage_at_risk, excess_aurc,
                                       oracle_aurc, risk_coverage_curve, selective_risk_at_coverage)

finite_scores = st.floats(min_value=-5, max_value=14, allow_nan=False, allow_infinity=False)
candidate = st.builds(ScoredCandidate, text=st.text(max_size=12), score=finite_scores,
                      length=st.integers(min_value=0, max_value=600))
prompt = st.builds(ScoredPrompt, id=st.uuids().map(str), prompt=st.text(min_size=1, max_size=20),
                   candidates=st.lists(candidate, max_size=6))
pair_config = st.builds(PairConfig, strategy=st.sampled_from(["max_min", "max_random", "max_second", "length_aware"]),
                        min_margin=st.floats(min_value=0, max_value=3),
                        max_length_ratio=st.none() | st.floats(min_value=1, max_value=5),
                        min_chosen_score=st.none() | finite_scores, output_format=st.sampled_from(["standard", "conversational"]),
                        pair_seed=st.integers(0, 10))


@settings(max_examples=200, deadline=None)
@given(st.lists(prompt, max_size=8), pair_config, st.floats(min_value=0, max_value=2))
def test_pairs_invariants(prompts, cfg, penalty):
    if cfg.strategy == "length_aware":
        cfg = PairConfig(**{**cfg.__dict__, "length_penalty": penalty})
    rows, report = build_pairs(prompts, cfg)
    assert report["pairs"] == len(rows)
    assert report["pairs"] + sum(report["dropped"].values()) == len(prompts)  # every prompt accounted for once
    assert set(report["dropped"]) <= set(DROP_REASONS)
    by_id = {p.id: p for p in prompts}
    for row in rows:
        item = by_id[row["id"]]
        texts = [c.text for c in item.candidates]
        chosen = row["chosen"] if isinstance(row["chosen"], str) else row["chosen"][0]["content"]
        rejected = row["rejected"] if isinstance(row["rejected"], str) else row["rejected"][0]["content"]
        assert chosen in texts and rejected in texts and chosen.strip() != rejected.strip()
        assert row["margin"] > 0 and row["margin"] >= cfg.min_margin
        if cfg.min_chosen_score is not None:
            assert row["score_chosen"] >= cfg.min_chosen_score
        if cfg.max_length_ratio is not None:
            longer, shorter = max(row["length_chosen"], row["length_rejected"]), min(row["length_chosen"], row["length_rejected"])
            assert longer <= cfg.max_length_ratio * max(shorter, 1)
        if cfg.strategy != "length_aware":
            assert row["score_chosen"] == max(c.score for c in item.candidates)  # chosen is a best candidate


losses_and_scores = st.integers(min_value=1, max_value=40).flatmap(
    lambda n: st.tuples(st.lists(st.integers(0, 5).map(float), min_size=n, max_size=n),  # few values: many ties
                        st.lists(st.sampled_from([0.0, 1.0, 0.5]), min_size=n, max_size=n)))


@settings(max_examples=300, deadline=None)
@given(losses_and_scores)
def test_selective_metric_invariants(data):
    scores, losses = data
    coverage, risk = risk_coverage_curve(scores, losses)
    assert np.all((risk >= -1e-12) & (risk <= 1 + 1e-12))
    assert risk[-1] == pytest.approx(np.mean(losses))  # full coverage = base risk
    assert oracle_aurc(losses) <= aurc(scores, losses) + 1e-12 and excess_aurc(scores, losses) >= -1e-12
    assert aurc([0.0] * len(losses), losses) == pytest.approx(np.mean(losses))  # no ranking: base risk everywhere
    # permuting the rows changes nothing
    order = np.random.default_rng(len(losses)).permutation(len(losses))
    assert aurc([scores[i] for i in order], [losses[i] for i in order]) == pytest.approx(aurc(scores, losses))
    # a monotone transform of the scores changes nothing
    assert aurc([math.exp(s) for s in scores], losses) == pytest.approx(aurc(scores, losses))
    target = 0.4
    cov = coverage_at_risk(scores, losses, target)
    if cov > 0:
        assert selective_risk_at_coverage(scores, losses, cov) <= target + 1e-9
    chosen = choose_threshold(scores, losses, target_coverage=0.5)
    applied = apply_threshold(scores, losses, chosen.threshold)
    assert applied["coverage"] >= 0.5 - 1e-12 and applied["coverage"] == pytest.approx(chosen.coverage)
    by_risk = choose_threshold(scores, losses, target_risk=target)
    assert by_risk.threshold in set(scores)
