"""The package ships a trained SELF-J judge for the embedded model, loadable offline by alias."""

import json

import pytest

from selfj_rlhf.rlhf.best_of_n import BestOfNConfig
from selfj_rlhf.judge.reward_signal import SelfJRewardConfig
from selfj_rlhf.judge.directory import (JUDGE_ALIASES, JUDGES_DIR, SHIPPED_JUDGES, default_judge_for, directory_hash,
                                        judge_identity, resolve_judge_dir, shipped_judge_available)


def test_each_alias_names_its_role_s_newest_version_and_identities_carry_a_content_hash(tmp_path):
    from selfj_rlhf.judge.directory import ROLE_ALIASES

    def role(name):
        return json.loads((JUDGES_DIR / SHIPPED_JUDGES[name][0] / "selfj_config.json").read_text())["role"]

    for alias, (alias_role, name) in ROLE_ALIASES.items():
        versions = sorted((n for n in SHIPPED_JUDGES if role(n) == alias_role), key=lambda n: int(n.rsplit("-v", 1)[1]))
        assert name == versions[-1] == JUDGE_ALIASES[alias], alias
    newest = JUDGE_ALIASES["selfj-smollm2-135m"]
    assert resolve_judge_dir("selfj-smollm2-135m") == resolve_judge_dir(newest)
    identity = judge_identity("selfj-smollm2-135m")
    assert identity == {"name": newest, "hash": directory_hash(JUDGES_DIR / SHIPPED_JUDGES[newest][0])}
    assert judge_identity("org/some-model") == {"name": "org/some-model", "hash": None}
    # the hash follows the judge's content, not its provenance notes
    (tmp_path / "selfj_config.json").write_text("{}")
    first = directory_hash(tmp_path)
    (tmp_path / "PROVENANCE.md").write_text("notes")
    assert directory_hash(tmp_path) == first
    (tmp_path / "selfj_config.json").write_text('{"a": 1}')
    assert directory_hash(tmp_path) != first
    assert judge_identity(str(tmp_path))["name"] == tmp_path.name


# what each shipped judge's provenance must name: its data, its label config, the benchmark that chose it
PROVENANCE_NEEDS = {
    "selfj-smollm2-135m-v3": ("arena_bench_v1/grades.jsonl", "recipes/configs/label_pool_all.yaml",
                              "evals/pool_transfer.py", "evals/results/pool_transfer.md"),
    "selfj-smollm2-135m-v4": ("runs/improvement/prompts_train.jsonl", "recipes/configs/label_own_samples.yaml",
                              "evals/own_samples.py", "evals/results/own_samples.md"),
    "selfj-smollm2-135m-v5": ("runs/improvement/prompts_train.jsonl", "runs/improvement/more/prompts_train.jsonl",
                              "recipes/configs/label_own_samples.yaml", "evals/own_samples.py",
                              "evals/results/own_samples_v5.md"),
    "selfj-smollm2-135m-v6": ("rl_prompts/prompts_judge_train.jsonl", "recipes/configs/label_own_samples.yaml",
                              "recipes/configs/train_judge_own_samples.yaml", "evals/results/own_samples_chain.md"),
    "selfj-smollm2-135m-v7": ("arena_bench_v1/grades.jsonl", "recipes/configs/label_pool_all.yaml",
                              "recipes/configs/train_judge_pool.yaml", "evals/results/probe_shipped.md"),
    "selfj-smollm2-135m-v8": ("arena_bench_v1/grades.jsonl", "recipes/configs/label_pool_all.yaml",
                              "recipes/configs/train_judge_pool.yaml", "--pool_echoed_per_instruction 2",
                              "evals/results/probe_shipped.md"),
    "selfj-smollm2-135m-v9": ("arena_bench_v1/grades.jsonl", "recipes/configs/label_pool_all.yaml",
                              "recipes/configs/train_judge_pool.yaml", "evals/results/echo_guard.md",
                              "evals/results/probe_shipped.md"),
}
# the layers each shipped judge's head reads (v5: a layer ensemble, one linear map over four layers' states)
HEAD_LAYERS = {"selfj-smollm2-135m-v3": {"layer": 18}, "selfj-smollm2-135m-v4": {"layer": 18},
               **{f"selfj-smollm2-135m-v{k}": {"layers": [9, 12, 15, 18]} for k in (5, 6, 7, 8, 9)}}


