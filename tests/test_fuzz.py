"""Bad-input fuzzing at CI size (fixed cases + 60 seeded random mutations per reader, config cases): every
case is a clear error naming the file (and line where there is one) or valid input; none crashes.
The larger run: python -m evals.fuzz_inputs --random_cases 2000"""


from evals.fuzz_inputs import run_campaign


def test_fuzz_campaign_has_no_crash_and_every_error_is_located():
    result = run_campaign(random_cases=60, seed=1)
    assert result["failures"] == []
    fixed = {(r["target"], r["case"]): r["outcome"] for r in result["records"] if not r["case"].startswith("random")}
    assert fixed[("prompts", "malformed JSON line")] == "error: names file and line"
    assert fixed[("scored_candidates", "NaN score")] == "error: names file and line"
    assert fixed[("labels", "label out of range")] == "error: names file and line"
    assert fixed[("prompts", "extra field")] == "accepted"
    assert all(outcome == "error: names file" for (target, case), outcome in fixed.items()
               if target.startswith("recipe ")), "unknown YAML keys must be a located ConfigError"
    assert result["cases"] > 300
