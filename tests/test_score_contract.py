"""One score contract: every judge scores on 0-9, every scoring path applies the same length-control setting, and
one text normalisation makes in-process scoring and both forms of the judge server agree."""

import json

import httpx
import pytest
import torch

from selfj_rlhf import SelfJReward, SelfJRewardConfig, SelfJudge
from selfj_rlhf.rlhf.best_of_n import BestOfNConfig, run_best_of_n
from selfj_rlhf.core.errors import ConfigError
from selfj_rlhf.judge.self_judge import LENGTH_CONTROL_DEFAULT
from selfj_rlhf.rlhf.pairs import PairConfig, build_pairs, load_scored_prompts
from selfj_rlhf.judge.head import LengthControl, ScalarHead, ScoreMap
from selfj_rlhf.serving.server import ServeConfig, create_app
from selfj_rlhf.testing import ServerThread

ITEMS = [("Name a fruit.", "An apple."), ("Name a fruit.", "banana " * 40), ("Say hi.", ""),
         ("Explain gravity.", "Mass attracts mass; the force falls with the square of the distance.")]


def wide_scalar_judge(tiny_judge, score_map=None, length_control=False) -> SelfJudge:
    """A layer-1 scalar head with large random weights: raw scores far outside 0-9, so the map and clipping matter."""
    torch.manual_seed(0)
    head = ScalarHead(tiny_judge.model.config.hidden_size, 1)
    head.linear.weight.data.normal_(0.0, 1000.0)
    head.linear.bias.data.fill_(-77.0)  # raw scores from about -4 to 15 on these items
    return SelfJudge(tiny_judge.model, tiny_judge.tokenizer, max_length=256, base_model=tiny_judge.base_model,
                     head=head, length_fit=LengthControl(0.7, 3.0), score_map=score_map, length_control=length_control)


@pytest.fixture(scope="module")
def judge_dir(tiny_judge, tmp_path_factory):
    directory = tmp_path_factory.mktemp("contract") / "judge"
    wide_scalar_judge(tiny_judge, ScoreMap(center=0.0, scale=2.0)).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("score_map", [None, ScoreMap(center=0.0, scale=2.0)])
@pytest.mark.parametrize("length_control", [False, True])
@pytest.mark.parametrize("share_prefix", ["never", "always"])
def test_every_judge_scores_within_0_9(tiny_judge, score_map, length_control, share_prefix):
    judge = wide_scalar_judge(tiny_judge, score_map, length_control)
    judge.share_prefix = share_prefix
    details = judge.score_details(*zip(*ITEMS))
    assert any(not 0 <= d.raw_score <= 9 for d in details)  # the head's own output leaves the scale ...
    assert all(0 <= d.score <= 9 for d in details)  # ... the score never does
    assert all(d.length_control is length_control for d in details)
    assert all(0 <= s <= 9 for s in tiny_judge.score(*zip(*ITEMS)))  # the digit readout is an expectation over 0-9


def test_scalar_head_without_a_map_is_clipped_and_a_map_keeps_the_order(tiny_judge):
    clipped = wide_scalar_judge(tiny_judge).score_details(*zip(*ITEMS))
    mapped = wide_scalar_judge(tiny_judge, ScoreMap(center=0.0, scale=2.0)).score_details(*zip(*ITEMS))
    assert [d.score for d in clipped] == [min(9.0, max(0.0, d.raw_score)) for d in clipped]
    raw_order = sorted(range(len(ITEMS)), key=lambda i: mapped[i].raw_score)
    assert raw_order == sorted(range(len(ITEMS)), key=lambda i: mapped[i].score)


def test_every_path_applies_the_same_length_control(tiny_model_dir, judge_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "instruction": f"Question {i}: name a fruit."}) + "\n"
                               for i in range(2)))
    run_best_of_n(BestOfNConfig(policy=str(tiny_model_dir), judge=str(judge_dir), dataset=str(prompts), n=3,
                                max_new_tokens=8, output_dir=str(tmp_path / "bon")))
    rows = [json.loads(line) for line in (tmp_path / "bon" / "candidates.jsonl").read_text().splitlines()]
    assert all(row["length_control"] is LENGTH_CONTROL_DEFAULT for row in rows)
    instructions = [row["instruction"] for row in rows for _ in row["candidates"]]
    texts = [c["text"] for row in rows for c in row["candidates"]]
    best_of_n = [c["score"] for row in rows for c in row["candidates"]]

    pairs, report = build_pairs(load_scored_prompts(tmp_path / "bon" / "candidates.jsonl"), PairConfig())
    assert report["length_control"] == [str(LENGTH_CONTROL_DEFAULT)]
    for pair in pairs:
        assert pair["length_control"] is LENGTH_CONTROL_DEFAULT
        assert pair["score_chosen"] in best_of_n and pair["score_rejected"] in best_of_n

    reward = SelfJReward(judge=str(judge_dir))(prompts=instructions, completions=texts)
    assert reward == pytest.approx(best_of_n, abs=1e-4)

    config = SelfJRewardConfig(judge=str(judge_dir))
    with ServerThread(create_app(config.load_judge(), config, ServeConfig(max_wait_ms=20))) as url:
        answer = httpx.post(url + "/get_reward", json={"prompts": instructions, "responses": texts}, timeout=60).json()
    assert [9 * s for s in answer["scores"]] == pytest.approx(best_of_n, abs=1e-4)

    # the other setting, asked for on the same path, changes the scores (so the comparison above means something)
    off = SelfJReward(judge=str(judge_dir), length_control=not LENGTH_CONTROL_DEFAULT)(prompts=instructions,
                                                                                       completions=texts)
    assert off != pytest.approx(best_of_n, abs=1e-4)


def test_whitespace_edged_items_score_the_same_in_process_and_through_both_server_forms(tiny_judge, judge_dir):
    judge = SelfJudge.from_pretrained(str(judge_dir), dtype="float32")
    instructions = [" Describe the ", "\tName a colour.\n", "What is 2+2?"]
    responses = ["\n  The sky is blue. \n", " blue", "4  \n\n"]
    in_process = judge.score(instructions, responses)
    assert in_process == pytest.approx(judge.score([i.strip() for i in instructions],
                                                   [r.strip() for r in responses]), abs=1e-6)
    templated = [judge.tokenizer.apply_chat_template([{"role": "user", "content": i}], tokenize=False,
                                                     add_generation_prompt=True) for i in instructions]
    config = SelfJRewardConfig(judge=str(judge_dir), dtype="float32")
    with ServerThread(create_app(judge, config, ServeConfig(max_wait_ms=20))) as url:
        forms = {
            "responses, plain prompts": {"prompts": instructions, "responses": responses},
            "responses, templated prompts": {"prompts": templated, "responses": responses},
            "OpenRLHF query": {"prompts": templated, "query": [p + r + "<|im_end|>" for p, r in zip(templated, responses)]},
        }
        for name, body in forms.items():
            scores = httpx.post(url + "/get_reward", json=body, timeout=60).json()["scores"]
            assert [9 * s for s in scores] == pytest.approx(in_process, abs=1e-4), name


def test_length_control_on_a_judge_without_a_fit_is_an_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="not trained with a length fit"):
        SelfJudge.from_pretrained(str(tiny_model_dir), length_control=True)
    assert SelfJudge.from_pretrained(str(tiny_model_dir)).length_control is False
