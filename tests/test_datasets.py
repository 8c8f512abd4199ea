"""Dataset specs: every preset converter on small files in its source's raw layout (offline), hub specs, env vars."""

import json

import pytest

from selfj_rlhf.data.datasets import PRESETS, gsm8k_reference, resolve_dataset
from selfj_rlhf.core.errors import ConfigError, RecordError
from selfj_rlhf.data.datasets import iter_records

A_FIELDS = {"id", "instruction", "input", "reference", "source", "category", "meta"}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    import selfj_rlhf.data.datasets

    monkeypatch.setattr(selfj_rlhf.data.datasets, "_cache_dir", lambda: tmp_path / "cache")


def rows_of(spec):
    return [row for _, row in iter_records(spec)]


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_alpaca_eval_preset_from_the_outputs_json(tmp_path):
    raw = write(tmp_path / "gpt4_1106_preview_outputs.json", json.dumps([
        {"instruction": "What are the names of some famous actors?", "output": "Some famous actors are ...",
         "generator": "gpt4_1106_preview", "dataset": "helpful_base"},
        {"instruction": "How do I wrap a present neatly?", "output": "1. Measure the paper ...",
         "generator": "gpt4_1106_preview", "dataset": "helpful_base"}]))
    rows = rows_of(f"preset:alpaca_eval={raw}")
    assert [r["id"] for r in rows] == ["alpaca_eval:0", "alpaca_eval:1"]
    assert A_FIELDS <= set(rows[0]) and rows[0]["reference"] == "Some famous actors are ..."
    # AlpacaEval's own columns stay, so the converted file is also a reference_outputs file
    from selfj_rlhf.rlhf.alpacaeval import load_outputs

    assert load_outputs(resolve_dataset(f"preset:alpaca_eval={raw}"), role="reference")[1]["output"].startswith("1.")
    from selfj_rlhf.data.prompts import load_prompts

    prompts = load_prompts(f"preset:alpaca_eval={raw}")
    assert prompts[0].instruction.startswith("What are") and prompts[0].reference.startswith("Some famous")


