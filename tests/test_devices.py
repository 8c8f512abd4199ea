"""Tests that need a GPU, several GPUs or the hub: marked, and skipped with one line where the machine lacks them
(tests/conftest.py). The same checks at scale, on random-weight models of the real architectures, are
evals/gpu_check.py's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.gpu
def test_judge_on_gpu_matches_cpu_in_fp32_and_bf16_stays_close(tiny_model_dir):
    from selfj_rlhf import SelfJudge

    items = ([f"Name a river in country {i}." for i in range(6)], [f"River {i} flows to the sea." for i in range(6)])
    cpu = SelfJudge.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32").score(*items)
    gpu = SelfJudge.from_pretrained(str(tiny_model_dir), device="cuda", dtype="float32").score(*items)
    bf16 = SelfJudge.from_pretrained(str(tiny_model_dir), device="cuda", dtype="bfloat16").score(*items)
    assert gpu == pytest.approx(cpu, abs=1e-3)
    assert bf16 == pytest.approx(cpu, abs=0.25)


@pytest.mark.multigpu
def test_sampling_on_two_gpus_equals_one_process(tiny_model_dir, tmp_path):
    """Each prompt is seeded from its id: two GPU processes write the samples one process writes."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "instruction": f"Say something about {i}.",
                                           "reference": f"Something about {i}."}) + "\n" for i in range(6)))
    common = ["recipes/sample.py", "--policy", str(tiny_model_dir), "--dataset", str(prompts), "--n", "2",
              "--max_new_tokens", "8", "--dtype", "float32"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, *common, "--output_dir", str(tmp_path / "one")], cwd=REPO, env=env, check=True)
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                    *common, "--output_dir", str(tmp_path / "two")], cwd=REPO, env=env, check=True)
    one = (tmp_path / "one" / "samples.jsonl").read_text().splitlines()
    two = (tmp_path / "two" / "samples.jsonl").read_text().splitlines()
    assert [json.loads(r)["id"] for r in one] == [json.loads(r)["id"] for r in two]
    assert one == two


@pytest.mark.network
def test_hub_specs_resolve_online():
    """What real users pass: a hub dataset spec and a hub model id."""
    from selfj_rlhf.core.models import load_tokenizer
    from selfj_rlhf.data.datasets import iter_records, resolve_dataset

    os.environ.pop("HF_HUB_OFFLINE", None)
    try:
        first = next(iter(iter_records(resolve_dataset("hf:openai/gsm8k:main@test"))))[1]
        assert "question" in first
        assert load_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct").encode("7")
    finally:
        os.environ["HF_HUB_OFFLINE"] = "1"
