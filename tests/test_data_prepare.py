"""``selfj data prepare``: a SELFJ_DATA_DIR from raw files and hub copies (simulated offline), the RL prompt files,
and the report of what can run."""

import dataclasses
import json
from pathlib import Path

import pytest

import selfj_rlhf.data.datasets
from selfj_rlhf.data.prepare import DataPrepareConfig, check, consumers, prepare
from selfj_rlhf.data.datasets import LOCAL_FILES, PRESETS
from selfj_rlhf.core.errors import ConfigError
from selfj_rlhf.data.datasets import iter_records

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def raw_sources(tmp_path, monkeypatch):
    """Raw-layout files of FLASK, GPTeacher and GSM8K, and AlpacaEval's hub copy served from disk."""
    monkeypatch.setattr(selfj_rlhf.data.datasets, "_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.delenv("SELFJ_DATA_DIR", raising=False)
    flask = write(tmp_path / "FLASK" / "flask_evaluation.jsonl", "".join(json.dumps(
        {"idx": i, "instruction": f"Explain idea number {i}.", "answer": f"Idea {i} is explained at length here.",
         "task": "wizardlm", "skill": [], "domain": ["Culture"], "difficulty": 1}) + "\n" for i in range(4)))
    gpteacher = write(tmp_path / "GPTeacher" / "codegen-instruct.json", json.dumps(
        [{"instruction": f"Write function {i}.", "input": "", "response": f"def function_{i}(): return {i}  # done"}
         for i in range(4)]))
    gsm8k = tmp_path / "gsm8k"
    for split in ("train", "test"):
        write(gsm8k / f"{split}.jsonl", "".join(json.dumps(
            {"question": f"What is {i} + {i} ({split})?",
             "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"}) + "\n"
            for i in range(4)))
    alpaca = write(tmp_path / "hub" / "alpaca_eval_gpt4_baseline.json", json.dumps(
        [{"instruction": "Name a colour.", "output": "Blue.", "generator": "gpt4", "dataset": "x"}]))
    monkeypatch.setitem(PRESETS, "alpaca_eval", dataclasses.replace(PRESETS["alpaca_eval"], hub_download=lambda: alpaca))

    def offline():
        raise ConnectionError("no network")

    monkeypatch.setitem(PRESETS, "gsm8k", dataclasses.replace(PRESETS["gsm8k"], hub_download=offline))
    return {"flask": flask, "gpteacher_codegen": gpteacher, "gsm8k": gsm8k}


def test_prepare_converts_presets_writes_rl_prompts_and_reports_the_rest(raw_sources, tmp_path):
    data = tmp_path / "data"
    report = prepare(DataPrepareConfig(data_dir=str(data), raw=[f"{k}={v}" for k, v in raw_sources.items()],
                                       rl_train_per_source=2, rl_heldout_per_source=1, judge_extra_per_source=1))
    for name in ("alpaca_eval", "flask", "gpteacher_codegen", "gsm8k"):
        assert report[name]["present"] and (data / LOCAL_FILES[name]).is_file(), name
    assert [r["output"] for _, r in iter_records(data / LOCAL_FILES["alpaca_eval"])] == ["Blue."]  # a JSON list
    for name in ("arena_bench_v1", "llmbar"):  # no hub copy, no raw file: listed with where to get it
        assert not report[name]["present"] and "github.com" in report[name]["origin"]
    train = [r for _, r in iter_records(data / "rl_prompts" / "prompts_train.jsonl")]
    heldout = [r for _, r in iter_records(data / "rl_prompts" / "prompts_heldout.jsonl")]
    assert len(train) == 6 and len(heldout) == 3 and not {r["id"] for r in train} & {r["id"] for r in heldout}
    assert all(r["reference"] for r in train + heldout)
    judge_train = [r for _, r in iter_records(data / "rl_prompts" / "prompts_judge_train.jsonl")]
    assert judge_train[:6] == train and len(judge_train) == 9  # the RL training prompts, then one more per source
    assert not {r["id"] for r in judge_train} & {r["id"] for r in heldout}
    assert not any(":test:" in r["id"] for r in train + heldout + judge_train)  # GSM8K's test split: never drawn


def test_a_preset_that_cannot_be_had_is_reported_and_the_others_still_convert(raw_sources, tmp_path):
    data = tmp_path / "data"
    report = prepare(DataPrepareConfig(data_dir=str(data), raw=[f"flask={raw_sources['flask']}"]))
    assert report["flask"]["present"] and report["alpaca_eval"]["present"]
    assert not report["gsm8k"]["present"] and "could not download" in report["gsm8k"]["error"]
    assert not report["rl_prompts"]["present"] and not (data / "rl_prompts").exists()


def test_check_lists_what_each_recipe_and_benchmark_lacks(raw_sources, tmp_path):
    data = tmp_path / "data"
    before = check(DataPrepareConfig(data_dir=str(data)), REPO)
    assert before["consumers"]["recipes/configs/grpo.yaml"] == ["file:rl_prompts/prompts_train.jsonl"]
    assert "preset:arena_bench_v1" in before["consumers"]["evals/judge_pool.py"]
    prepare(DataPrepareConfig(data_dir=str(data), raw=[f"{k}={v}" for k, v in raw_sources.items()],
                              rl_train_per_source=2, rl_heldout_per_source=1, judge_extra_per_source=1))
    after = check(DataPrepareConfig(data_dir=str(data)), REPO)
    assert after["consumers"]["recipes/configs/grpo.yaml"] == [] and after["rl_prompts"]
    assert after["presets"]["gsm8k"]["present"] and not after["presets"]["llmbar"]["present"]


def test_every_rl_recipe_reads_the_prepared_prompts():
    needs = consumers(REPO)
    for config in ("grpo", "dpo", "rejection_sampling"):
        assert "file:rl_prompts/prompts_train.jsonl" in needs[f"recipes/configs/{config}.yaml"], config


def test_bad_raw_argument_is_a_clear_error():
    with pytest.raises(ConfigError, match="NAME=PATH"):
        DataPrepareConfig(raw=["flask"])
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        DataPrepareConfig(raw=["nope=x"])


def test_console_data_prepare_check(raw_sources, tmp_path, capsys, monkeypatch):
    from selfj_rlhf.cli.main import main

    monkeypatch.chdir(REPO)
    main(["data", "prepare", "--data_dir", str(tmp_path / "data"), "--check", "true"])
    out = capsys.readouterr().out
    assert "arena_bench_v1" in out and "MISSING" in out and "lacks" in out and "evals/judge_pool.py" in out
    assert not (tmp_path / "data").exists()  # --check writes nothing


def test_more_training_prompts_skip_the_ids_already_drawn(tmp_path):
    from selfj_rlhf.data.prompts import write_prompt_split

    source = write(tmp_path / "src.jsonl", "".join(json.dumps(
        {"id": f"s:{i}", "instruction": f"Explain idea {i}.", "reference": f"Idea {i}, explained at length."}) + "\n"
        for i in range(10)))
    first, heldout = write_prompt_split({"s": str(source)}, tmp_path / "first", train_per_source=3,
                                        heldout_per_source=3)
    drawn = frozenset(r["id"] for path in (first, heldout) for _, r in iter_records(path))
    more, _ = write_prompt_split({"s": str(source)}, tmp_path / "more", train_per_source=4, heldout_per_source=0,
                                 exclude_ids=drawn)
    assert len(drawn) == 6 and {r["id"] for _, r in iter_records(more)} == {f"s:{i}" for i in range(10)} - drawn
    with pytest.raises(ConfigError, match="4 usable rows, 5 wanted"):
        write_prompt_split({"s": str(source)}, tmp_path / "too_many", train_per_source=5, heldout_per_source=0,
                           exclude_ids=drawn)
