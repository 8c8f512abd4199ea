"""DPO pair construction: every strategy and filter, both formats, validation, and TRL's DPOTrainer on the output."""

import json

import pytest

from selfj_rlhf.core.errors import ConfigError, RecordError
from selfj_rlhf.rlhf.pairs import (PairConfig, ScoredCandidate, ScoredPrompt, build_pairs, load_scored_prompts,
                                   select_pair, select_pairs)


def item(scores, texts=None, lengths=None, prompt="Q?", pid="p"):
    texts = texts or [f"answer {i}" for i in range(len(scores))]
    lengths = lengths or [10] * len(scores)
    return ScoredPrompt(pid, prompt, [ScoredCandidate(t, s, n) for t, s, n in zip(texts, scores, lengths)])


def test_max_min_picks_best_and_worst():
    assert select_pair(item([3.0, 7.5, 1.0, 5.0]), PairConfig()) == (1, 2, 6.5)


def test_max_second_picks_runner_up():
    assert select_pair(item([3.0, 7.5, 1.0, 5.0]), PairConfig(strategy="max_second")) == (1, 3, 2.5)


def test_max_random_is_seeded_per_prompt_and_never_the_best():
    cfg = PairConfig(strategy="max_random", pair_seed=3)
    picks = {select_pair(item([3.0, 7.5, 1.0, 5.0], pid=f"p{i}"), cfg)[1] for i in range(40)}
    assert picks == {0, 2, 3}
    assert select_pair(item([3.0, 7.5, 1.0, 5.0], pid="x"), cfg) == select_pair(item([3.0, 7.5, 1.0, 5.0], pid="x"), cfg)


def test_length_aware_penalises_long_answers():
    # raw best is the 300-token answer; with 1.0 per 100 tokens it drops to 6.0 - 3.0 = 3.0
    candidates = item([6.0, 5.0, 1.0], lengths=[300, 50, 100])
    best, worst, margin = select_pair(candidates, PairConfig(strategy="length_aware", length_penalty=1.0))
    assert (best, worst) == (1, 2)
    assert margin == pytest.approx((5.0 - 0.5) - (1.0 - 1.0))


def test_ties_are_dropped():
    assert select_pair(item([4.0, 4.0, 4.0]), PairConfig()) == "tie"


def test_tied_best_keeps_the_first():
    assert select_pair(item([2.0, 6.0, 6.0]), PairConfig(strategy="max_second")) == "tie"
    assert select_pair(item([2.0, 6.0, 6.0]), PairConfig())[:2] == (1, 0)


def test_min_margin_filter():
    assert select_pair(item([4.0, 4.4]), PairConfig(min_margin=0.5)) == "below_min_margin"
    assert select_pair(item([4.0, 4.6]), PairConfig(min_margin=0.5))[:2] == (1, 0)


def test_min_chosen_score_filter():
    assert select_pair(item([1.0, 2.0]), PairConfig(min_chosen_score=3.0)) == "chosen_below_min_score"


def test_length_ratio_filter():
    long_vs_short = item([6.0, 1.0], lengths=[400, 100])
    assert select_pair(long_vs_short, PairConfig(max_length_ratio=2.0)) == "length_ratio"
    assert select_pair(long_vs_short, PairConfig(max_length_ratio=4.0))[:2] == (0, 1)


def test_identical_texts_and_single_candidates_are_dropped():
    assert select_pair(item([6.0, 1.0], texts=["same", "same "]), PairConfig()) == "identical_texts"
    assert select_pair(item([6.0]), PairConfig()) == "too_few_candidates"


def test_report_counts_drop_reasons():
    rows, report = build_pairs([item([1.0, 5.0], pid="a"), item([3.0, 3.0], pid="b"), item([2.0], pid="c")],
                               PairConfig())
    assert [r["id"] for r in rows] == ["a"]
    assert report == {"prompts": 3, "pairs": 1, "dropped": {"too_few_candidates": 1, "tie": 1}, "strategy": "max_min",
                      "length_control": "not recorded"}  # generic rows carry no judge setting
    assert rows[0]["score_chosen"] == 5.0 and rows[0]["score_rejected"] == 1.0 and rows[0]["margin"] == 4.0


def test_standard_and_conversational_formats():
    rows, _ = build_pairs([item([1.0, 5.0])], PairConfig(output_format="standard"))
    assert (rows[0]["prompt"], rows[0]["chosen"], rows[0]["rejected"]) == ("Q?", "answer 1", "answer 0")
    rows, _ = build_pairs([item([1.0, 5.0])], PairConfig(output_format="conversational"))
    assert rows[0]["prompt"] == [{"role": "user", "content": "Q?"}]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "answer 1"}]
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"}]
    rows, _ = build_pairs([item([1.0, 5.0], prompt=chat)], PairConfig())  # auto: message prompts stay messages
    assert rows[0]["prompt"] == chat and rows[0]["rejected"] == [{"role": "assistant", "content": "answer 0"}]
    with pytest.raises(ConfigError, match="message list"):
        build_pairs([item([1.0, 5.0], prompt=chat)], PairConfig(output_format="standard"))


