"""The evaluation helpers that decide a reported number: paired timing ratios, balanced prompt subsets, curves."""

import argparse
import json

import pytest

from evals.lib.timing import interleaved_times, paired_ratio
from evals.rl_loop_check import training_runs, write_subset


def test_interleaved_times_alternate_the_order_and_keep_rounds_aligned():
    order = []
    times = interleaved_times({name: (lambda n=name: order.append(n)) for name in "abc"}, {"a": 3, "b": 3, "c": 2})
    assert order == ["a", "b", "c", "c", "b", "a", "a", "b"]
    assert [len(times[n]) for n in "abc"] == [3, 3, 2]


def test_paired_ratio_is_the_median_of_same_round_ratios():
    # a slow spell in round 2 slows both methods; the best times (1.0 vs 1.1) would say 0.91x, the pairs say 1.0x
    never = [1.1, 3.0, 1.2, 1.0]
    auto = [1.1, 3.0, 1.2, 1.1]
    assert paired_ratio(never, auto) == pytest.approx(1.0)
    assert min(never) / min(auto) == pytest.approx(1.0 / 1.1)
    with pytest.raises(ValueError):
        paired_ratio([1.0, 2.0], [1.0])


def _prompts(path, counts):
    rows = [{"id": f"{source}:{k}", "instruction": f"{source} {k}", "reference": "r"}
            for source, count in counts.items() for k in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_subset_takes_sources_in_turn(tmp_path):
    source, output = tmp_path / "prompts.jsonl", tmp_path / "out" / "train.jsonl"
    _prompts(source, {"flask": 3, "gsm8k": 4})
    write_subset(argparse.Namespace(prompts=str(source), per_source=2, output=str(output)))
    ids = [json.loads(line)["id"] for line in output.read_text().splitlines()]
    assert ids == ["flask:0", "gsm8k:0", "flask:1", "gsm8k:1"]  # any leading part stays balanced
    with pytest.raises(SystemExit, match="fewer than 4 prompts of {'flask': 3}"):
        write_subset(argparse.Namespace(prompts=str(source), per_source=4, output=str(tmp_path / "x.jsonl")))
    assert not (tmp_path / "x.jsonl").exists()


def test_training_curves_count_steps_on_across_rounds(tmp_path):
    for k, losses in enumerate([[2.0, 1.5], [1.4, 1.2]]):
        policy = tmp_path / "rs" / f"round-{k:02d}" / "policy"
        policy.mkdir(parents=True)
        history = [{"step": s + 1, "loss": v} for s, v in enumerate(losses)] + [{"step": 2, "train_runtime": 1.0}]
        (policy / "round.json").write_text(json.dumps({"steps": 2, "first_loss": losses[0], "last_loss": losses[-1],
                                                       "training_s": 1.0, "log_history": history}))
    (tmp_path / "rs" / "rounds.json").write_text(json.dumps([{"round": 0}, {"round": 1}]))
    grpo = tmp_path / "grpo" / "policy"
    grpo.mkdir(parents=True)
    (grpo / "round.json").write_text(json.dumps({"steps": 1, "first_loss": 0.1, "last_loss": 0.1, "training_s": 2.0,
                                                 "log_history": [{"step": 1, "loss": 0.1, "reward": 4.2}]}))
    runs, curves = training_runs([str(tmp_path / "rs"), str(tmp_path / "grpo"), str(tmp_path / "missing")])
    assert [c["step"] for c in curves["rs"]] == [1, 2, 3, 4]
    assert [c["loss"] for c in curves["rs"]] == [2.0, 1.5, 1.4, 1.2]
    assert curves["grpo"] == [{"round": 0, "step": 1, "loss": 0.1, "reward": 4.2}]
    assert runs["rs"] == [{"round": 0}, {"round": 1}]
    assert runs["grpo"] == [{"round": 0, "steps": 1, "first_loss": 0.1, "last_loss": 0.1, "training_s": 2.0}]
    assert "missing" not in runs


def test_greedy_answers_resume_after_a_kill_without_losing_or_duplicating_rows(tiny_model_dir, tmp_path):
    from evals.lib.greedy import greedy_answers
    from selfj_rlhf.core.errors import ConfigError
    from selfj_rlhf.data.prompts import load_prompts

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{k}", "instruction": f"Say {k}.", "reference": "r"}) + "\n"
                            for k in range(5)))
    prompts = load_prompts(str(path))
    whole = greedy_answers(str(tiny_model_dir), prompts, tmp_path / "whole", max_new_tokens=6, batch_size=2)
    assert [row["id"] for row in whole] == [p.id for p in prompts]
    assert all(row["num_tokens"] <= 6 and row["finished"] == (row["num_tokens"] < 6) for row in whole)
    killed = tmp_path / "killed"
    greedy_answers(str(tiny_model_dir), prompts[:3], killed, max_new_tokens=6, batch_size=2)
    with open(killed / "answers.jsonl", "a") as fh:
        fh.write('{"id": "p3", "te')  # a row torn by the kill
    assert greedy_answers(str(tiny_model_dir), prompts, killed, max_new_tokens=6, batch_size=2) == whole
    assert len((killed / "answers.jsonl").read_text().splitlines()) == 5
    with pytest.raises(ConfigError, match="spec.json"):
        greedy_answers(str(tiny_model_dir), prompts, killed, max_new_tokens=8)
