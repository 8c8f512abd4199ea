"""The echo guard: an answer that copies its instruction back scores the guard's floor, in any judge, saved with it;
an answer that quotes, transforms or restates-then-answers its instruction does not."""

import json

import pytest

from selfj_rlhf import SelfJudge
from selfj_rlhf.core.errors import ConfigError
from selfj_rlhf.judge.echo_guard import EchoGuard
from selfj_rlhf.judge.self_judge import JUDGE_CONFIG_NAME

QUESTION = "Rewrite the following sentence in the passive voice: The committee approved the new budget on Monday."


def test_the_whole_instruction_copied_back_is_an_echo():
    guard = EchoGuard()
    assert guard.echoes(QUESTION, QUESTION)
    assert guard.echoes(QUESTION, "  " + QUESTION.replace(" ", "\n") + "!")  # spacing and punctuation do not hide it
    assert guard.shares(QUESTION, QUESTION) == (1.0, 1.0)


@pytest.mark.parametrize("answer", [
    "The new budget was approved by the committee on Monday.",  # the task done
    "The committee approved the new budget on Monday.",  # a quote of the input alone covers too little of it
    QUESTION.upper(),  # a transformation of the text (case is kept)
    "Rewrite the following sentence in the passive voice: The committee approved the new budget on Monday. Answer: "
    "the new budget was approved by the committee on Monday, which is the passive form of the sentence.",
    "",
    "Yes",
])
def test_answers_that_use_the_instruction_are_not_echoes(answer):
    assert not EchoGuard().echoes(QUESTION, answer)


def test_a_short_instruction_without_an_ngram_never_fires():
    assert EchoGuard().shares("Hi there", "Hi there") == (0.0, 0.0)
    assert EchoGuard(n=1).echoes("Hi there", "Hi there")


def test_config_round_trips_and_bad_values_are_refused():
    guard = EchoGuard(n=4, min_copied=0.8, min_coverage=0.7, floor=1.0)
    assert EchoGuard.from_dict(json.loads(json.dumps(guard.to_dict()))) == guard
    for bad in (dict(n=0), dict(min_copied=0.0), dict(min_coverage=1.5), dict(floor=10.0)):
        with pytest.raises(ConfigError):
            EchoGuard(**bad)
    with pytest.raises(ConfigError, match="kind"):
        EchoGuard.from_dict({**guard.to_dict(), "kind": "other"})


def test_a_judge_with_the_guard_floors_echoes_only(tiny_judge):
    guarded = SelfJudge(tiny_judge.model, tiny_judge.tokenizer, tiny_judge.template, base_model="tiny",
                        echo_guard=EchoGuard(floor=0.0))
    answers = [QUESTION, "The new budget was approved by the committee on Monday.",
               QUESTION + "<|im_end|>"]  # the guard reads the cleaned text, as the model does
    plain = tiny_judge.score_details([QUESTION] * 3, answers)
    details = guarded.score_details([QUESTION] * 3, answers)
    assert [d.echo_floored for d in details] == [True, False, True]
    assert details[0].score == details[2].score == 0.0
    assert details[0].raw_score == pytest.approx(plain[0].raw_score)  # what the model read is kept
    assert details[1].score == pytest.approx(plain[1].score) and not plain[0].echo_floored


def test_the_guard_is_saved_and_loaded_with_the_judge(tiny_judge, tiny_model_dir, tmp_path):
    from selfj_rlhf.judge.head import ScalarHead

    head = ScalarHead(tiny_judge.model.config.hidden_size, layers=(1,))
    judge = SelfJudge(tiny_judge.model, tiny_judge.tokenizer, tiny_judge.template, base_model=str(tiny_model_dir),
                      head=head, echo_guard=EchoGuard(min_copied=0.8))
    judge.save_pretrained(tmp_path / "judge")
    assert json.loads((tmp_path / "judge" / JUDGE_CONFIG_NAME).read_text())["echo_guard"]["min_copied"] == 0.8
    loaded = SelfJudge.from_pretrained(str(tmp_path / "judge"), device="cpu")
    assert loaded.echo_guard == EchoGuard(min_copied=0.8)
    assert loaded.score([QUESTION], [QUESTION]) == [0.0]

