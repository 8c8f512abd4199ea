import json

import pytest

from selfj_rlhf import SelfJudge
from selfj_rlhf.training.distill import JudgeTrainingConfig
from selfj_rlhf.core.errors import RecordError
from selfj_rlhf.training.train_judge import train_judge


def write_labels(path, n=8):
    rows = [{"instruction": f"Question {i}?", "reference": f"Reference answer {i}.", "response": f"Answer {i}.",
             "label": i % 10, "label_selfeval": 3, "label_similarity": 9 - i % 10} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def training_args(out, **kw):
    from transformers import TrainingArguments

    settings = dict(per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, report_to="none", use_cpu=True,
                    save_strategy="no", logging_steps=1) | kw
    return TrainingArguments(output_dir=str(out), **settings)


def test_train_two_steps_and_reload(tiny_model_dir, tmp_path):
    labels = write_labels(tmp_path / "labels.jsonl")
    cfg = JudgeTrainingConfig(labels=str(labels), base_model=str(tiny_model_dir), lora_r=4, lora_alpha=8)
    out = train_judge(cfg, training_args(tmp_path / "judge"))
    config = json.loads((out / "selfj_config.json").read_text())
    assert config["base_model"] == str(tiny_model_dir) and config["training"]["examples"] == 8
    judge = SelfJudge.from_pretrained(str(out), device="cpu")
    base = SelfJudge.from_pretrained(str(tiny_model_dir), device="cpu")
    trained, untrained = judge.score(["Question 1?"], ["Answer 1."]), base.score(["Question 1?"], ["Answer 1."])
    assert trained != pytest.approx(untrained, abs=1e-6)  # the adapter was trained and is applied
    assert 0 <= trained[0] <= 9


def test_merged_full_judge(tiny_model_dir, tmp_path):
    labels = write_labels(tmp_path / "labels.jsonl")
    cfg = JudgeTrainingConfig(labels=str(labels), base_model=str(tiny_model_dir), lora_r=4, merge_adapter=True,
                              beta=0.0, label_field="label_similarity", lora_layers=[1])
    out = train_judge(cfg, training_args(tmp_path / "judge"))
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    assert 0 <= SelfJudge.from_pretrained(str(out), device="cpu").score(["Q?"], ["A."])[0] <= 9


def test_bad_label_row(tiny_model_dir, tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"instruction": "q", "reference": "r", "response": "a", "label": 12}\n')
    cfg = JudgeTrainingConfig(labels=str(path), base_model=str(tiny_model_dir))
    with pytest.raises(RecordError, match=r"labels.jsonl:1: field 'label': expected an integer class 0-9"):
        train_judge(cfg, training_args(tmp_path / "judge"))


def test_gradient_accumulation_averages_the_loss(tiny_model_dir, tmp_path):
    """With 2 accumulation steps the logged loss is the mean of the micro-batch losses, not their sum."""
    labels = write_labels(tmp_path / "labels.jsonl")
    cfg = JudgeTrainingConfig(labels=str(labels), base_model=str(tiny_model_dir), lora_r=4, alpha=0.3, beta=2.0)
    out = train_judge(cfg, training_args(tmp_path / "judge", gradient_accumulation_steps=2, learning_rate=0.0))
    logged = [e for e in json.loads((out / "train_log.json").read_text()) if "ce_teacher" in e]
    assert logged
    for entry in logged:
        expected = entry["ce_teacher"] + 0.3 * entry["ce_student"] + 2.0 * entry["kl"]
        assert entry["loss"] == pytest.approx(expected, rel=1e-3)


def test_top_layer_training_matches_full_model_training(tiny_model_dir, tmp_path):
    """Training the top layer on cached inputs gives the same judge as LoRA on that layer of the full model:
    the cache, the cut model and the exported adapter's layer indices are all checked by the scores."""
    labels = write_labels(tmp_path / "labels.jsonl")
    common = dict(labels=str(labels), base_model=str(tiny_model_dir), lora_r=4, lora_alpha=8, lora_dropout=0.0)
    full = train_judge(JudgeTrainingConfig(**common, lora_layers=[1]), training_args(tmp_path / "full", seed=3))
    top = train_judge(JudgeTrainingConfig(**common, train_top_layers=1), training_args(tmp_path / "top", seed=3))
    adapter = json.loads((top / "adapter_config.json").read_text())
    assert adapter["layers_to_transform"] == [1]
    assert json.loads((top / "selfj_config.json").read_text())["training"]["train_top_layers"] == 1
    prompts, answers = ["Question 1?", "Question 5?", "Something else"], ["Answer 1.", "Answer 5.", "No idea"]
    base = SelfJudge.from_pretrained(str(tiny_model_dir), device="cpu").score(prompts, answers)
    full_scores = SelfJudge.from_pretrained(str(full), device="cpu").score(prompts, answers)
    top_scores = SelfJudge.from_pretrained(str(top), device="cpu").score(prompts, answers)
    assert top_scores == pytest.approx(full_scores, abs=1e-4)
    assert top_scores != pytest.approx(base, abs=1e-6)  # the adapter was trained and is applied


def test_student_only_top_layer_training(tiny_model_dir, tmp_path):
    labels = write_labels(tmp_path / "labels.jsonl")
    cfg = JudgeTrainingConfig(labels=str(labels), base_model=str(tiny_model_dir), lora_r=4, train_top_layers=1,
                              train_teacher=False, beta=0.0, alpha=1.0)
    out = train_judge(cfg, training_args(tmp_path / "judge"))
    assert 0 <= SelfJudge.from_pretrained(str(out), device="cpu").score(["Q?"], ["A."])[0] <= 9


@pytest.mark.parametrize("kw,match", [({"train_top_layers": 2}, "leaves no frozen layer"),
                                      ({"train_top_layers": -1}, "must be >= 1"),
                                      ({"train_top_layers": 1, "lora_layers": [1]}, "not both")])
def test_top_layer_config_errors(tiny_model_dir, tmp_path, kw, match):
    from selfj_rlhf.core.errors import ConfigError

    cfg = JudgeTrainingConfig(labels=str(write_labels(tmp_path / "labels.jsonl")), base_model=str(tiny_model_dir), **kw)
    with pytest.raises(ConfigError, match=match):
        train_judge(cfg, training_args(tmp_path / "judge"))
