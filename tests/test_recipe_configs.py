"""Every YAML under recipes/ must parse strictly (no unknown keys) with its recipe's own parser."""

import importlib.util
from pathlib import Path

import pytest
import yaml

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CONFIGS = sorted((RECIPES / "configs").glob("*.yaml"))


def recipe_for(config: Path) -> Path:
    """``configs/<recipe>[_variant].yaml`` belongs to ``recipes/<recipe>.py`` (longest matching name)."""
    candidates = [p for p in RECIPES.glob("*.py") if config.stem == p.stem or config.stem.startswith(p.stem + "_")]
    assert candidates, f"{config.name}: no recipe script matches its name"
    return max(candidates, key=lambda p: len(p.stem))


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepared_data_dir(shared_data: Path, tmp_path: Path, monkeypatch) -> Path:
    """A SELFJ_DATA_DIR as `selfj data prepare` leaves it: the external data plus the RL prompt files."""
    from selfj_rlhf.data.prepare import DataPrepareConfig, rl_prompt_files

    data = tmp_path / "data"
    data.mkdir()
    for item in shared_data.iterdir():
        if item.is_dir():
            (data / item.name).symlink_to(item)
    rl_prompt_files(DataPrepareConfig(), data)
    monkeypatch.setenv("SELFJ_DATA_DIR", str(data))
    return data


def test_there_are_configs():
    assert CONFIGS


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses_strictly(config):
    assert isinstance(yaml.safe_load(config.read_text()), dict)
    assert "Launch" in config.read_text().split("\n\n")[0] or "launch" in config.read_text()[:400]
    from selfj_rlhf.cli.dry_run import allow_gpu_config_on_cpu

    parser = load_module(recipe_for(config)).make_parser()
    allow_gpu_config_on_cpu(parser, ["--dry_run"])  # GPU configs (bf16) parse on a CPU the way a dry run parses them
    parsed = parser.parse_args_and_config(["--config", str(config)])
    assert parsed


def test_unknown_key_is_rejected(tmp_path):
    bad = tmp_path / "best_of_n.yaml"
    bad.write_text("n: 2\nnot_a_field: 1\n")
    parser = load_module(RECIPES / "best_of_n.py").make_parser()
    with pytest.raises(ValueError, match="not_a_field"):
        parser.parse_args_and_config(["--config", str(bad)])


def test_judge_options_are_declared_once():
    """Every recipe config and the reward's config take the judge options from JudgeArgs, with its names and help."""
    import dataclasses

    from selfj_rlhf import SelfJRewardConfig
    from selfj_rlhf.judge.options import JudgeArgs
    from selfj_rlhf.rlhf.best_of_n import BestOfNConfig
    from selfj_rlhf.rlhf.grpo import GRPOScriptConfig
    from selfj_rlhf.rlhf.rounds import DPOLoopConfig, RejectionSamplingConfig

    shared = {f.name: f.metadata["help"] for f in dataclasses.fields(JudgeArgs)}
    for config in (BestOfNConfig, RejectionSamplingConfig, DPOLoopConfig, GRPOScriptConfig, SelfJRewardConfig):
        assert issubclass(config, JudgeArgs)
        assert {f.name: f.metadata["help"] for f in dataclasses.fields(config) if f.name in shared} == shared


@pytest.mark.parametrize("recipe, old, new, value", [
    ("rejection_sampling.py", "sampling_temperature", "temperature", 0.5),
    ("dpo.py", "sampling_top_p", "top_p", 0.9),
])
def test_old_keys_work_for_one_release_with_a_warning(tmp_path, recipe, old, new, value):
    config = tmp_path / "old.yaml"
    config.write_text(f"{old}: {value}\noutput_dir: {tmp_path}\n")
    parser = load_module(RECIPES / recipe).make_parser()
    with pytest.warns(FutureWarning, match=f"'{old}' is deprecated.*'{new}'"):
        parsed = parser.parse_args_and_config(["--config", str(config)])
    assert getattr(parsed[0], new) == value and getattr(parsed[0], old) is None


def test_reward_options_keep_their_old_names_for_one_release():
    from selfj_rlhf import SelfJRewardConfig
    from selfj_rlhf.core.errors import ConfigError

    with pytest.warns(FutureWarning, match="'batch_size' is deprecated.*'judge_batch_size'"):
        config = SelfJRewardConfig(judge="x", batch_size=16, max_length=512, template="selfj-chat", server_url="http://h:1")
    assert (config.judge_batch_size, config.max_judge_length, config.judge_template, config.judge_server_url) == (
        16, 512, "selfj-chat", "http://h:1")
    with pytest.raises(ConfigError, match="give only 'judge_batch_size'"):
        SelfJRewardConfig(judge="x", batch_size=16, judge_batch_size=32)


QWEN2_VOCAB = Path(__file__).resolve().parents[1] / ".venv" / "share" / "selfj-rlhf" / "ggml-vocab-qwen2.gguf"
CONFIGS_7B = [c for c in CONFIGS if c.stem.endswith("_7b")]


def test_7b_configs_cover_the_gpu_scale_path():
    assert {c.stem for c in CONFIGS_7B} == {"label_7b", "train_judge_7b", "best_of_n_7b", "dpo_7b", "grpo_7b",
                                           "label_pool_7b", "train_judge_pool_7b", "sample_own_7b",
                                           "label_own_samples_7b", "train_judge_own_samples_7b",
                                           "rejection_sampling_7b"}