def test_gsm8k_preset_cleans_annotations_and_the_final_line(tmp_path):
    folder = tmp_path / "grade_school_math" / "data"
    write(folder / "train.jsonl", json.dumps({
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                    "How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                  "altogether in April and May.\n#### 72"}) + "\n")
    write(folder / "test.jsonl", json.dumps({"question": "What is 1 + 1?", "answer": "1 + 1 = <<1+1=2>>2\n#### 2"}) + "\n")
    rows = rows_of(f"preset:gsm8k={folder}")
    assert [r["id"] for r in rows] == ["gsm8k:test:0", "gsm8k:train:0"]
    train = rows[1]
    assert "<<" not in train["reference"] and train["reference"].endswith("The answer is 72.")
    assert train["meta"] == {"split": "train", "final_answer": "72"} and train["category"] == "academic"
    assert gsm8k_reference("a <<1=1>>b\n#### 1,000") == ("a b\nThe answer is 1,000.", "1,000")
    bad = write(tmp_path / "bad" / "train.jsonl", json.dumps({"question": "q", "answer": "no final line"}) + "\n")
    with pytest.raises(RecordError, match=r"train\.jsonl:1: field 'answer'"):
        rows_of(f"preset:gsm8k={bad}")


ARENA_PROMPT = ("[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided "
                "by an AI assistant to the user question displayed below. ... [[rating]].\n\n"
                "[Question]\n{question}\n\n[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]"
                "\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]")


def test_arena_bench_v1_preset_cuts_the_judge_prompt(tmp_path):
    folder = tmp_path / "data" / "arena-bench-v1"
    judgments = [
        {"question_id": "q1", "model": "gpt-4-0314", "score": 9, "judgment": "Correct and clear. Rating: [[9]]",
         "user_prompt": ARENA_PROMPT.format(question="How to explain RNA sequencing to a 4 year old?",
                                            reference="RNA sequencing is like a puzzle.", answer="It is like a book.")},
        {"question_id": "q2", "model": "gpt-4-0314", "score": None, "judgment": "no rating given",
         "user_prompt": ARENA_PROMPT.format(question="Q2", reference="R2", answer="A2")},
    ]
    write(folder / "model_judgment" / "gpt-4-0314.jsonl", "".join(json.dumps(j) + "\n" for j in judgments))
    write(folder / "question.jsonl", json.dumps({"question_id": "q1", "turns": [{"content": "ignored"}]}) + "\n")
    rows = rows_of(f"preset:arena_bench_v1={folder}")
    assert len(rows) == 1  # the unparsed score is dropped
    row = rows[0]
    assert row["id"] == "arena-bench-v1:q1:gpt-4-0314"
    assert row["instruction"] == "How to explain RNA sequencing to a 4 year old?"
    assert row["reference"] == "RNA sequencing is like a puzzle." and row["response"] == "It is like a book."
    assert (row["score"], row["scale"], row["judge"], row["rationale"]) == (9, "1-10", "gpt-4", judgments[0]["judgment"])
    broken = write(tmp_path / "broken" / "m.jsonl", json.dumps({"question_id": "q", "model": "m", "score": 3,
                                                                "user_prompt": "[Question]\nno markers"}) + "\n")
    with pytest.raises(RecordError, match="user_prompt"):
        rows_of(f"preset:arena_bench_v1={broken.parent}")


def test_llmbar_preset_reads_every_subset(tmp_path):
    root = tmp_path / "LLMBar" / "Dataset"
    write(root / "LLMBar" / "Natural" / "dataset.json", json.dumps([
        {"input": "Give three tips for staying healthy.", "output_1": "Eat well, sleep, move.", "output_2": "No.",
         "label": 1}]))
    write(root / "Processed" / "LLMEval^2" / "dataset.json", json.dumps([
        {"input": "Translate 'cat'.", "output_1": "Hund", "output_2": "chat", "label": 2}]))
    rows = rows_of(f"preset:llmbar={root}")
    assert [(r["subset"], r["preference"]) for r in rows] == [("Natural", "a"), ("LLMEval2", "b")]
    assert rows[1]["response_b"] == "chat" and rows[0]["instruction"].startswith("Give three")
    write(tmp_path / "bad" / "dataset.json", json.dumps([{"input": "x", "output_1": "a", "output_2": "b", "label": 3}]))
    with pytest.raises(RecordError, match="'label'"):
        rows_of(f"preset:llmbar={tmp_path / 'bad'}")


def test_flask_preset_drops_alpacaeval_sources_and_maps_categories(tmp_path):
    raw = write(tmp_path / "evaluation_set" / "flask_evaluation.jsonl", "".join(json.dumps(r) + "\n" for r in [
        {"idx": 0, "instruction": " Write a Python function that reverses a list. ", "answer": "def rev(x): ...",
         "task": "code_alpaca", "skill": ["Correctness"], "domain": ["Coding"], "difficulty": 2},
        {"idx": 1, "instruction": "What is 3*7?", "answer": "21", "task": "gsm8k", "skill": [], "domain": ["Math"],
         "difficulty": 1},
        {"idx": 2, "instruction": "Plan a trip.", "answer": "...", "task": "Koala", "skill": [], "domain": ["Culture"],
         "difficulty": 1},
        {"idx": 3, "instruction": "Write a poem.", "answer": "Roses...", "task": "wizardlm", "skill": [],
         "domain": ["Literature"], "difficulty": 3}]))
    rows = rows_of(f"preset:flask={raw}")
    assert [(r["id"], r["category"]) for r in rows] == [("flask:0", "coding"), ("flask:1", "academic"),
                                                        ("flask:3", "common")]
    assert rows[0]["instruction"] == "Write a Python function that reverses a list."
    assert rows[0]["meta"]["task"] == "code_alpaca" and A_FIELDS <= set(rows[0])


def test_gpteacher_codegen_preset(tmp_path):
    raw = write(tmp_path / "Codegen" / "codegen-instruct.json", json.dumps([
        {"instruction": "Write a SQL query.", "input": "Table: users(id, name)", "response": "SELECT name FROM users;"},
        {"instruction": "Print hello in Python.", "input": "", "response": "print('hello')"}]))
    rows = rows_of(f"preset:gpteacher_codegen={raw}")
    assert [r["input"] for r in rows] == ["Table: users(id, name)", ""]
    assert all(r["category"] == "coding" and A_FIELDS <= set(r) for r in rows)
    from selfj_rlhf.training.labeling import LabelConfig, load_label_sources

    sources = load_label_sources(LabelConfig(data=[f"preset:gpteacher_codegen={raw}"], min_reference_chars=5))
    assert sources[0].instruction.endswith("Table: users(id, name)") or sources[1].instruction.endswith("users(id, name)")


def test_every_preset_is_tested_here():
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    assert all(f"preset:{name}=" in source for name in PRESETS)


def test_spec_errors_are_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.delenv("SELFJ_DATA_DIR", raising=False)
    with pytest.raises(ConfigError, match="unknown dataset preset 'nope'; presets: alpaca_eval"):
        resolve_dataset("preset:nope")
    with pytest.raises(ConfigError, match="no hub copy: pass the raw files"):
        resolve_dataset("preset:flask")
    with pytest.raises(ConfigError, match="raw data not found"):
        resolve_dataset(f"preset:flask={tmp_path / 'missing'}")
    with pytest.raises(ConfigError, match="not hf:<id>"):
        resolve_dataset("hf:")
    monkeypatch.delenv("SELFJ_UNSET_VAR", raising=False)
    with pytest.raises(ConfigError, match=r"\$SELFJ_UNSET_VAR, which is not set"):
        resolve_dataset("$SELFJ_UNSET_VAR/x.jsonl")
    monkeypatch.setenv("SELFJ_SOME_DIR", str(tmp_path))
    assert resolve_dataset("$SELFJ_SOME_DIR/x.jsonl") == tmp_path / "x.jsonl"


def test_preset_reads_converted_files_under_selfj_data_dir(tmp_path, monkeypatch):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "gsm8k_ref.jsonl").write_text('{"id": "gsm8k:train:0", "instruction": "q", "reference": "r"}\n')
    monkeypatch.setenv("SELFJ_DATA_DIR", str(tmp_path))
    assert resolve_dataset("preset:gsm8k") == tmp_path / "gsm8k" / "gsm8k_ref.jsonl"
    with pytest.raises(ConfigError, match="set SELFJ_DATA_DIR to a folder holding flask/flask_ref.jsonl"):
        resolve_dataset("preset:flask")  # not in that folder, no hub copy


def test_hub_spec_goes_through_load_dataset(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(dataset_id, config=None, split=None):
        calls.append((dataset_id, config, split))
        return [{"question": "q", "answer": "a"}]

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert rows_of("hf:openai/gsm8k:main@test") == [{"question": "q", "answer": "a"}]
    assert rows_of("hf:openai/gsm8k:main@test") == [{"question": "q", "answer": "a"}]  # cached: no second call
    assert calls == [("openai/gsm8k", "main", "test")]

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConfigError, match="could not load hub dataset 'org/none'"):
        rows_of("hf:org/none")


@pytest.mark.parametrize("name", ["flask", "gsm8k", "gpteacher_codegen", "alpaca_eval"])
def test_converted_sources_match_the_shared_schema(shared_data, name):
    """The converted files under SELFJ_DATA_DIR have the fields the presets write."""
    files = {"flask": "flask/flask_ref.jsonl", "gsm8k": "gsm8k/gsm8k_ref.jsonl",
             "gpteacher_codegen": "gpteacher_codegen/codegen_ref.jsonl",
             "alpaca_eval": "alpaca_eval/gpt4_1106_preview_outputs.json"}
    rows = rows_of(shared_data / files[name])[:50]
    expected = {"instruction"} | ({"output"} if name == "alpaca_eval" else A_FIELDS)
    assert all(expected <= set(r) for r in rows)