@pytest.mark.parametrize("kwargs, match", [
    ({"strategy": "best_worst"}, "strategy"), ({"min_margin": -1.0}, "min_margin"),
    ({"max_length_ratio": 0.5}, "max_length_ratio"), ({"length_penalty": 1.0}, "length_aware"),
    ({"output_format": "chatml"}, "output_format"), ({"min_chosen_score": float("nan")}, "min_chosen_score"),
])
def test_invalid_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PairConfig(**kwargs)


def test_reads_best_of_n_and_generic_rows(tmp_path):
    path = tmp_path / "scored.jsonl"
    path.write_text(json.dumps({"id": "a", "instruction": "Q?", "candidates": [
        {"text": "x y z", "score": 2.0, "num_tokens": 7}, {"text": "w", "score": 5.0}]}) + "\n"
        + json.dumps({"prompt": [{"role": "user", "content": "Hi"}],
                      "completions": ["hello", [{"role": "assistant", "content": "hey"}]], "scores": [1, 3]}) + "\n")
    first, second = load_scored_prompts(path)
    assert [c.length for c in first.candidates] == [7, 1]  # num_tokens when given, else words
    assert second.id == "scored:2" and [c.text for c in second.candidates] == ["hello", "hey"]


@pytest.mark.parametrize("row, field", [
    ({"id": "a", "instruction": "Q", "candidates": [{"text": "x", "score": float("nan")}]}, "candidates[0].score"),
    ({"id": "a", "instruction": "Q", "candidates": [{"text": "x"}]}, "candidates[0].score"),
    ({"id": "a", "instruction": "Q", "candidates": [{"text": 3, "score": 1}]}, "candidates[0].text"),
    ({"id": "a", "instruction": "", "candidates": []}, "instruction"),
    ({"id": "a", "prompt": "Q", "completions": ["x", "y"], "scores": [1]}, "scores"),
    ({"id": "a", "prompt": "Q", "completions": ["x"], "scores": ["high"]}, "scores[0]"),
    ({"id": True, "prompt": "Q", "completions": ["x"], "scores": [1]}, "id"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, field):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "ok", "prompt": "Q", "completions": ["x"], "scores": [1]}) + "\n"
                    + json.dumps(row, allow_nan=True) + "\n")
    with pytest.raises(RecordError) as err:
        load_scored_prompts(path)
    assert (err.value.line, err.value.field) == (2, field) and "bad.jsonl" in str(err.value)


def test_duplicate_ids_are_rejected(tmp_path):
    path = tmp_path / "dup.jsonl"
    row = json.dumps({"id": "a", "prompt": "Q", "completions": ["x"], "scores": [1]})
    path.write_text(row + "\n" + row + "\n")
    with pytest.raises(RecordError, match="duplicate id 'a'"):
        load_scored_prompts(path)


@pytest.mark.parametrize("output_format", ["standard", "conversational"])
def test_dpo_trainer_accepts_the_pairs(tiny_model_dir, tmp_path, output_format):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    prompts = [item([1.0, 4.0, 2.5], texts=[f"bad {i}", f"good answer {i}", f"ok {i}"], prompt=f"Question {i}?",
                    pid=str(i)) for i in range(4)]
    rows, report = build_pairs(prompts, PairConfig(output_format=output_format))
    assert report["pairs"] == 4
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=2, per_device_train_batch_size=2, report_to="none",
                     bf16=False, save_strategy="no", logging_steps=1, max_length=64)
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset,
                         processing_class=AutoTokenizer.from_pretrained(tiny_model_dir))
    trainer.train()
    assert trainer.state.global_step == 2
    assert all("loss" in h for h in trainer.state.log_history if "epoch" in h and "train_runtime" not in h)


def test_max_below_sd_pairs_the_best_with_clear_but_typical_losers():
    scores = [5.0, 9.0, 5.0, 5.0, 1.0, 2.0, 5.0, 5.0]  # mean 4.625, sd about 2.06: at most 2.56 loses
    cfg = PairConfig(strategy="max_below_sd", max_pairs_per_prompt=3, min_margin=1.0)
    assert select_pairs(item(scores), cfg) == [(1, 5, 7.0), (1, 4, 8.0)]  # the highest-scoring loser first
    assert select_pairs(item(scores), PairConfig(strategy="max_below_sd")) == [(1, 5, 7.0)]
    assert select_pairs(item([5.0, 5.0, 5.0, 6.0]), PairConfig(strategy="max_below_sd")) == "none_below_sd"
    rows, report = build_pairs([item(scores, pid="p")], cfg)
    assert [r["id"] for r in rows] == ["p", "p#1"] and report["pairs"] == 2
    with pytest.raises(ConfigError, match="max_pairs_per_prompt"):
        PairConfig(max_pairs_per_prompt=2)
