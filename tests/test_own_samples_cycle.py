"""The own-samples cycle through the recipes on the tiny model (sample, label, train with a design chosen by CV,
best-of-n with the new judge), and judges named by their job (roles, aliases, the warnings)."""

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def fresh_role_warnings():
    """Each role warning is shown once per process: every test starts with none shown."""
    from selfj_rlhf.judge import directory

    directory._WARNED.clear()
    yield
    directory._WARNED.clear()


def write_prompts(path, count=8):
    path.write_text("".join(json.dumps({
        "id": f"src{i % 2}:{i}", "instruction": f"Explain step {i} of making bread in a sentence.",
        "reference": f"Step {i}: knead the dough, let it rise, then bake it until golden."}) + "\n"
        for i in range(count)))
    return path


def test_the_cycle_runs_end_to_end_through_the_recipes(tiny_model_dir, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    samples = tmp_path / "samples"
    load_module(RECIPES / "sample.py").main([
        "--policy", str(tiny_model_dir), "--dataset", str(prompts), "--n", "4", "--max_new_tokens", "12",
        "--output_dir", str(samples)])
    rows = [json.loads(line) for line in (samples / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"src{i % 2}:{i}" for i in range(8)]
    assert all(len(r["candidates"]) == 4 and all(isinstance(c["finished"], bool) for c in r["candidates"])
               for r in rows)
    pool = [json.loads(line) for line in (samples / "pool.jsonl").read_text().splitlines()]
    assert len(pool) == 32 and {p["model"] for p in pool} == {str(tiny_model_dir)}

    labels_dir = tmp_path / "labels"
    load_module(RECIPES / "label.py").main([
        "--policy", str(tiny_model_dir), "--pool", str(samples / "pool.jsonl"), "--normalize", "within",
        "--similarity_weight", "1", "--overlap_weight", "1", "--selfeval_weight", "0",
        "--output_dir", str(labels_dir), "--labels_name", "labels.jsonl"])

    judge_dir = tmp_path / "judge"
    grid = tmp_path / "train.yaml"
    grid.write_text(f"labels: {labels_dir / 'labels.jsonl'}\nbase_model: {tiny_model_dir}\nhead: scalar\n"
                    "head_layers: [1, 2]\nhead_loss: pairwise\nhead_weight_decay: 0.3\nbeta: 0.0\nalpha: 1.0\n"
                    "max_length: 256\ncv_folds: 2\ncv_grid:\n  - {layers: 2, weight_decay: 0.3}\n"
                    "  - {layers: [1, 2], weight_decay: 1.0}\n  - {layers: 2, relevance_cap_quantile: 0.5}\n"
                    f"feature_cache: {tmp_path / 'features'}\noutput_dir: {judge_dir}\n")
    load_module(RECIPES / "train_judge.py").main(["--config", str(grid)])
    config = json.loads((judge_dir / "selfj_config.json").read_text())
    assert config["role"] == "own_samples" and config["policy"] == str(tiny_model_dir)
    cv = json.loads((judge_dir / "cv.json").read_text())
    assert len(cv["designs"]) == 3 and cv["chosen"] in cv["designs"]
    for entry in cv["designs"].values():
        assert len(entry["folds"]) == 2 and np.isfinite(entry["spearman_within_prompt"])
    chosen = cv["designs"][cv["chosen"]]
    assert chosen["spearman_within_prompt"] == max(e["spearman_within_prompt"] for e in cv["designs"].values())
    assert config["head"].get("layers", [config["head"].get("layer")]) == chosen["design"]["layers"]
    assert ("relevance" in config) == (chosen["design"]["relevance_cap_quantile"] is not None)
    assert list((tmp_path / "features").glob("*/relevance/relevance-*.npz"))  # the gated design's inputs, cached
    assert config["training"]["labels_sha256"] and config["training"]["cv"]["chosen"] == cv["chosen"]
    provenance = (judge_dir / "PROVENANCE.md").read_text()
    assert "own samples" in provenance and cv["chosen"] in provenance
    assert not list(tmp_path.glob(".judge.*.tmp"))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the judge fits its policy: no role warning
        summary = load_module(RECIPES / "best_of_n.py").main([
            "--policy", str(tiny_model_dir), "--judge", str(judge_dir), "--dataset", str(prompts), "--n", "3",
            "--max_new_tokens", "8", "--output_dir", str(tmp_path / "bon")])
    picked = [json.loads(line) for line in (tmp_path / "bon" / "candidates.jsonl").read_text().splitlines()]
    assert len(picked) == 8 and all(0 <= r["chosen_score"] <= 9 for r in picked)


def test_a_finished_judge_is_not_trained_again(tiny_model_dir, tmp_path, capsys):
    from selfj_rlhf.training.distill import JudgeTrainingConfig
    from selfj_rlhf.training.train_judge import train_scalar_judge

    rows = [{"instruction": f"Q{q}?", "reference": "A careful answer.", "response": "word " * (2 + k),
             "group": str(q), "score_label": float(2 * k)} for q in range(4) for k in range(4)]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = JudgeTrainingConfig(labels=str(labels), base_model=str(tiny_model_dir), head="scalar", head_layer=1,
                              head_loss="pairwise", beta=0.0, alpha=1.0, max_length=128, head_weight_decay=0.1,
                              feature_cache=str(tmp_path / "features"))
    out = train_scalar_judge(cfg, tmp_path / "judge")
    before = (out / "scalar_head.safetensors").read_bytes()
    train_scalar_judge(cfg, tmp_path / "judge")
    assert "already holds a trained judge" in capsys.readouterr().out
    assert (out / "scalar_head.safetensors").read_bytes() == before


@pytest.mark.parametrize("kw, match", [
    (dict(cv_folds=2), "cv_grid"), (dict(cv_grid=[{"layers": 1}]), "cv_folds"), (dict(cv_folds=1), "cv_folds"),
    (dict(judge_role="judge"), "judge_role"), (dict(head_layers=[]), "head_layers")])
def test_selection_config_errors(kw, match):
    from selfj_rlhf.core.errors import ConfigError
    from selfj_rlhf.training.distill import JudgeTrainingConfig

    with pytest.raises(ConfigError, match=match):
        JudgeTrainingConfig(head="scalar", **kw)


def test_cross_validation_picks_the_layer_that_carries_the_label():
    """On synthetic states whose label lives in layer 2, the layer-2 design wins; designs that never saw the
    off-topic rows are not chosen when the labels hold some."""
    from selfj_rlhf.training.head_selection import HeadDesign, cross_validate, select_design
    from selfj_rlhf.training.scalar_head import ScalarHeadConfig

    rng = np.random.default_rng(0)
    n = 16 * 6
    states = rng.normal(size=(n, 3, 8)).astype(np.float16)
    rows = [{"group": f"p{i // 6}", "kind": "pool" if i % 6 else "offtopic",
             "score": float(4.5 + 2 * states[i, 2, 0])} for i in range(n)]
    designs = [HeadDesign("layer 1", (1,), 0.3), HeadDesign("layer 2", (2,), 0.3),
               HeadDesign("layer 2, honest rows only", (2,), 0.3, augment=False)]
    table = cross_validate(designs, rows, states, rng.integers(5, 50, size=n), ScalarHeadConfig(distill=False),
                           folds=4, progress=False)
    assert table["layer 2"]["spearman_within_prompt"] > table["layer 1"]["spearman_within_prompt"] + 0.3
    assert len(table["layer 2"]["folds"]) == 4 and table["layer 2"]["fold_std"] >= 0
    assert select_design(designs, table, rows)[0].name == "layer 2"


def test_selection_prefers_designs_that_keep_content_free_rows_low():
    """With max_attack_rate, a design whose content-free or off-topic rows reach the honest answers too often is not
    chosen however well it ranks; when no design meets the rate, Spearman alone decides and says so."""
    from selfj_rlhf.training.head_selection import HeadDesign, attack_rate, select_design

    designs = [HeadDesign("ranks", (1,)), HeadDesign("resists", (2,))]
    table = {"ranks": {"spearman_within_prompt": 0.3, "at_or_above_honest": {"offtopic": 0.3, "padded": 0.5}},
             "resists": {"spearman_within_prompt": 0.25, "at_or_above_honest": {"offtopic": 0.05, "padded": 0.6}}}
    rows = [{"kind": "pool"}, {"kind": "offtopic"}]
    assert attack_rate(table["ranks"]) == 0.3 and attack_rate(table["resists"]) == 0.05  # padding is not one
    assert select_design(designs, table, rows, max_attack_rate=0.1) == (designs[1], True)
    assert select_design(designs, table, rows) == (designs[0], True)
    assert select_design(designs, table, rows, max_attack_rate=0.01) == (designs[0], False)


def test_augmentation_rates_and_the_honest_length_trend():
    """The CV table reports, per augmentation kind, how often it scores at least as high as the honest answers of
    its prompt; the length trend is fitted on honest answers only (short label-0 content-free rows would make
    short look bad, and length control would then pay short answers back)."""
    from selfj_rlhf.training.head_selection import HeadDesign, at_or_above_honest, fit_head_design
    from selfj_rlhf.training.scalar_head import ScalarHeadConfig

    rows = [{"group": "p", "kind": "pool"}, {"group": "p", "kind": "pool"}, {"group": "p", "kind": "content_free"},
            {"group": "q", "kind": "pool"}, {"group": "q", "kind": "padded"}, {"group": "r", "kind": "padded"}]
    rates = at_or_above_honest([1.0, 3.0, 2.0, 5.0, 5.0, 9.0], rows)
    assert rates == {"content_free": 0.5, "padded": 1.0}  # r has no honest answer: left out

    rng = np.random.default_rng(0)
    n = 40
    states = rng.normal(size=(n, 2, 4)).astype(np.float32)
    rows = [{"group": f"p{i // 5}", "kind": "pool" if i % 5 else "content_free",
             "score": 0.0 if i % 5 == 0 else float(9 - (i % 5))} for i in range(n)]
    tokens = np.array([1 if i % 5 == 0 else 10 * (i % 5) for i in range(n)])  # honest: longer is worse
    _, _, length_fit, kept = fit_head_design(HeadDesign("layer 1", (1,), 0.3), rows, states, tokens,
                                          np.ones(n, dtype=bool), ScalarHeadConfig(distill=False, steps=5))
    assert kept.all() and length_fit.slope < 0


def test_the_sampling_stage_survives_kills(tmp_path_factory):
    from evals.kill_resume import campaign

    result = campaign(tmp_path_factory.getbasetemp() / "kill_resume_sample", kills=2, seed=0, recipes=["sample"])
    assert result["sample"]["kills_survived"] == 2 and result["sample"]["completed_runs_checked"] >= 1
    assert result["sample"]["ok"], result["sample"]["problems"]


# --- judges named by their job ------------------------------------------------------------------------------

def test_every_shipped_judge_names_its_role_and_policy_and_each_alias_stays_in_its_role():
    from selfj_rlhf.judge.directory import (JUDGES_DIR, ROLE_ALIASES, ROLES, SHIPPED_JUDGES, judge_role,
                                            versioned_name)

    for name, (folder, policy) in SHIPPED_JUDGES.items():
        config = json.loads((JUDGES_DIR / folder / "selfj_config.json").read_text())
        assert config["role"] in ROLES and config["policy"] == policy, name
    for alias, (role, name) in ROLE_ALIASES.items():
        assert versioned_name(alias) == name and judge_role(alias)[0] == role, alias


def test_the_role_keys_leave_the_content_hash_as_it_was(tmp_path):
    """Naming a judge's job does not make it another judge: the hash ignores role and policy."""
    import shutil

    from selfj_rlhf.judge.directory import JUDGES_DIR, directory_hash

    copy = tmp_path / "judge"
    shutil.copytree(JUDGES_DIR / "selfj-smollm2-135m-v3", copy)
    with_role = directory_hash(copy)
    config = json.loads((copy / "selfj_config.json").read_text())
    del config["role"], config["policy"]
    (copy / "selfj_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n")
    assert directory_hash(copy) == with_role
    config["max_length"] = 512
    (copy / "selfj_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n")
    assert directory_hash(copy) != with_role


@pytest.mark.integration
def test_the_pool_alias_loads_the_judge_of_other_models_answers():
    from selfj_rlhf import SelfJudge
    from selfj_rlhf.judge.directory import POOL_JUDGE, judge_identity

    assert POOL_JUDGE == "selfj-smollm2-135m-pool" and judge_identity(POOL_JUDGE)["name"] == "selfj-smollm2-135m-v9"
    judge = SelfJudge.from_pretrained("selfj-smollm2-135m-pool")
    assert judge.head is not None and 0 <= judge.score(["What is 2+2?"], ["4"])[0] <= 9


def role_warning(match):
    from selfj_rlhf.judge.directory import JudgeRoleWarning

    return pytest.warns(JudgeRoleWarning, match=match)


def test_an_own_samples_judge_as_the_alpacaeval_annotator_warns():
    from selfj_rlhf.rlhf.alpacaeval import SelfJPairwiseAnnotator

    with role_warning("own samples.*use 'selfj-smollm2-135m-pool'"):
        SelfJPairwiseAnnotator(judge="selfj-smollm2-135m")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SelfJPairwiseAnnotator()  # the default is the pool judge


@pytest.mark.parametrize("module", ["evals.model_ranking", "evals.judge_correlation", "evals.selective"])
def test_an_own_samples_judge_on_other_models_answers_warns(module, tmp_path):
    import importlib

    main = importlib.import_module(module).main
    with role_warning("not other models' answers"), pytest.raises(BaseException):
        main(["--judge", "selfj=selfj-smollm2-135m", "--arena", str(tmp_path / "missing.jsonl"),
              "--cache_dir", str(tmp_path / "cache")])


def test_a_reward_for_another_policy_warns_once_naming_the_judge_to_use():
    from selfj_rlhf import SelfJRewardConfig

    with role_warning("trained on the samples of smollm2-135m-instruct, not of policy 'org/other-7b'"):
        SelfJRewardConfig(judge="selfj-smollm2-135m", policy="org/other-7b")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per judge, use and policy
        SelfJRewardConfig(judge="selfj-smollm2-135m", policy="org/other-7b")
        SelfJRewardConfig(judge="selfj-smollm2-135m", policy="smollm2-135m-instruct")  # its own policy
    with role_warning("ranks other models' answers.*use 'selfj-smollm2-135m'"):
        SelfJRewardConfig(judge="selfj-smollm2-135m-pool", policy="smollm2-135m-instruct")


@pytest.mark.integration
def test_best_of_n_and_rounds_with_another_policy_warn(tiny_model_dir, tmp_path):
    """The shipped judge of the embedded policy's samples, used on another policy's (the tiny model's)."""
    from selfj_rlhf.rlhf.best_of_n import BestOfNConfig, run_best_of_n
    from selfj_rlhf.rlhf.rounds import RejectionSamplingConfig, _prepare

    prompts = write_prompts(tmp_path / "prompts.jsonl", count=1)
    with role_warning("not of policy .*[(]best-of-n[)]"):
        run_best_of_n(BestOfNConfig(policy=str(tiny_model_dir), judge="selfj-smollm2-135m", dataset=str(prompts),
                                    n=1, max_new_tokens=2, output_dir=str(tmp_path / "bon")))

    class ModelArgs:
        model_name_or_path = str(tiny_model_dir)

    with role_warning("rounds"):
        _prepare(RejectionSamplingConfig(judge="selfj-smollm2-135m"), None, ModelArgs())


def test_the_chain_result_compares_the_chosen_design_with_v5_within_its_fold_spread():
    from evals.own_samples_chain import V5_DESIGNS, compare, render

    v5 = {"chosen_design": "own samples, weight decay 0.3, layers 9-18 ensemble",
          "designs": {name: {"prompt_cv": {"spearman_within_prompt": value}}
                      for name, value in zip(V5_DESIGNS.values(), (0.300, 0.298, 0.282, 0.319, 0.314))}}
    names = list(V5_DESIGNS)
    cv = {"chosen": names[3], "folds": 5, "designs": {
        name: {"spearman_within_prompt": value, "folds": [value - 0.02, value + 0.02], "fold_std": 0.02}
        for name, value in zip(names, (0.29, 0.28, 0.27, 0.31, 0.30))}}
    result = compare(cv, v5)
    assert result["designs"][names[3]]["v5_benchmark"] == 0.319
    assert result["difference_to_v5"] == pytest.approx(-0.009) and result["within_fold_spread"]
    cv["designs"][names[3]]["spearman_within_prompt"] = 0.25
    assert not compare(cv, v5)["within_fold_spread"]
    payload = {"command": "python -m evals.own_samples_chain", "prompts": 240, "answers": 1920, "folds": 5,
               "machine": {"cpu": "cpu", "cpu_count": 2, "date": "today"}, "comparison": result, "stage_times": {}}
    assert "**(chosen)**" in render(payload) and "within the spread" in render(payload)


def test_batched_sampling_does_not_depend_on_which_prompts_share_a_call(tiny_model_dir, tmp_path):
    """Several prompts per generate call: each answer comes from its own seed, so calls of 2 and of 3 prompts (and
    so any sharding) give the same samples."""
    from selfj_rlhf.training.sampling import SampleConfig, run_sampling

    prompts = write_prompts(tmp_path / "prompts.jsonl", count=5)
    for size in (2, 3):
        run_sampling(SampleConfig(policy=str(tiny_model_dir), dataset=str(prompts), n=3, max_new_tokens=10,
                                  prompts_per_batch=size, output_dir=str(tmp_path / f"batch{size}")))
    two, three = ((tmp_path / f"batch{size}" / "samples.jsonl").read_text() for size in (2, 3))
    assert two == three
    rows = [json.loads(line) for line in two.splitlines()]
    assert len(rows) == 5 and all(len({c["text"] for c in r["candidates"]}) > 1 for r in rows)
