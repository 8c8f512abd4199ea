"""The pre-registered policy-improvement test (evals/preregistration/): the plan is complete, names the judge it
was written for by content hash, and every result that follows it records the plan's hash and was committed after
it."""

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PLAN = REPO / "evals" / "preregistration" / "policy_improvement.yaml"


def plan() -> dict:
    return yaml.safe_load(PLAN.read_text())


def test_the_plan_fixes_the_test_set_arms_and_endpoints():
    p = plan()
    assert p["test_set"]["prompts"] >= 200 == sum(p["test_set"]["per_source"].values())
    assert {"ids", "near_duplicates"} <= set(p["test_set"]["exclude"])
    assert {"best_of_n", "rejection_sampling", "dpo", "grpo", "evaluation"} <= set(p["arms"])
    assert set(p["arms"]["rejection_sampling"]["picks"]) == {"a", "b", "c", "d"}
    assert p["arms"]["grpo"]["steps"] >= 100
    assert len(p["primary_endpoints"]) == 6 and p["test"]["alpha"] == 0.025 and "Holm" in p["test"]["correction"]


def test_the_plan_names_the_shipped_judge_it_was_written_for():
    from selfj_rlhf.judge.directory import directory_hash, resolve_judge_dir

    judge = plan()["judge"]
    assert directory_hash(resolve_judge_dir(judge["name"])) == judge["content_hash"]


def _first_commit(path: Path) -> str | None:
    out = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", str(path.relative_to(REPO))],
                         cwd=REPO, capture_output=True, text=True)
    commits = out.stdout.split()
    return commits[-1] if out.returncode == 0 and commits else None


def results_following_the_plan() -> list[Path]:
    return [path for path in sorted((REPO / "evals" / "results").glob("*.json"))
            if "preregistration_sha256" in json.loads(path.read_text())]


@pytest.mark.parametrize("result", results_following_the_plan(), ids=lambda p: p.name)
def test_a_result_records_the_plan_it_followed_and_came_after_it(result):
    payload = json.loads(result.read_text())
    assert payload["preregistration_sha256"] == hashlib.sha256(PLAN.read_bytes()).hexdigest()
    plan_commit, result_commit = _first_commit(PLAN), _first_commit(result)
    if plan_commit is None or result_commit is None:
        pytest.skip("no git history here to order the plan and the result")
    ordered = subprocess.run(["git", "merge-base", "--is-ancestor", plan_commit, result_commit], cwd=REPO)
    assert ordered.returncode == 0 and plan_commit != result_commit, "the plan must be committed before the result"