def test_the_7b_loops_use_the_judge_the_7b_own_samples_chain_trains():
    """One judge path: the own-samples chain's output is the judge of every 7B loop."""
    config = {c.stem: yaml.safe_load(c.read_text()) for c in CONFIGS_7B}
    assert config["label_own_samples_7b"]["pool"] == [f"{config['sample_own_7b']['output_dir']}/pool.jsonl"]
    labels = f"{config['label_own_samples_7b']['output_dir']}/{config['label_own_samples_7b']['labels_name']}"
    assert config["train_judge_own_samples_7b"]["labels"] == labels
    judge = config["train_judge_own_samples_7b"]["output_dir"]
    for loop in ("best_of_n_7b", "rejection_sampling_7b", "dpo_7b", "grpo_7b"):
        assert config[loop]["judge"] == judge, loop
    assert config["best_of_n_7b"]["judge_dtype"] == "float32"  # an AlpacaEval submission scores in fp32


# recipes whose configs train (a judge or a policy) on their data, and the keys that name it
TRAINING_DATA_KEYS = {"sample": ("dataset",), "label": ("data", "pool"), "rejection_sampling": ("dataset",),
                      "dpo": ("dataset",), "grpo": ("dataset",), "train_judge": ("labels",)}


def test_no_config_trains_on_an_evaluation_set(shared_data, tmp_path, monkeypatch):
    """No training config's data is AlpacaEval (the evaluation set) or holds a row of a test split, or an instruction
    of AlpacaEval's 805. Files an earlier stage writes (runs/...) are built from these and are not read here."""
    from selfj_rlhf.data.datasets import iter_records, resolve_dataset

    prepared_data_dir(shared_data, tmp_path, monkeypatch)
    evaluation = {" ".join(r["instruction"].lower().split()) for _, r in iter_records(resolve_dataset("preset:alpaca_eval"))}
    checked = 0
    for config in CONFIGS:
        keys = TRAINING_DATA_KEYS.get(recipe_for(config).stem, ())
        values = yaml.safe_load(config.read_text())
        specs = [s for key in keys for s in ([values.get(key)] if isinstance(values.get(key), str)
                                              else values.get(key) or [])]
        for spec in specs:
            assert "alpaca_eval" not in spec, f"{config.name} trains on {spec}"
            if spec.startswith("runs/"):
                continue
            for line, row in iter_records(resolve_dataset(spec)):
                where = f"{config.name}: {spec} line {line}"
                assert (row.get("meta") or {}).get("split") != "test" and ":test:" not in str(row.get("id")), where
                assert " ".join(str(row.get("instruction", "")).lower().split()) not in evaluation, where
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize("config", CONFIGS_7B, ids=lambda p: p.name)
def test_7b_config_dry_run(config, shared_data, capsys):
    """The dry run resolves the config, the data, the template and the 7B model's digit tokens, without weights.

    The 7B tokenizer comes from the Qwen2 vocabulary GGUF that the dev install places in .venv (offline)."""
    import json

    if not QWEN2_VOCAB.is_file():
        pytest.skip(f"{QWEN2_VOCAB} not found (bash scripts/install.sh dev fetches it)")
    module = load_module(recipe_for(config))
    module.main(["--config", str(config), "--dry_run", "true", "--dry_run_tokenizer", str(QWEN2_VOCAB)])
    plan = json.loads(capsys.readouterr().out)
    assert plan["weights_loaded"] is False and plan["model"] == "Qwen/Qwen2.5-7B-Instruct"
    assert plan["tokenizer"]["class"] == "Qwen2Tokenizer" and len(set(plan["digit_token_ids"])) == 10
    assert plan["judge_template"] == "selfj-chat" and plan["stages"]
    assert plan["judge_prompt_tokens_first_row"]["student (no reference)"]["prefix_tokens"] > 0
    for data in plan["data"]:
        assert data.get("rows", 0) > 0 or data["state"].startswith("not present yet")


DRY_RUN_RECIPES = {"best_of_n", "dpo", "grpo", "label", "train_judge", "rejection_sampling", "sample"}
EMBEDDED_CONFIGS = [c for c in CONFIGS if c not in CONFIGS_7B and recipe_for(c).stem in DRY_RUN_RECIPES]


@pytest.mark.parametrize("config", EMBEDDED_CONFIGS, ids=lambda p: p.name)
def test_every_config_dry_runs_when_its_data_is_there(config, shared_data, tmp_path, capsys, monkeypatch):
    """Each recipe config of the embedded model resolves its config, data, template and digit tokens without
    weights. The data folder is the external data plus the RL prompt files that `selfj data prepare` writes."""
    import json

    prepared_data_dir(shared_data, tmp_path, monkeypatch)
    module = load_module(recipe_for(config))
    module.main(["--config", str(config), "--dry_run", "true"])
    plan = json.loads(capsys.readouterr().out)
    assert plan["weights_loaded"] is False and len(set(plan["digit_token_ids"])) == 10
    for entry in plan["data"]:
        assert entry.get("rows", 0) > 0 or entry["state"].startswith("not present yet"), entry


def test_dry_run_loads_no_weights(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """On a small config the plan is printed and no model is ever loaded."""
    import json

    import selfj_rlhf.core.models

    def forbidden(*args, **kwargs):
        raise AssertionError("a dry run loaded model weights")

    monkeypatch.setattr(selfj_rlhf.core.models, "load_causal_lm", forbidden)
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "Say hi.", "reference": "Hi!"}\n')
    module = load_module(RECIPES / "best_of_n.py")
    module.main(["--policy", str(tiny_model_dir), "--dataset", str(data), "--dry_run", "true",
                 "--output_dir", str(tmp_path / "out")])
    plan = json.loads(capsys.readouterr().out)
    assert plan["data"][0]["rows"] == 1 and plan["weights_loaded"] is False
    assert not (tmp_path / "out").exists()
