"""The package ships a trained SELF-J judge for the embedded model, loadable offline by alias."""

import json

import pytest

from selfj_rlhf.best_of_n import BestOfNConfig
from selfj_rlhf.reward import SelfJRewardConfig
from selfj_rlhf.shipped import JUDGES_DIR, SHIPPED_JUDGES, default_judge_for, shipped_judge_available


def test_shipped_judge_files_and_provenance():
    assert shipped_judge_available("selfj-smollm2-135m")
    directory = JUDGES_DIR / SHIPPED_JUDGES["selfj-smollm2-135m"][0]
    config = json.loads((directory / "selfj_config.json").read_text())
    assert config["base_model"] == "smollm2-135m-instruct" and config["template"] == "selfj-chat"
    assert config["head"] == {"kind": "scalar", "layer": 18} and config["length_control"]["kind"] == "log_length_linear"
    assert (directory / "scalar_head.safetensors").stat().st_size < 100_000
    provenance = (directory / "PROVENANCE.md").read_text()
    for needed in ("Command", "arena_bench_v1/grades.jsonl", "recipes/splits/arena_bench_v1_dev.json",
                   "recipes/configs/label_pool.yaml", "recipes/configs/train_judge_pool.yaml"):
        assert needed in provenance


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
    assert all(-2 <= s <= 11 for s in trained)  # the label scale 0-9; a linear head may step slightly outside
    assert trained != pytest.approx(untrained, abs=1e-3)
    assert trained[0] > trained[1]