@pytest.mark.parametrize("name", sorted(PROVENANCE_NEEDS))
def test_shipped_judge_files_and_provenance(name):
    assert shipped_judge_available(name)
    directory = resolve_judge_dir(name)
    config = json.loads((directory / "selfj_config.json").read_text())
    assert config["base_model"] == "smollm2-135m-instruct" and config["template"] == "selfj-chat"
    assert config["head"] == {"kind": "scalar", **HEAD_LAYERS[name]}
    assert config["length_control"]["kind"] == "log_length_linear"
    assert config["score_map"]["kind"] == "logistic"  # the score contract: every shipped judge scores on 0-9
    assert (directory / "scalar_head.safetensors").stat().st_size < 100_000
    provenance = (directory / "PROVENANCE.md").read_text()
    for needed in ("Command", *PROVENANCE_NEEDS[name]):
        assert needed in provenance
    if name in ("selfj-smollm2-135m-v6", "selfj-smollm2-135m-v7", "selfj-smollm2-135m-v8", "selfj-smollm2-135m-v9"):
        # the judges built against the probe: their relevance gate and CV table ship with them
        assert config["relevance"]["kind"] == "instruction_pmi" and (directory / "cv.json").is_file()
    assert ("echo_guard" in config) == (name == "selfj-smollm2-135m-v9")


def test_v9_is_v8_with_the_echo_guard():
    v8, v9 = resolve_judge_dir("selfj-smollm2-135m-v8"), resolve_judge_dir("selfj-smollm2-135m-v9")
    for file in ("scalar_head.safetensors", "cv.json"):
        assert (v8 / file).read_bytes() == (v9 / file).read_bytes()
    old, new = (json.loads((d / "selfj_config.json").read_text()) for d in (v8, v9))
    assert new.pop("echo_guard") == {"kind": "instruction_echo", "n": 3, "min_copied": 0.9, "min_coverage": 0.9,
                                     "floor": 0.0}
    for config in (old, new):
        config.pop("training")  # where the labels lay when each was built; their sha256 is the same
    assert old == new


def test_the_other_models_annotator_uses_the_pool_judge():
    from selfj_rlhf.judge.directory import POOL_JUDGE
    from selfj_rlhf.rlhf.alpacaeval import SelfJPairwiseAnnotator

    assert SelfJPairwiseAnnotator().judge_spec == POOL_JUDGE == "selfj-smollm2-135m-pool"
    assert JUDGE_ALIASES[POOL_JUDGE] == "selfj-smollm2-135m-v9"
    assert JUDGE_ALIASES["selfj-smollm2-135m"] != JUDGE_ALIASES[POOL_JUDGE]  # it ranks the policy's own samples


def test_shipped_judge_is_the_default_for_the_embedded_policy():
    assert default_judge_for("smollm2-135m-instruct") == "selfj-smollm2-135m"
    assert default_judge_for("some-org/other-model") == "some-org/other-model"
    assert BestOfNConfig().resolved_judge() == "selfj-smollm2-135m"
    assert BestOfNConfig(policy="org/model").resolved_judge() == "org/model"
    assert SelfJRewardConfig().judge == "selfj-smollm2-135m"


@pytest.mark.integration
def test_shipped_judge_loads_offline_and_differs_from_base():
    from selfj_rlhf import SelfJudge

    judge = SelfJudge.from_pretrained("selfj-smollm2-135m", device="cpu")
    base = SelfJudge.from_pretrained("smollm2-135m-instruct", device="cpu")
    items = (["Name a primary colour."] * 2, ["Red is a primary colour.", "colour colour colour colour"])
    trained, untrained = judge.score(*items), base.score(*items)
    assert all(0 <= s <= 9 for s in trained)
    assert trained != pytest.approx(untrained, abs=1e-3)
    assert trained[0] > trained[1]
