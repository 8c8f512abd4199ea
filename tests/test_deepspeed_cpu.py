"""Judge training under DeepSpeed ZeRO-2 and ZeRO-3 with 2 CPU processes, then reloading the judge."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.deepspeed,
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed extra not installed")]
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage", [2, 3])
def test_train_judge_under_zero(stage, tiny_model_dir, tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"instruction": f"Q{i}?", "reference": f"Reference {i}.",
                                          "response": f"Answer {i}.", "label": i % 10}) + "\n" for i in range(8)))
    out = tmp_path / f"judge_zero{stage}"
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
           f"ds_configs/accelerate_zero{stage}.yaml", "--num_processes", "2", "recipes/train_judge.py",
           "--labels", str(labels), "--base_model", str(tiny_model_dir), "--output_dir", str(out),
           "--max_steps", "2", "--per_device_train_batch_size", "2", "--lora_r", "4", "--report_to", "none",
           "--save_strategy", "no", "--logging_steps", "1"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count("judge saved to") == 2  # both ranks finished
    config = json.loads((out / "selfj_config.json").read_text())
    assert config["training"]["effective_batch_size"] == 4  # 2 per process x 2 processes: a real 2-rank job

    from selfj_rlhf import SelfJudge

    judge = SelfJudge.from_pretrained(str(out), device="cpu")
    assert 0 <= judge.score(["Q1?"], ["Answer 1."])[0] <= 9


def test_rejection_sampling_round_under_zero2(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "instruction": f"Say {i}."}) + "\n" for i in range(4)))
    out = tmp_path / "rs"
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
           "ds_configs/accelerate_zero2.yaml", "--num_processes", "2", "recipes/rejection_sampling.py",
           "--model_name_or_path", str(tiny_model_dir), "--dataset", str(prompts), "--n", "2", "--max_new_tokens", "4",
           "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "1", "--lora_r", "4",
           "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1", "--max_length", "64"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    summary = json.loads((out / "round-00" / "best_of_n" / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["prompts"] == 4  # sampling was sharded over both ranks
    assert json.loads((out / "round-00" / "policy" / "round.json").read_text())["steps"] == 2
