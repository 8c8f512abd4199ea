"""The pre-registered policy-improvement test (evals/preregistration/): the plan is complete, names the judge it
was written for by content hash, and every result that follows it records the plan's hash and was committed after
it."""

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
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


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def data_root(tmp_path):
    """A converted-data folder with a few rows per source: FLASK with long and short references, GSM8K with a test
    split, arena-bench with two answers per question."""
    root = tmp_path / "data"
    topics = ["rivers", "planets", "volcanoes", "glaciers", "deserts", "forests", "oceans", "islands"]
    _write(root / "flask/flask_ref.jsonl", [
        {"id": f"flask:{i}", "instruction": f"Describe {t} and what makes {t} matter to people living near them",
         "input": "",
         "reference": ("long answer " * 100) if i % 2 else "a short reference answer", "category": "common"}
        for i, t in enumerate(topics)])
    _write(root / "gpteacher_codegen/codegen_ref.jsonl", [
        {"id": f"gpteacher_codegen:{i}", "instruction": f"Write a function number {i} that sorts {t}", "input": "",
         "reference": "def f(x): return sorted(x)", "category": "coding"} for i, t in enumerate(topics)])
    _write(root / "gsm8k/gsm8k_ref.jsonl", [
        {"id": f"gsm8k:{split}:{i}", "instruction": f"How many {t} are there if {i} plus {i} are added together?",
         "input": "", "reference": "Add them up to get the answer #### 4", "category": "academic",
         "meta": {"split": split}} for split in ("train", "test") for i, t in enumerate(topics)])
    _write(root / "arena_bench_v1/grades.jsonl", [
        {"id": f"arena-bench-v1:{q}:{m}", "question_id": q, "model": m, "instruction": f"Explain {t} to me now",
         "reference": f"reference of {m} about {t}", "response": "x", "score": 5}
        for q, t in enumerate(topics) for m in ("claude-1", "gpt-4-0314")])
    return root


def test_near_duplicates_by_word_5_gram_containment():
    from evals.policy_improvement import NearDuplicates

    earlier = NearDuplicates(["Please describe rivers and what makes rivers matter to people living near them today",
                              "Name a colour."])
    assert earlier.covers("Describe rivers and what makes rivers matter to people living near them")  # 7 of 8
    assert not earlier.covers("Describe planets and what makes planets matter to people living near them")  # 2 of 8
    assert earlier.covers("name a COLOUR") and not earlier.covers("Name a shape.")  # under five words: the same words


def test_the_drawer_follows_the_plan_s_test_set(data_root):
    from evals.policy_improvement import draw_test_set

    test_set = {"seed": 2, "prompts": 12, "per_source": {"flask": 4, "gpteacher_codegen": 2, "gsm8k": 3,
                                                         "arena_bench_v1": 3},
                "long_reference_chars": 1000, "max_instruction_chars": 1200, "min_reference_chars": 20}
    excluded = [{"id": "gsm8k:train:0", "instruction": "anything"},
                # a near-duplicate of FLASK's rivers prompt: the same 5-grams, other words around them
                {"id": "elsewhere:1",
                 "instruction": "Please describe rivers and what makes rivers matter to people living near them today"}]
    prompts = draw_test_set(test_set, data_root, excluded)
    assert prompts == draw_test_set(test_set, data_root, excluded)  # seeded
    by_source = {s: [p for p in prompts if p["source"] == s] for s in test_set["per_source"]}
    assert {s: len(rows) for s, rows in by_source.items()} == test_set["per_source"]
    assert sum(p["long_reference"] for p in by_source["flask"]) == 2  # half of FLASK's share
    assert all(p["id"].startswith("gsm8k:train:") and p["id"] != "gsm8k:train:0" for p in by_source["gsm8k"])
    assert "flask:0" not in {p["id"] for p in prompts}  # the near-duplicate of the excluded rivers prompt
    assert "flask:0" in {p["id"] for p in draw_test_set(test_set, data_root, excluded[:1])}  # drawn otherwise
    assert all(p["reference"].startswith("reference of gpt-4-0314") for p in by_source["arena_bench_v1"])
    with pytest.raises(Exception, match="gpteacher_codegen: 8 eligible prompts left after the exclusions, 9 wanted"):
        draw_test_set({**test_set, "per_source": {"gpteacher_codegen": 9}}, data_root, excluded)


