import importlib.util
import json

import pytest

from selfj_rlhf.rlhf.best_of_n import BestOfNConfig, run_best_of_n
from selfj_rlhf.core.errors import ConfigError, RecordError


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "instruction": f"Question number {i}: name a fruit."} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(tiny_model_dir, prompt_file, out, **kw):
    return BestOfNConfig(policy=str(tiny_model_dir), dataset=str(prompt_file), n=3, max_new_tokens=6,
                         output_dir=str(out), **kw)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_best_of_n_outputs(tiny_model_dir, prompt_file, tmp_path):
    summary = run_best_of_n(config(tiny_model_dir, prompt_file, tmp_path / "run"))
    rows = read_jsonl(tmp_path / "run" / "candidates.jsonl")
    assert [r["id"] for r in rows] == ["p0", "p1", "p2", "p3"] and summary["prompts"] == 4
    for row in rows:
        scores = [c["score"] for c in row["candidates"]]
        assert len(scores) == 3 and all(0 <= s <= 9 for s in scores)
        assert row["chosen"] == scores.index(max(scores))
    outputs = json.loads((tmp_path / "run" / "model_outputs.json").read_text())
    assert [set(o) for o in outputs] == [{"instruction", "output", "generator", "dataset"}] * 4
    assert [o["output"] for o in outputs] == [r["candidates"][r["chosen"]]["text"] for r in rows]


def test_resume_skips_finished_prompts_and_matches_fresh_run(tiny_model_dir, prompt_file, tmp_path):
    fresh = tmp_path / "fresh"
    run_best_of_n(config(tiny_model_dir, prompt_file, fresh))
    resumed = tmp_path / "resumed"
    run_best_of_n(config(tiny_model_dir, prompt_file, resumed, max_prompts=2))
    shard = resumed / "shards" / "part-000.jsonl"
    with open(shard, "ab") as fh:  # a kill while writing the third prompt's row
        fh.write(b'{"id": "p2", "candi')
    summary = run_best_of_n(config(tiny_model_dir, prompt_file, resumed))
    assert summary["resumed_prompts"] == 2
    assert read_jsonl(resumed / "candidates.jsonl") == read_jsonl(fresh / "candidates.jsonl")
    assert len(shard.read_text().splitlines()) == 4


def test_resume_with_other_settings_is_refused(tiny_model_dir, prompt_file, tmp_path):
    run_best_of_n(config(tiny_model_dir, prompt_file, tmp_path / "run", max_prompts=1))
    with pytest.raises(ConfigError, match="other settings"):
        run_best_of_n(config(tiny_model_dir, prompt_file, tmp_path / "run", max_prompts=1, seed=7))


def test_bad_input_writes_nothing(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok"}\n{"prompt": "wrong field"}\n')
    with pytest.raises(RecordError, match=r"bad.jsonl:2: field 'instruction': missing"):
        run_best_of_n(config(tiny_model_dir, bad, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field,value", [("n", 0), ("temperature", -1.0), ("top_p", 0.0), ("max_new_tokens", 0)])
def test_config_validation(field, value):
    with pytest.raises(ConfigError, match=field):
        BestOfNConfig(**{field: value})


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_without_vllm_is_a_clear_error(tiny_model_dir, prompt_file, tmp_path):
    with pytest.raises(ConfigError, match="needs the vllm package"):
        run_best_of_n(config(tiny_model_dir, prompt_file, tmp_path / "run", backend="vllm"))
    assert not (tmp_path / "run" / "model_outputs.json").exists()


def test_temperature_follows_n_unless_given():
    assert BestOfNConfig(n=1).temperature == 0.0  # one answer: greedy
    assert BestOfNConfig(n=4).temperature == 0.7  # several: sampled
    assert BestOfNConfig(n=4, temperature=1.0).temperature == 1.0
    with pytest.raises(ConfigError, match=r"--n 4 with --temperature 0"):
        BestOfNConfig(n=4, temperature=0.0)
