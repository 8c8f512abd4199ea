"""Kill-and-resume campaign at CI size: each recipe is SIGKILLed at random moments (2 kills, seeded), restarted
with the same command, and must end with the uninterrupted run's outputs, no duplicated rows and no
temporary files. The larger run: python evals/kill_resume.py --kills 5"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evals"))

from kill_resume import campaign  # noqa: E402


@pytest.mark.parametrize("recipe", ["best_of_n", "label", "build_pairs", "rejection_sampling"])
def test_recipe_survives_kills(recipe, tmp_path_factory):
    work = tmp_path_factory.getbasetemp() / "kill_resume"
    result = campaign(work, kills=2, seed=0, recipes=[recipe])[recipe]
    assert result["kills_survived"] == 2 and result["completed_runs_checked"] >= 1
    assert result["ok"], result["problems"]