def test_a_draw_records_the_plan_and_happens_once(data_root, tmp_path):
    from evals.policy_improvement import main

    exclude = _write(tmp_path / "earlier.jsonl", [{"id": "flask:1", "instruction": "x"}])
    small = plan()
    small["test_set"].update(prompts=4, per_source={"flask": 2, "arena_bench_v1": 2})
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(yaml.safe_dump(small))
    args = ["draw", "--plan", str(plan_path), "--data_dir", str(data_root), "--exclude", str(exclude),
            "--output_dir", str(tmp_path / "out"), "--result_name", ""]
    main(args)
    record = json.loads((tmp_path / "out" / "draw.json").read_text())
    assert record["preregistration_sha256"] == hashlib.sha256(plan_path.read_bytes()).hexdigest()
    assert record["per_source"] == {"flask": 2, "arena_bench_v1": 2} and record["skipped"].get("excluded id", 0) <= 1
    rows = [json.loads(line) for line in (tmp_path / "out" / "prompts.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and "flask:1" not in {r["id"] for r in rows}
    with pytest.raises(SystemExit, match="one draw"):
        main(args)


def test_a_committed_draw_is_restored_without_a_second_draw(data_root, tmp_path):
    """A new checkout rebuilds the same prompts, in the same order, from the record's ids and the data files."""
    from evals.policy_improvement import main

    small = plan()
    small["test_set"].update(prompts=6, per_source={"flask": 2, "gsm8k": 2, "arena_bench_v1": 2})
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(yaml.safe_dump(small))
    exclude = _write(tmp_path / "earlier.jsonl", [{"id": "flask:1", "instruction": "x"}])
    main(["draw", "--plan", str(plan_path), "--data_dir", str(data_root), "--exclude", str(exclude),
          "--output_dir", str(tmp_path / "drawn"), "--result_name", ""])
    drawn = [json.loads(line) for line in (tmp_path / "drawn" / "prompts.jsonl").read_text().splitlines()]
    record = {**json.loads((tmp_path / "drawn" / "draw.json").read_text()), "ids": [p["id"] for p in drawn],
              "long_reference_ids": [p["id"] for p in drawn if p["long_reference"]]}
    record_path = tmp_path / "record.json"
    record_path.write_text(json.dumps(record))
    restore = ["restore", "--plan", str(plan_path), "--record", str(record_path), "--data_dir", str(data_root)]
    main(restore + ["--output_dir", str(tmp_path / "restored")])
    restored = [json.loads(line) for line in (tmp_path / "restored" / "prompts.jsonl").read_text().splitlines()]
    assert restored == drawn
    draw_json = json.loads((tmp_path / "restored" / "draw.json").read_text())
    assert draw_json["preregistration_sha256"] == record["preregistration_sha256"]
    assert draw_json["restored_from"] == str(record_path)
    with pytest.raises(SystemExit, match="already there"):
        main(restore + ["--output_dir", str(tmp_path / "restored")])
    # another plan's record, an id the data lacks, a reference that changed stratum: refused, nothing written
    plan_path.write_text(yaml.safe_dump({**small, "written": "later"}))
    with pytest.raises(Exception, match="drawn under plan"):
        main(restore + ["--output_dir", str(tmp_path / "other_plan")])
    plan_path.write_text(yaml.safe_dump(small))
    record_path.write_text(json.dumps({**record, "ids": record["ids"] + ["flask:99"]}))
    with pytest.raises(Exception, match=r"1 drawn ids are not in the data .*\(first: flask:99\)"):
        main(restore + ["--output_dir", str(tmp_path / "lacking")])
    record_path.write_text(json.dumps({**record, "long_reference_ids": []}))
    with pytest.raises(Exception, match="changed length stratum"):
        main(restore + ["--output_dir", str(tmp_path / "stratum")])
    assert not any((tmp_path / name).exists() for name in ("other_plan", "lacking", "stratum"))


def _own_samples(tmp_path: Path) -> tuple[Path, Path]:
    """Two prompts' answers (the sampling stage's pool.jsonl) and their teacher labels: the longer, finished answers
    labelled higher."""
    samples, labels = [], []
    for prompt in range(2):
        for k, (tokens, finished, label) in enumerate([(30, True, 8.0), (20, True, 5.0), (60, False, 1.0),
                                                       (5, True, 2.0)]):
            sample_id = f"p{prompt}#{k}"
            samples.append({"id": sample_id, "question_id": f"p{prompt}", "instruction": f"Name colour {prompt}.",
                            "reference": "Blue.", "response": f"answer {k} " * (tokens // 5), "num_tokens": tokens,
                            "finished": finished})
            labels.append({"id": sample_id, "kind": "pool", "score_label": label})
        labels.append({"id": f"p{prompt}#free", "kind": "content_free", "score_label": 0.0})
    return _write(tmp_path / "pool.jsonl", samples), _write(tmp_path / "labels.jsonl", labels)


def test_the_length_and_finished_baseline_learns_what_the_labels_pay_for(tmp_path):
    from evals.policy_improvement import length_and_finished_model

    score = length_and_finished_model(*_own_samples(tmp_path))
    assert score(30, True) > score(60, False)  # finished beats cut, as the labels say
    assert score(30, True) > score(5, True)


def test_the_arms_candidates_hold_the_same_answers_scored_by_judge_and_teacher(tiny_judge, tmp_path, monkeypatch):
    from evals.policy_improvement import main
    from selfj_rlhf.judge.directory import directory_hash

    judge_dir = tmp_path / "judge"
    tiny_judge.save_pretrained(judge_dir)
    samples, labels = _own_samples(tmp_path)
    small = plan()
    small["judge"] = {"name": str(judge_dir), "content_hash": directory_hash(judge_dir)}
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(yaml.safe_dump(small))
    out = tmp_path / "arms"
    args = ["arm-candidates", "--plan", str(plan_path), "--samples", str(samples), "--labels", str(labels),
            "--output_dir", str(out)]
    main(args)
    judge_rows = [json.loads(line) for line in (out / "judge.jsonl").read_text().splitlines()]
    teacher_rows = [json.loads(line) for line in (out / "teacher.jsonl").read_text().splitlines()]
    assert [r["id"] for r in judge_rows] == [r["id"] for r in teacher_rows] == ["p0", "p1"]
    for judged, taught in zip(judge_rows, teacher_rows):
        assert [c["text"] for c in judged["candidates"]] == [c["text"] for c in taught["candidates"]]
        assert [c["score"] for c in taught["candidates"]] == [8.0, 5.0, 1.0, 2.0]
        assert [c["finished"] for c in judged["candidates"]] == [True, True, False, True]
    assert json.loads((out / "summary.json").read_text())["unfinished"] == 2
    from selfj_rlhf.judge import self_judge

    monkeypatch.setattr(self_judge.SelfJudge, "from_pretrained", lambda *a, **k: pytest.fail("scored again"))
    main(args)  # every prompt's scores are on disk: nothing is scored again
    small["judge"]["content_hash"] = "0" * 16
    plan_path.write_text(yaml.safe_dump(small))
    with pytest.raises(Exception, match="content hash"):
        main(args)


def test_the_evaluation_measures_each_policy_s_greedy_answers_on_the_drawn_set(tiny_model_dir, tmp_path):
    from evals.policy_improvement import main

    drawn = tmp_path / "drawn"
    prompts = _write(drawn / "prompts.jsonl", [
        {"id": "gsm8k:3", "instruction": "What is 2 + 2?", "reference": "2 + 2 = 4. The answer is 4."},
        {"id": "arena-bench-v1:7", "instruction": "Write a poem.", "reference": "Roses. " * 200}])
    (drawn / "draw.json").write_text(json.dumps({"preregistration_sha256": hashlib.sha256(PLAN.read_bytes())
                                                 .hexdigest()}))
    args = ["evaluate", "--prompts", str(prompts), "--policy", f"tiny={tiny_model_dir}",
            "--output_dir", str(tmp_path / "greedy")]
    main(args)
    out = tmp_path / "greedy" / "tiny"
    measures = [json.loads(line) for line in (out / "measures.jsonl").read_text().splitlines()]
    assert [(m["id"], m["source"], m["long_reference"]) for m in measures] == [
        ("gsm8k:3", "gsm8k", False), ("arena-bench-v1:7", "arena_bench_v1", True)]
    assert measures[0]["exact_match"] in (0.0, 1.0) and measures[1]["exact_match"] is None
    assert all(0 <= m["f1"] <= 1 and -1 <= m["cosine"] <= 1 and m["num_tokens"] <= 256 for m in measures)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preregistration_sha256"] == hashlib.sha256(PLAN.read_bytes()).hexdigest()
    (drawn / "draw.json").write_text(json.dumps({"preregistration_sha256": "0" * 64}))
    with pytest.raises(Exception, match="drawn under plan"):
        main(args)


def test_holm_steps_down_and_stops_at_the_first_kept_hypothesis():
    from evals.policy_improvement_report import holm

    assert holm([0.001, 0.03, 0.004], 0.025) == [(True, 0.025 / 3), (False, 0.025), (True, 0.025 / 2)]
    assert holm([0.001, 0.02, 0.004], 0.025)[1] == (True, 0.025)
    assert [rejected for rejected, _ in holm([0.03, 0.001], 0.025)] == [False, True]
    assert [rejected for rejected, _ in holm([0.02, 0.02], 0.025)] == [False, False]  # 0.02 > 0.025 / 2: stop


def _measures(root: Path, arm: str, shift: float, sha: str, prompts: int = 30) -> None:
    rng = np.random.default_rng(len(arm))
    rows = [{"id": f"{'gsm8k' if k % 2 else 'flask'}:{k}", "source": "gsm8k" if k % 2 else "flask",
             "long_reference": k % 3 == 0, "cosine": 0.5 + shift + 0.01 * float(rng.normal()),
             "f1": 0.3 + shift + 0.01 * float(rng.normal()), "exact_match": None, "num_tokens": 50 + k,
             "finished": k % 10 != 0} for k in range(prompts)]
    _write(root / arm / "measures.jsonl", rows)
    (root / arm / "summary.json").write_text(json.dumps({"preregistration_sha256": sha}))


def test_the_report_applies_holm_only_when_all_six_primary_endpoints_exist(tmp_path):
    from evals.policy_improvement_report import render, report

    sha = hashlib.sha256(PLAN.read_bytes()).hexdigest()
    for arm, shift in [("base", 0.0), ("rs_a", 0.05), ("rs_b", 0.0), ("rs_c", 0.02)]:
        _measures(tmp_path, arm, shift, sha)
    partial = report(PLAN, tmp_path)
    assert not partial["complete"] and partial["goal_met"] is None
    assert [("p_value" in row) for row in partial["primary"]] == [False, False, True, True, True, True]
    assert all("significant" not in row for row in partial["primary"])
    for arm, shift in [("bon16_judge", 0.0), ("bon16_random", 0.0)]:
        _measures(tmp_path, arm, shift, sha)
    full = report(PLAN, tmp_path)
    assert full["complete"] and full["goal_met"] is True
    rs = [row for row in full["primary"] if row["arm"] == "rs_a"]
    assert all(row["significant"] and row["interval"][0] > 0 for row in rs)
    assert not any(row["significant"] for row in full["primary"] if row["arm"] == "bon16_judge")
    strata = {(row["comparison"], row["stratum"]) for row in full["secondary"]}
    assert {("rejection sampling a minus c", "long reference"), ("rejection sampling a minus c", "gsm8k")} <= strata
    assert "Goal" in render({**full, "command": "c", "machine": {"cpu": "x", "cpu_count": 1, "date": "d"}})
    _measures(tmp_path, "rs_b", 0.0, "0" * 64)
    with pytest.raises(Exception, match="another plan"):
        report(PLAN, tmp_path)


def test_the_report_reads_and_plots_grpo_s_fixed_prompt_curve(tmp_path):
    from evals.policy_improvement_report import grpo_curves, plot_grpo, render, report

    run = tmp_path / "grpo"
    assert grpo_curves(run) is None  # not run yet: no section
    _write(run / "probe_reward.jsonl", [{"step": s, "score_mean": 3.0 + s / 10, "tokens_mean": 40 - s,
                                         "cut_at_cap": 0.0, "scores": [], "tokens": []} for s in (10, 0)])
    state = run / "trainer" / "checkpoint-10" / "trainer_state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"log_history": [{"step": 1, "reward": 2.5}, {"step": 1, "loss": 0.1}]}))
    curves = grpo_curves(run)
    assert [r["step"] for r in curves["probe"]] == [0, 10] and curves["training_reward"] == [{"step": 1, "reward": 2.5}]
    plot_grpo(curves, tmp_path / "grpo.png")
    assert (tmp_path / "grpo.png").stat().st_size > 0
    sha = hashlib.sha256(PLAN.read_bytes()).hexdigest()
    _measures(tmp_path / "measures", "base", 0.0, sha)
    payload = {**report(PLAN, tmp_path / "measures"), "grpo": curves, "command": "c",
               "machine": {"cpu": "x", "cpu_count": 1, "date": "d"}}
    assert "| 10 | 4.000 | 30.0 | 0% |" in render(payload)
    check = {"policy": "runs/rs_d", "prompts": 66, "change_nats": -0.03, "minimum_nats": 0.05,
             "retrain_with_6_epochs": True}
    assert "| `runs/rs_d` | 66 | -0.0300 | 0.05 | yes |" in render({**payload, "budget_checks": [check]})


def test_best_of_n_picks_take_the_first_n_candidates():
    from evals.policy_improvement import best_of_n_picks

    candidates = [{"score": s, "num_tokens": t, "finished": f}
                  for s, t, f in [(1.0, 50, True), (5.0, 10, False), (3.0, 20, True), (9.0, 90, True)]]
    picks = best_of_n_picks(candidates, 3, lambda tokens, finished: float(finished) - tokens / 100)
    assert picks == {"judge": [1], "random": [0, 1, 2], "shortest": [2], "longest": [0], "length_and_finished": [2]}
    assert best_of_n_picks(candidates, 4, lambda t, f: 0.0)["judge"] == [3]
    unfinished = [{**c, "finished": False} for c in candidates]
    assert best_of_n_picks(unfinished, 4, lambda t, f: 0.0)["shortest"] == [1]  # none finished: the shortest


def test_the_best_of_n_step_writes_each_pick_as_an_arm(tmp_path):
    from evals.policy_improvement import main

    samples, labels = _own_samples(tmp_path)
    drawn = _write(tmp_path / "drawn" / "prompts.jsonl", [
        {"id": f"flask:{k}", "instruction": f"Describe colour {k}.", "reference": f"Colour {k} is blue and bright."}
        for k in range(2)])
    candidates = [{"id": f"flask:{k}", "candidates": [
        {"text": "Colour is blue and bright." if i == 5 else f"noise {i}", "score": 8.0 if i == 5 else 1.0,
         "num_tokens": 10 + i, "finished": i != 7} for i in range(16)]} for k in range(2)]
    cands = _write(tmp_path / "cands.jsonl", candidates)
    out = tmp_path / "arms"
    args = ["best-of-n", "--prompts", str(drawn), "--candidates", str(cands), "--samples", str(samples),
            "--labels", str(labels), "--output_dir", str(out)]
    main(args)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"bon{n}_{pick}" for n in (4, 8, 16) for pick in
                                                         ("judge", "random", "shortest", "longest",
                                                          "length_and_finished"))

    def arm(name):
        return [json.loads(line) for line in (out / name / "measures.jsonl").read_text().splitlines()]

    assert all(row["f1"] > 0.9 and row["num_tokens"] == 15 for row in arm("bon8_judge"))
    assert all(row["num_tokens"] == 13 for row in arm("bon4_longest"))  # the first 4 only
    assert arm("bon16_random")[0]["num_tokens"] == pytest.approx(17.5) and arm("bon16_random")[0]["finished"] == 15 / 16
    _write(cands, candidates[:1])
    with pytest.raises(Exception, match="no candidates for 1 test prompts"):
        main(args)


def test_the_budget_check_measures_how_far_arm_d_moved_the_development_references(tiny_model_dir, tmp_path):
    from evals.policy_improvement import BUDGET_MIN_NATS, main

    prompts = _write(tmp_path / "dev.jsonl", [{"id": f"d{k}", "instruction": f"Say {k}.", "reference": f"{k} it is."}
                                              for k in range(3)])
    out = tmp_path / "budget.json"
    main(["budget-check", "--policy", str(tiny_model_dir), "--base", str(tiny_model_dir), "--prompts", str(prompts),
          "--output", str(out)])
    record = json.loads(out.read_text())
    assert record["prompts"] == 3 and record["change_nats"] == pytest.approx(0.0, abs=1e-6)  # the same weights
    assert record["retrain_with_6_epochs"] is True and record["minimum_nats"] == BUDGET_MIN_NATS
    assert record["mean_log_prob_per_token"]["base"] < 0
    assert record["preregistration_sha256"] == hashlib.sha256(PLAN.read_bytes()).hexdigest()


def test_the_chain_script_runs_every_arm_with_commands_its_parsers_accept(tmp_path):
    """evals/policy_improvement.sh, dry: each printed command parses strictly with its recipe's or step's parser,
    the budget check comes before every 6-epoch arm and every evaluation, and the arms evaluated are the report's."""
    import importlib.util
    import os
    import shlex
    import subprocess

    from evals.policy_improvement import make_parser as steps_parser
    from evals.policy_improvement_report import PRIMARY, SECONDARY
    from evals.policy_improvement_report import make_parser as report_parser
    from selfj_rlhf.cli.dry_run import allow_gpu_config_on_cpu

    script = REPO / "evals" / "policy_improvement.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True,
                          env={**os.environ, "DRY_RUN": "1", "SELFJ_DATA_DIR": str(tmp_path)})
    commands = [shlex.split(line[2:]) for line in done.stderr.splitlines() if line.startswith("+ ")]
    evaluated = set()
    for position, argv in enumerate(commands):
        if argv[:2] == ["python", "-m"]:
            parser = steps_parser() if argv[2] == "evals.policy_improvement" else report_parser()
            args = parser.parse_args(argv[3:])
            if getattr(args, "step", None) == "evaluate":
                evaluated = {item.split("=", 1)[0] for item in args.policy}
                checks = [i for i, c in enumerate(commands) if "budget-check" in c]
                assert checks and max(checks) < position
            continue
        recipe = next(arg for arg in argv if arg.startswith("recipes/"))
        spec = importlib.util.spec_from_file_location(f"chain_{Path(recipe).stem}", REPO / recipe)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        recipe_argv = argv[argv.index(recipe) + 1:]
        parser = module.make_parser()
        allow_gpu_config_on_cpu(parser, recipe_argv)
        parsed = parser.parse_args_and_config([a.replace("recipes/configs", str(REPO / "recipes/configs"))
                                               for a in recipe_argv])
        epochs = next((group.num_train_epochs for group in parsed if hasattr(group, "num_train_epochs")), None)
        if epochs == 6:  # the budget check's branch: after the check, never before
            assert any("budget-check" in c for c in commands[:position]), argv
    arms = {arm for _, *pair in PRIMARY + SECONDARY for arm in pair if not arm.startswith("bon")}
    assert evaluated == arms and any("best-of-n" in c for c in commands)
