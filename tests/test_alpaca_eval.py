"""AlpacaEval harness offline end to end on the tiny model: generate, evaluate against explicit references
with the offline annotators, bundle; the bundle's files load with alpaca_eval's own readers."""

import importlib.util
import json

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("alpaca_eval") is None,
                                reason="alpaca-eval extra not installed")


@pytest.fixture
def references(shared_data):
    return shared_data / "alpaca_eval" / "gpt4_1106_preview_outputs.json"


@pytest.fixture
def generated(tiny_model_dir, references, tmp_path):
    from selfj_rlhf.cli.main import main

    out = tmp_path / "gen"
    main(["alpaca-eval", "generate", "--policy", str(tiny_model_dir), "--dataset", str(references),
          "--max_prompts", "3", "--max_new_tokens", "8", "--output_dir", str(out)])
    return out / "model_outputs.json"


def test_generate_evaluate_bundle_offline(tiny_model_dir, references, generated, tmp_path, monkeypatch):
    import pandas as pd
    from alpaca_eval import metrics, utils

    from selfj_rlhf.cli.main import main

    outputs = json.loads(generated.read_text())
    assert len(outputs) == 3 and all(set(o) == {"instruction", "output", "generator", "dataset"} for o in outputs)
    eval_dir = tmp_path / "eval"
    monkeypatch.chdir(tmp_path)  # a relative --output_dir, as in the docs: the local annotator's config must load
    main(["alpaca-eval", "evaluate", "--model_outputs", str(generated), "--reference_outputs", str(references),
          "--annotator", f"local:{tiny_model_dir}", "--output_dir", "eval"])
    result = json.loads((eval_dir / "result.json").read_text())
    assert result["n_total"] == 3 and result["independent_annotator"] is False  # an offline stand-in
    assert "local model" in result["independence_note"]
    assert (eval_dir / "annotator_local" / "configs.yaml").is_file()  # the generated offline annotator config
    annotations = json.loads((eval_dir / "annotations.json").read_text())
    assert all(1 <= a["preference"] <= 2 for a in annotations)
    assert metrics.get_winrate(annotations)["win_rate"] == pytest.approx(result["win_rate"])
    reference_by_instruction = {r["instruction"]: r["output"] for r in json.loads(references.read_text())}
    assert all(a["output_1"] == reference_by_instruction[a["instruction"]] for a in annotations)  # explicit refs

    bundle = tmp_path / "bundle"
    main(["alpaca-eval", "bundle", "--model_outputs", str(generated), "--eval_dir", str(eval_dir),
          "--output_dir", str(bundle), "--name", "tiny-test"])
    frame = utils.load_or_convert_to_dataframe(bundle / "results" / "tiny-test" / "model_outputs.json")
    assert list(frame["generator"].unique()) == ["tiny-test"] and len(frame) == 3
    config = utils.load_configs(bundle / "src" / "alpaca_eval" / "models_configs" / "tiny-test" / "configs.yaml")
    assert config["tiny-test"]["fn_completions"] is None
    (annotation_dir,) = (bundle / "results" / "tiny-test").glob("*/annotations.json")
    assert len(utils.load_or_convert_to_dataframe(annotation_dir)) == 3
    row = pd.read_csv(bundle / "leaderboard_row.csv", index_col=0)
    assert row.loc["tiny-test", "win_rate"] == pytest.approx(result["win_rate"])
    assert "Submission checklist" in (bundle / "README.md").read_text()


def test_selfj_annotator_is_marked_not_independent(tiny_model_dir, references, generated, tmp_path):
    from selfj_rlhf.rlhf.alpacaeval import EvaluateConfig, evaluate_outputs

    result = evaluate_outputs(EvaluateConfig(model_outputs=str(generated), reference_outputs=str(references),
                                             annotator=f"selfj:{tiny_model_dir}", output_dir=str(tmp_path / "e")))
    assert result["independent_annotator"] is False and result["n_total"] == 3
    annotations = json.loads((tmp_path / "e" / "annotations.json").read_text())
    assert all("selfj_score_2" in a for a in annotations)


def test_official_annotator_without_api_key_is_a_clear_error(generated, references, tmp_path, monkeypatch):
    from selfj_rlhf.rlhf.alpacaeval import EvaluateConfig, evaluate_outputs
    from selfj_rlhf.core.errors import ConfigError

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_CLIENT_CONFIG_PATH", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        evaluate_outputs(EvaluateConfig(model_outputs=str(generated), reference_outputs=str(references),
                                        output_dir=str(tmp_path / "e")))


def test_outputs_not_in_the_reference_set_are_refused(tmp_path, references):
    from selfj_rlhf.rlhf.alpacaeval import load_outputs, matched_references
    from selfj_rlhf.core.errors import ConfigError

    path = tmp_path / "out.json"
    path.write_text(json.dumps([{"instruction": "Not an AlpacaEval instruction", "output": "x"}]))
    with pytest.raises(ConfigError, match="not in"):
        matched_references(load_outputs(path, role="model"), references)


