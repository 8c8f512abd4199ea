"""The RLHF recipes end to end on the tiny random model: rejection sampling (1 round), DPO (1 round, and on
built pairs), GRPO (2 steps), and a rejection-sampling round killed mid-training that resumes."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfj_rlhf.rlhf.probe_reward import read_probe_rewards

REPO = Path(__file__).resolve().parents[1]
TRAIN_FLAGS = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--lora_r", "4", "--report_to", "none",
               "--save_strategy", "no", "--logging_steps", "1"]


def recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def prompt_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "instruction": f"Name a colour number {i}.",
                                        "reference": f"Colour {i} is blue."}) + "\n" for i in range(4)))
    return path


def loop_flags(tiny_model_dir, prompt_file, out) -> list[str]:
    return ["--model_name_or_path", str(tiny_model_dir), "--dataset", str(prompt_file), "--n", "3",
            "--max_new_tokens", "6", "--output_dir", str(out), "--max_length", "128", *TRAIN_FLAGS]


def test_rejection_sampling_one_round(tiny_model_dir, prompt_file, tmp_path):
    out = tmp_path / "rs"
    recipe("rejection_sampling").main(loop_flags(tiny_model_dir, prompt_file, out))
    round0 = out / "round-00"
    rows = [json.loads(line) for line in (round0 / "sft_data.jsonl").read_text().splitlines()]
    candidates = [json.loads(line) for line in (round0 / "best_of_n" / "candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 4  # no threshold: every prompt keeps its best candidate
    for row, cand in zip(rows, candidates):
        best = max(cand["candidates"], key=lambda c: c["score"])
        assert row["messages"][1] == {"role": "assistant", "content": best["text"]}  # chat template -> messages
    info = json.loads((round0 / "policy" / "round.json").read_text())
    assert info["steps"] == 2 and info["judge"] == str(tiny_model_dir)
    assert [h["step"] for h in info["log_history"] if "loss" in h] == [1, 2]  # the training curve, logged each step
    history = json.loads((out / "rounds.json").read_text())
    assert history[0]["kept"] == 4 and history[0]["steps"] == 2
    from selfj_rlhf.core.models import load_causal_lm

    model, _ = load_causal_lm(str(round0 / "policy"), device="cpu")  # merged, loadable as a plain policy
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_rejection_sampling_threshold_that_keeps_nothing_is_a_clear_error(tiny_model_dir, prompt_file, tmp_path):
    from selfj_rlhf.core.errors import ConfigError

    with pytest.raises(ConfigError, match="score_threshold"):
        recipe("rejection_sampling").main(loop_flags(tiny_model_dir, prompt_file, tmp_path / "rs")
                                          + ["--score_threshold", "9.5"])
    assert not (tmp_path / "rs" / "round-00" / "sft_data.jsonl").exists()


def test_dpo_one_round_then_a_second_round_reuses_the_first(tiny_model_dir, prompt_file, tmp_path, capsys):
    out = tmp_path / "dpo"
    recipe("dpo").main(loop_flags(tiny_model_dir, prompt_file, out))
    pairs = [json.loads(line) for line in (out / "round-00" / "pairs.jsonl").read_text().splitlines()]
    report = json.loads((out / "round-00" / "pairs_report.json").read_text())
    assert report["pairs"] == len(pairs) > 0 and report["pairs"] + sum(report["dropped"].values()) == 4
    assert all(isinstance(p["prompt"], list) and p["margin"] > 0 for p in pairs)  # conversational, no ties
    first_policy = (out / "round-00" / "policy" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    recipe("dpo").main(loop_flags(tiny_model_dir, prompt_file, out) + ["--rounds", "2"])
    assert "[round-00] policy: done, skipped" in capsys.readouterr().out
    assert (out / "round-00" / "policy" / "model.safetensors").stat().st_mtime_ns == first_policy
    assert json.loads((out / "round-01" / "policy" / "round.json").read_text())["trained_from"] == \
        str(out / "round-00" / "policy")
    assert [r["round"] for r in json.loads((out / "rounds.json").read_text())] == [0, 1]


def test_dpo_on_built_pairs(tiny_model_dir, prompt_file, tmp_path):
    candidates = tmp_path / "cands.jsonl"
    candidates.write_text("".join(json.dumps({"id": f"q{i}", "instruction": f"Q{i}?", "candidates": [
        {"text": f"good {i}", "score": 7.0}, {"text": f"bad {i}", "score": 2.0}]}) + "\n" for i in range(4)))
    pairs = tmp_path / "pairs" / "pairs.jsonl"
    recipe("build_pairs").main(["--candidates", str(candidates), "--output_file", str(pairs),
                                "--output_format", "conversational"])
    assert json.loads((tmp_path / "pairs" / "pairs_report.json").read_text())["pairs"] == 4
    out = tmp_path / "dpo"
    recipe("dpo").main(loop_flags(tiny_model_dir, prompt_file, out) + ["--pairs_file", str(pairs)])
    assert not (out / "round-00" / "best_of_n").exists()  # no sampling when the pairs are given
    assert json.loads((out / "round-00" / "policy" / "round.json").read_text())["steps"] == 2


@pytest.mark.parametrize("conversational", ["true", "false"])
def test_grpo_two_steps(tiny_model_dir, prompt_file, tmp_path, conversational):
    out = tmp_path / "grpo"
    recipe("grpo").main(["--model_name_or_path", str(tiny_model_dir), "--dataset", str(prompt_file),
                         "--conversational", conversational, "--num_generations", "2", "--max_completion_length", "8",
                         "--overlong_cache", "4", "--output_dir", str(out), "--probe_prompts", str(prompt_file),
                         "--probe_every", "1", "--probe_max_prompts", "2", *TRAIN_FLAGS])
    info = json.loads((out / "policy" / "round.json").read_text())
    assert info["recipe"] == "grpo" and info["steps"] == 2
    assert [h["step"] for h in info["log_history"] if "reward" in h] == [1, 2]  # the reward curve
    probes = read_probe_rewards(out)  # the reward on fixed prompts: at the start and after each step
    assert [row["step"] for row in probes] == [0, 1, 2]
    assert all(len(row["scores"]) == 2 and 0 <= row["score_mean"] <= 9 and row["tokens_mean"] <= 8 for row in probes)


def test_the_probe_callback_measures_each_step_once_and_leaves_the_model_training(tiny_model_dir, tmp_path):
    from transformers import TrainerState

    from selfj_rlhf.core.models import load_causal_lm
    from selfj_rlhf.rlhf.probe_reward import ProbeRewardCallback

    model, tokenizer = load_causal_lm(str(tiny_model_dir))
    model.train()
    calls = []

    def score(instructions, answers):
        calls.append(list(instructions))
        return [float(len(a) % 10) for a in answers]

    callback = ProbeRewardCallback(["Say a.", "Say b.", "Say c."], score, tokenizer, tmp_path, every=2,
                                   max_new_tokens=4, batch_size=2)
    state = TrainerState()
    for step in (0, 1, 2, 2, 3):  # step 2 twice: a resumed run reaches it again
        state.global_step = step
        callback.on_step_end(None, state, None, model=model)
    assert [row["step"] for row in read_probe_rewards(tmp_path)] == [0, 2] and len(calls) == 2
    assert calls[0] == ["Say a.", "Say b.", "Say c."] and model.training
    with pytest.raises(ValueError, match="every"):
        ProbeRewardCallback([], score, tokenizer, tmp_path, every=0, max_new_tokens=4)


def test_killed_rejection_sampling_round_resumes_without_repeating_stages(tiny_model_dir, prompt_file, tmp_path):
    out = tmp_path / "rs"
    cmd = [sys.executable, "recipes/rejection_sampling.py", *loop_flags(tiny_model_dir, prompt_file, out)]
    cmd[cmd.index("--max_steps") + 1] = "400"
    cmd[cmd.index("--save_strategy") + 1] = "steps"
    cmd += ["--save_steps", "5"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    trainer_dir = out / "round-00" / "trainer"
    deadline = time.time() + 300
    while not any(trainer_dir.glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "round-00" / "policy").exists()
    candidates = out / "round-00" / "best_of_n" / "candidates.jsonl"
    sft_data = out / "round-00" / "sft_data.jsonl"
    stamps = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in (candidates, sft_data)}

    cmd[cmd.index("--max_steps") + 1] = "60"  # finish sooner; the resumed state carries the step count
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "[round-00] best-of-n: done, skipped" in result.stdout
    assert "[round-00] training: resuming from" in result.stdout
    for path, stamp in stamps.items():
        assert (path.stat().st_mtime_ns, path.read_bytes()) == stamp  # finished stages were not redone
    info = json.loads((out / "round-00" / "policy" / "round.json").read_text())
    assert info["steps"] == 60
    assert not (out / "round-00" / ".policy.tmp").exists()


def test_killed_after_training_finished_publishes_without_an_extra_step(tiny_model_dir, prompt_file, tmp_path):
    import shutil

    out = tmp_path / "rs"
    flags = loop_flags(tiny_model_dir, prompt_file, out)
    flags[flags.index("--save_strategy") + 1] = "steps"
    flags += ["--save_steps", "2"]
    recipe("rejection_sampling").main(flags)
    shutil.rmtree(out / "round-00" / "policy")  # as if killed while publishing: checkpoint-2 is the last state
    recipe("rejection_sampling").main(flags)
    assert json.loads((out / "round-00" / "policy" / "round.json").read_text())["steps"] == 2  # the Trainer would do 3


def test_rejection_sampling_arms_pick_from_one_candidates_file(tiny_model_dir, prompt_file, tmp_path):
    """The controls of a rejection-sampling experiment: the same scored candidates, picked by the judge's score, at
    random or by length, with the candidates cut at the token cap dropped first."""
    candidates = tmp_path / "cands.jsonl"
    candidates.write_text("".join(json.dumps({"id": f"q{i}", "instruction": f"Name colour {i}.", "candidates": [
        {"text": "a long answer cut at the cap and scored highest", "score": 9.0, "num_tokens": 8, "finished": False},
        {"text": f"best finished {i}", "score": 6.0, "num_tokens": 4, "finished": True},
        {"text": f"short {i}", "score": 2.0, "num_tokens": 2, "finished": True},
        {"text": f"other {i}", "score": 1.0, "num_tokens": 3, "finished": True}]}) + "\n" for i in range(4)))
    chosen = {}
    for pick in ("highest_score", "shortest", "random"):
        out = tmp_path / pick
        recipe("rejection_sampling").main(loop_flags(tiny_model_dir, prompt_file, out) + [
            "--candidates_file", str(candidates), "--pick", pick, "--drop_unfinished", "true"])
        round0 = out / "round-00"
        assert not (round0 / "best_of_n").exists()  # nothing sampled: round 0 read the file
        rows = [json.loads(line) for line in (round0 / "sft_data.jsonl").read_text().splitlines()]
        chosen[pick] = [row["messages"][1]["content"] for row in rows]
        report = json.loads((round0 / "sft_report.json").read_text())
        assert report["pick"] == pick and report["dropped_unfinished"] == 4 and report["kept"] == 4
    assert chosen["highest_score"] == [f"best finished {i}" for i in range(4)]
    assert chosen["shortest"] == [f"short {i}" for i in range(4)]
    assert all(text in (f"best finished {i}", f"short {i}", f"other {i}") for i, text in enumerate(chosen["random"]))


def test_a_missing_candidates_file_is_named_when_the_run_starts(tiny_model_dir, prompt_file, tmp_path):
    """A recipe config may name an earlier stage's output: it parses, and the run refuses before writing anything."""
    from selfj_rlhf.core.errors import ConfigError

    out = tmp_path / "rs"
    missing = tmp_path / "not_yet" / "judge.jsonl"
    with pytest.raises(ConfigError, match=f"candidates_file {missing} does not exist"):
        recipe("rejection_sampling").main(loop_flags(tiny_model_dir, prompt_file, out) + [
            "--candidates_file", str(missing)])
    assert not (out / "round-00").exists()


def test_the_random_pick_depends_only_on_the_seed_and_the_prompt():
    from selfj_rlhf.rlhf.pairs import ScoredCandidate, ScoredPrompt
    from selfj_rlhf.rlhf.rounds import pick_candidate

    item = ScoredPrompt("q1", "Q?", [ScoredCandidate(f"answer {i}", float(i), i + 1) for i in range(8)])
    picks = {pick_candidate(item, "random", False, seed) for seed in range(20)}
    assert len(picks) > 1 and pick_candidate(item, "random", False, 3) == pick_candidate(item, "random", False, 3)
    item.candidates = [ScoredCandidate("cut", 9.0, 5, finished=False)]
    assert pick_candidate(item, "highest_score", True, 0) is None and pick_candidate(item, "shortest", False, 0) == 0
