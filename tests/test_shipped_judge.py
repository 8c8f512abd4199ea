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
    assert (directory / "adapter_model.safetensors").stat().st_size < 20_000_000
    assert "Command" in (directory / "PROVENANCE.md").read_text()


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