def test_generate_samples_when_n_is_above_one(tiny_model_dir, references, tmp_path, capsys):
    from selfj_rlhf.cli.main import main
    from selfj_rlhf.core.errors import ConfigError

    out = tmp_path / "gen4"
    main(["alpaca-eval", "generate", "--policy", str(tiny_model_dir), "--dataset", str(references), "--n", "4",
          "--max_prompts", "2", "--max_new_tokens", "8", "--output_dir", str(out)])
    settings = json.loads((out / "run_config.json").read_text())
    assert settings["temperature"] == 0.7 and settings["n"] == 4  # best-of-n's sampling temperature
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert any(len({c["text"] for c in row["candidates"]}) > 1 for row in rows)  # not 4 copies of one answer
    with pytest.raises((SystemExit, ConfigError)):
        main(["alpaca-eval", "generate", "--policy", str(tiny_model_dir), "--dataset", str(references), "--n", "4",
              "--temperature", "0", "--output_dir", str(tmp_path / "greedy4")])
    assert "--n 4 with --temperature 0" in capsys.readouterr().err
    assert not (tmp_path / "greedy4").exists()


def _annotations(model_lengths, preferences):
    return [{"instruction": f"q{i}", "output_1": "r" * 400, "output_2": "m" * length, "preference": preference,
             "generator_1": "reference", "generator_2": "model"}
            for i, (length, preference) in enumerate(zip(model_lengths, preferences))]


def test_offline_length_control_removes_a_pure_length_preference():
    """An annotator that only rewards length: the model wins by being longer, and at zero length difference the
    GLM's win rate falls back to about even."""
    import numpy as np

    from selfj_rlhf.rlhf.alpacaeval import offline_length_controlled_winrate

    rng = np.random.default_rng(0)
    lengths = rng.integers(200, 1000, size=200)  # mostly longer than the 400-character reference
    preferences = 1 + 1 / (1 + np.exp(-(lengths - 400) / 150))
    raw = float(np.mean(preferences - 1) * 100)
    result = offline_length_controlled_winrate(_annotations(lengths, preferences))
    assert raw > 70 and abs(result["length_controlled_winrate"] - 50) < 10
    assert result["lc_length_weight"] > 0 and "offline" in result["lc_glm"]

    flat = offline_length_controlled_winrate(_annotations(lengths, np.full(200, 1.7)))  # length plays no part
    assert flat["length_controlled_winrate"] == pytest.approx(70, abs=3)


def test_offline_length_control_needs_enough_instances():
    from selfj_rlhf.rlhf.alpacaeval import offline_length_controlled_winrate

    result = offline_length_controlled_winrate(_annotations([100, 500, 900], [1.2, 1.5, 1.9]))
    assert result["length_controlled_winrate"] is None and "3 annotated instances" in result["lc_note"]


def test_policy_comparison_reports_every_run_and_reuses_annotations(tiny_model_dir, references, tmp_path, monkeypatch):
    """evals/alpaca_eval_policies: two generate runs on the same instructions, one annotator; rows, paired
    difference and the annotator's independence are reported, and a rerun reads the cached annotations."""
    import evals.lib.common as common
    import selfj_rlhf.rlhf.alpacaeval as alpacaeval
    from evals import alpaca_eval_policies
    from selfj_rlhf.cli.main import main as selfj

    for name, n in (("greedy", "1"), ("best_of_2", "2")):
        selfj(["alpaca-eval", "generate", "--policy", str(tiny_model_dir), "--dataset", str(references), "--n", n,
               "--max_prompts", "12", "--max_new_tokens", "8", "--output_dir", str(tmp_path / name)])
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    argv = ["--run", f"greedy={tmp_path / 'greedy'}", "--run", f"best_of_2={tmp_path / 'best_of_2'}",
            "--annotator", f"local:{tiny_model_dir}", "--reference_outputs", str(references), "--bootstrap", "200"]
    alpaca_eval_policies.main(argv)
    payload = json.loads((tmp_path / "results" / "alpaca_eval_policies.json").read_text())
    assert payload["instances"] == 12 and list(payload["rows"]) == ["greedy", "best_of_2"]
    (annotator,) = payload["annotators"]
    assert payload["annotators"][annotator]["independent"] is False  # the policy model annotating itself
    greedy, best = (payload["rows"][k]["annotators"][annotator] for k in ("greedy", "best_of_2"))
    assert "win_probability_vs_baseline" in best and "win_probability_vs_baseline" not in greedy
    assert -1 <= best["win_probability_vs_baseline"]["pearson_per_instruction"] <= 1
    assert greedy["n_total"] == 12 and greedy["length_controlled_winrate"] is not None
    assert payload["rows"]["best_of_2"]["n"] == 2 and 0 <= payload["rows"]["greedy"]["judge_score"] <= 9
    markdown = (tmp_path / "results" / "alpaca_eval_policies.md").read_text()
    assert "**not independent**" in markdown and "best of 2" in markdown

    monkeypatch.setattr(alpacaeval, "evaluate_outputs", lambda cfg: pytest.fail("annotated again"))
    alpaca_eval_policies.main(argv)  # every run's annotations come from its cache
