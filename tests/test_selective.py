"""Selective-prediction metrics against hand-computed values (with and without tied scores), threshold
choice, the SelectiveResponder, and best-of-n's --abstain_below."""

import json

import pytest

from selfj_rlhf.core.errors import ConfigError
from selfj_rlhf.rlhf.selective import (SelectiveResponder, apply_threshold, aurc, choose_threshold, coverage_at_risk,
                                       excess_aurc, oracle_aurc, risk_coverage_curve, selective_report,
                                       selective_risk_at_coverage)

# no ties: ranked losses 0, 1, 0, 1 -> risks 0, 1/2, 1/3, 1/2
SCORES, LOSSES = [0.9, 0.6, 0.8, 0.7], [0, 1, 1, 0]
# ties: {5, 5} hold losses {1, 0} (expected 1/2 each), {3, 3} hold {0, 0} -> risks 1/2, 1/2, 1/3, 1/4
TIED_SCORES, TIED_LOSSES = [5, 3, 5, 3], [1, 0, 0, 0]


def test_curve_without_ties():
    coverage, risk = risk_coverage_curve(SCORES, LOSSES)
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert risk.tolist() == pytest.approx([0, 1 / 2, 1 / 3, 1 / 2])
    assert aurc(SCORES, LOSSES) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
    assert oracle_aurc(LOSSES) == pytest.approx((0 + 0 + 1 / 3 + 1 / 2) / 4)
    assert excess_aurc(SCORES, LOSSES) == pytest.approx(0.125)


def test_curve_with_ties_averages_each_tie_group():
    _, risk = risk_coverage_curve(TIED_SCORES, TIED_LOSSES)
    assert risk.tolist() == pytest.approx([1 / 2, 1 / 2, 1 / 3, 1 / 4])
    assert aurc(TIED_SCORES, TIED_LOSSES) == pytest.approx((1 / 2 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # a constant score cannot rank anything: every coverage has the base risk
    assert aurc([1, 1, 1, 1], [1, 0, 0, 0]) == pytest.approx(0.25)
    # the order of the input rows does not matter
    assert aurc(TIED_SCORES[::-1], TIED_LOSSES[::-1]) == pytest.approx(aurc(TIED_SCORES, TIED_LOSSES))


def test_perfect_and_reversed_rankings():
    losses = [0, 0, 1, 1]
    assert excess_aurc([4, 3, 2, 1], losses) == pytest.approx(0.0)
    assert aurc([1, 2, 3, 4], losses) == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4)


def test_risk_at_coverage_and_coverage_at_risk():
    assert selective_risk_at_coverage(SCORES, LOSSES, 0.5) == pytest.approx(0.5)
    assert selective_risk_at_coverage(SCORES, LOSSES, 0.3) == pytest.approx(0.5)  # ceil(0.3 * 4) = 2 items
    assert selective_risk_at_coverage(SCORES, LOSSES, 0.25) == pytest.approx(0.0)
    assert coverage_at_risk(SCORES, LOSSES, 0.4) == pytest.approx(0.75)  # the largest coverage within the risk
    assert coverage_at_risk(SCORES, LOSSES, 0.0) == pytest.approx(0.25)
    assert coverage_at_risk(TIED_SCORES, TIED_LOSSES, 0.2) == 0.0
    report = selective_report(SCORES, LOSSES, coverages=(0.5,), target_risks=(0.4,))
    assert report["risk@0.5"] == pytest.approx(0.5) and report["coverage@risk0.4"] == pytest.approx(0.75)
    assert report["base_risk"] == pytest.approx(0.5) and report["items"] == 4


def test_threshold_for_a_target_coverage():
    assert choose_threshold(TIED_SCORES, TIED_LOSSES, target_coverage=0.5).threshold == 5
    chosen = choose_threshold(TIED_SCORES, TIED_LOSSES, target_coverage=0.6)  # a tie group goes in whole
    assert (chosen.threshold, chosen.coverage, chosen.risk) == (3, 1.0, 0.25)
    assert choose_threshold(SCORES, LOSSES, target_coverage=0.75).threshold == 0.7


def test_threshold_for_a_target_risk():
    chosen = choose_threshold(TIED_SCORES, TIED_LOSSES, target_risk=0.3)
    assert (chosen.threshold, chosen.coverage, chosen.risk) == (3, 1.0, 0.25)
    assert choose_threshold(TIED_SCORES, TIED_LOSSES, target_risk=0.1).threshold == 5  # none qualifies: top group
    assert choose_threshold(SCORES, LOSSES, target_risk=0.4).threshold == 0.7


def test_threshold_applied_to_a_test_split():
    assert apply_threshold(TIED_SCORES, TIED_LOSSES, 4) == {"coverage": 0.5, "risk": 0.5, "answered": 2, "items": 4}
    assert apply_threshold(SCORES, LOSSES, 10)["risk"] == 0.0  # nothing answered


@pytest.mark.parametrize("kwargs", [{}, {"target_coverage": 0.5, "target_risk": 0.1}, {"target_coverage": 0},
                                    {"target_risk": 2}])
def test_threshold_arguments_are_validated(kwargs):
    with pytest.raises(ConfigError):
        choose_threshold(SCORES, LOSSES, **kwargs)


@pytest.mark.parametrize("scores, losses", [([], []), ([1, 2], [0]), ([float("nan")], [0]), ([1], [2])])
def test_bad_metric_inputs(scores, losses):
    with pytest.raises(ValueError):
        aurc(scores, losses)


def test_selective_responder_answers_or_declines(tiny_model_dir, tiny_judge):
    from selfj_rlhf.core.models import load_causal_lm

    policy, tokenizer = load_causal_lm(str(tiny_model_dir), device="cpu")
    always = SelectiveResponder(policy, tokenizer, tiny_judge, threshold=-1.0, max_new_tokens=5)
    never = SelectiveResponder(policy, tokenizer, tiny_judge, threshold=9.5, max_new_tokens=5, decline_message="No.")
    answered, declined = always.respond("Say hi."), never.respond("Say hi.")
    assert answered["answered"] and answered["output"] == answered["candidate"]
    assert not declined["answered"] and declined["output"] == "No."
    assert declined["candidate"] == answered["candidate"] and declined["score"] == pytest.approx(answered["score"])
    with pytest.raises(ConfigError):
        SelectiveResponder(policy, tokenizer, tiny_judge, threshold=0, n=4)


def test_best_of_n_abstains_below_threshold(tiny_model_dir, tmp_path):
    from selfj_rlhf.rlhf.best_of_n import BestOfNConfig, run_best_of_n

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": f"Q{i}?"}) + "\n" for i in range(3)))
    common = dict(policy=str(tiny_model_dir), dataset=str(prompts), n=2, max_new_tokens=4)
    answered = run_best_of_n(BestOfNConfig(output_dir=str(tmp_path / "all"), **common))
    scores = [json.loads(line)["chosen_score"] for line in (tmp_path / "all" / "candidates.jsonl").read_text().splitlines()]
    cut = sorted(scores)[1]  # the lowest-scoring prompt declines, the others answer
    summary = run_best_of_n(BestOfNConfig(output_dir=str(tmp_path / "cut"), abstain_below=cut, decline_message="Pass.",
                                          **common))
    outputs = json.loads((tmp_path / "cut" / "model_outputs.json").read_text())
    assert answered["answered"] == 3 and summary["answered"] == sum(s >= cut for s in scores) == 2
    assert [o["output"] == "Pass." for o in outputs] == [s < cut for s in scores]
