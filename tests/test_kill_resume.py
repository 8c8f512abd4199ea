"""Kill-and-resume campaign at CI size: each recipe is SIGKILLed at random moments (2 kills, seeded), restarted
with the same command, and must end with the uninterrupted run's outputs, no duplicated rows and no
temporary files. The larger run: python -m evals.kill_resume --kills 5"""


import pytest

from evals.kill_resume import campaign


@pytest.mark.parametrize("recipe", ["best_of_n", "label", "label_pool", "build_pairs", "rejection_sampling", "dpo",
                                    "grpo", "alpaca_eval_generate", "data_prepare", "train_judge_digit",
                                    "train_judge_scalar"])
def test_recipe_survives_kills(recipe, tmp_path_factory):
    work = tmp_path_factory.getbasetemp() / "kill_resume"
    result = campaign(work, kills=2, seed=0, recipes=[recipe])[recipe]
    assert result["kills_survived"] == 2 and result["completed_runs_checked"] >= 1
    assert result["ok"], result["problems"]
