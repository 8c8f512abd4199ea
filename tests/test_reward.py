import pickle

import pytest

from selfj_rlhf import SelfJReward, SelfJRewardConfig
from selfj_rlhf.core.errors import ConfigError
from selfj_rlhf.judge.protocols import PairwiseJudge, RankJudge
from selfj_rlhf.judge.reward_signal import message_text, prompt_instruction

PROMPTS = ["What is 2+2?", "What is 2+2?", "Name a colour.", "Name a colour."]
COMPLETIONS = ["4", "It is five.", "blue", "A colour is a property of light; blue is one."]


def test_standard_format_matches_judge(tiny_judge):
    reward = SelfJReward(judge_instance=tiny_judge)
    assert reward(PROMPTS, COMPLETIONS) == pytest.approx(tiny_judge.score(PROMPTS, COMPLETIONS), abs=1e-6)


def test_conversational_format(tiny_judge):
    reward = SelfJReward(judge_instance=tiny_judge)
    prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}] for p in PROMPTS]
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    assert reward(prompts, completions) == pytest.approx(reward(PROMPTS, COMPLETIONS), abs=1e-6)


def test_multi_turn_instruction_keeps_context():
    prompt = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
              {"role": "user", "content": "Now count to 3."}]
    assert prompt_instruction(prompt) == "User: Hi\n\nAssistant: Hello!\n\nUser: Now count to 3."
    assert message_text([{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]) == "x"


def test_transforms_and_length_penalty(tiny_judge):
    raw = SelfJReward(judge_instance=tiny_judge)(PROMPTS, COMPLETIONS)
    centered = SelfJReward(judge_instance=tiny_judge, transform="centered")(PROMPTS, COMPLETIONS)
    zscore = SelfJReward(judge_instance=tiny_judge, transform="zscore")(PROMPTS, COMPLETIONS)
    mean = sum(raw) / len(raw)
    assert centered == pytest.approx([r - mean for r in raw], abs=1e-6)
    assert sum(zscore) == pytest.approx(0, abs=1e-5)
    penalised = SelfJReward(judge_instance=tiny_judge, length_penalty=1.0)(PROMPTS, COMPLETIONS)
    lengths = [len(tiny_judge.tokenizer.encode(c, add_special_tokens=False)) for c in COMPLETIONS]
    assert penalised == pytest.approx([r - n / 100 for r, n in zip(raw, lengths)], abs=1e-6)


def test_reference_mode_and_missing_reference(tiny_judge):
    reward = SelfJReward(judge_instance=tiny_judge, use_reference=True)
    refs = ["4", "4", "", "red"]
    out = reward(PROMPTS, COMPLETIONS, reference=refs)
    assert out[2] is None
    assert out[0] == pytest.approx(tiny_judge.score([PROMPTS[0]], [COMPLETIONS[0]], ["4"])[0], abs=1e-6)
    with pytest.raises(KeyError, match="no 'reference' column"):
        reward(PROMPTS, COMPLETIONS)


def test_log_metric_reports_statistics(tiny_judge):
    logged = {}
    SelfJReward(judge_instance=tiny_judge)(PROMPTS, COMPLETIONS, log_metric=lambda k, v: logged.__setitem__(k, v))
    assert set(logged) == {"selfj/score_mean", "selfj/score_std", "selfj/digit_mass", "selfj/truncated_frac"}
    assert 0 <= logged["selfj/score_mean"] <= 9


def test_picklable_and_named(tiny_judge):
    reward = SelfJReward(judge_instance=tiny_judge)
    clone = pickle.loads(pickle.dumps(reward))
    assert clone.__name__ == "selfj" and clone._judge is None
    from selfj_rlhf import selfj_reward  # the path `trl grpo --reward_funcs selfj_rlhf.selfj_reward` loads

    assert pickle.loads(pickle.dumps(selfj_reward)).__name__ == "selfj"


def test_config_validation():
    with pytest.raises(ConfigError, match="transform"):
        SelfJRewardConfig(transform="softmax")
    with pytest.raises(ConfigError, match="length_penalty"):
        SelfJRewardConfig(length_penalty=-1)


def test_judge_protocols(tiny_judge):
    assert isinstance(tiny_judge, PairwiseJudge) and isinstance(tiny_judge, RankJudge)


@pytest.mark.parametrize("conversational", [False, True])
def test_grpo_trains_two_steps(tiny_model_dir, tiny_judge, tmp_path, conversational):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    questions = ["What is 2+2?", "Name a colour.", "Say hello.", "Count to three."]
    if conversational:
        rows = {"prompt": [[{"role": "user", "content": q}] for q in questions]}
    else:
        rows = {"prompt": questions}
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, max_steps=2, learning_rate=1e-3, report_to="none",
                      use_cpu=True, logging_steps=1, save_strategy="no", bf16=False)
    trainer = GRPOTrainer(model=str(tiny_model_dir), reward_funcs=[SelfJReward(judge_instance=tiny_judge)], args=args,
                          train_dataset=Dataset.from_dict(rows))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "rewards/selfj/mean" in entry]
    assert len(logged) == 2 and all(0 <= e["rewards/selfj/mean"] <= 9 for e in logged)
    assert any("selfj/score_mean" in entry for entry in trainer.state.log_history)


def test_judge_scores_are_the_judge_s_before_any_transform(tiny_judge):
    from selfj_rlhf.rlhf.reward import SelfJReward

    reward = SelfJReward(judge_instance=tiny_judge, transform="zscore", length_penalty=1.0)
    items = (["Name a colour.", "Name a colour."], ["Red.", "Blue is a colour."])
    assert reward.judge_scores(*items) == pytest.approx(tiny_judge.score(*items))
