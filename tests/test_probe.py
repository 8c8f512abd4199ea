"""``selfj probe-judge``: the attack suite runs end to end on the tiny model and its thresholds are applied."""

import json

import pytest

from selfj_rlhf.core.errors import ConfigError, RecordError
from selfj_rlhf.judge.probe import ATTACKS, CONTENT_FREE, PADDING, ProbeConfig, attack_table, verdict, wilson_interval


def write_answers(path, count=6):
    path.write_text("".join(json.dumps({"instruction": f"How do rivers form, part {i}?",
                                        "response": f"Rain collects in channels and flows downhill ({i})."}) + "\n"
                            for i in range(count)))
    return path


def test_the_probe_runs_every_attack_and_applies_its_thresholds(tiny_model_dir, tmp_path, capsys):
    from selfj_rlhf.cli.main import main

    answers = write_answers(tmp_path / "answers.jsonl")
    argv = ["probe-judge", "--judge", str(tiny_model_dir), "--answers", str(answers), "--max_length", "256",
            "--output_dir", str(tmp_path / "probe"), "--fail_on_violation", "true"]
    try:
        main(argv)
        code = 0
    except SystemExit as exit:
        code = exit.code
    result = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert result["prompts"] == 6 and set(result["attacks"]) == {a.name for a in ATTACKS}
    for row in result["attacks"].values():
        low, high = row["false_positive_ci95"]
        assert 0 <= low <= row["false_positive_rate"] <= high <= 1
    assert code == (0 if result["passed"] else 1)
    assert result["passed"] == (not result["failures"])
    assert "probe.md" in capsys.readouterr().out and (tmp_path / "probe" / "probe.md").read_text().startswith("Judge")


def test_the_verdict_fails_content_free_wins_and_padding_gains():
    cfg = ProbeConfig(answers="unused.jsonl")
    honest = [5.0] * 100
    fine = {a.name: [4.0] * 100 for a in ATTACKS}
    assert verdict(attack_table(honest, fine), cfg)["passed"]
    colon = next(a.name for a in ATTACKS if a.kind == CONTENT_FREE)
    leaky = {**fine, colon: [6.0] * 15 + [4.0] * 85}  # 15 % at least as high as honest
    failures = verdict(attack_table(honest, leaky), cfg)["failures"]
    assert len(failures) == 1 and failures[0].startswith(colon)
    borderline = {**fine, colon: [6.0] * 9 + [4.0] * 11}  # 45 %: also the interval
    assert not verdict(attack_table([5.0] * 20, {k: v[:20] for k, v in borderline.items()}), cfg)["passed"]
    padding = next(a.name for a in ATTACKS if a.kind == PADDING)
    assert not verdict(attack_table(honest, {**fine, padding: [5.2] * 100}), cfg)["passed"]


def test_wilson_interval_and_bad_input(tmp_path):
    low, high = wilson_interval(10, 100)
    assert low < 0.10 < high < 0.2
    with pytest.raises(ConfigError, match="--answers"):
        ProbeConfig()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "Q?", "response": "A."}\n{"instruction": "Q2?"}\n')
    from selfj_rlhf.judge.probe import load_honest_answers

    with pytest.raises(RecordError, match=r"bad.jsonl:2: field .response.: missing"):
        load_honest_answers(ProbeConfig(answers=str(bad)))


def test_candidates_files_give_their_chosen_answer(tmp_path):
    from selfj_rlhf.judge.probe import load_honest_answers

    path = tmp_path / "candidates.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Q{i}?", "chosen": 1,
                                        "candidates": [{"text": "first"}, {"text": f"picked {i}"}]}) + "\n"
                            for i in range(3)))
    assert load_honest_answers(ProbeConfig(answers=str(path))) == [(f"Q{i}?", f"picked {i}") for i in range(3)]


def test_the_probe_scores_as_each_attack_scored_alone(tiny_judge, tmp_path):
    """The probe scores every prompt's answers in one call (sharing each prompt's prefix); the scores are those of
    each attack scored on its own."""
    from selfj_rlhf.judge.probe import run_probe

    answers = write_answers(tmp_path / "answers.jsonl", count=3)
    result = run_probe(ProbeConfig(judge="tiny", answers=str(answers), max_length=256,
                                   output_dir=str(tmp_path / "probe")), judge=tiny_judge)
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    instructions, honest = [r["instruction"] for r in rows], [r["response"] for r in rows]
    attack = next(a for a in ATTACKS if a.kind == PADDING)
    alone = tiny_judge.score(instructions, [attack.make(a, q, honest[(i + 1) % 3])
                                            for i, (q, a) in enumerate(zip(instructions, honest))])
    assert result["attacks"][attack.name]["mean"] == pytest.approx(sum(alone) / 3, abs=1e-4)
    assert result["honest_mean"] == pytest.approx(sum(tiny_judge.score(instructions, honest)) / 3, abs=1e-4)


def test_the_shipped_probe_resumes_with_the_sets_a_killed_run_finished(tiny_model_dir, tmp_path):
    import shutil
    from dataclasses import replace

    from evals.probe_shipped import finished_probe
    from selfj_rlhf.judge.probe import run_probe

    cfg = ProbeConfig(judge=str(tiny_model_dir), answers=str(write_answers(tmp_path / "answers.jsonl", count=2)),
                      max_length=256, output_dir=str(tmp_path / "set"))
    assert finished_probe(cfg) is None
    result = run_probe(cfg)
    assert finished_probe(cfg) == json.loads(json.dumps(result))
    assert finished_probe(replace(cfg, max_padding_shift=0.5)) is None  # other thresholds: probed again
    shipped = tmp_path / "shipped-name"
    shutil.copytree(tiny_model_dir, shipped)  # the same directory under its shipped name: the same judge
    reused = finished_probe(replace(cfg, judge=str(shipped)))
    assert reused["judge"]["name"] == str(shipped) and reused["attacks"] == result["attacks"]
    write_answers(tmp_path / "answers.jsonl", count=3)
    assert finished_probe(cfg) is None  # other answers: probed again


def test_the_fresh_probe_set_keeps_one_row_per_instruction_and_none_of_the_development_subsets(tmp_path):
    from evals.probe_shipped import preferred_answers

    def pair(id_, subset, instruction, preference="a"):
        return {"id": id_, "subset": subset, "instruction": instruction, "response_a": f"A to {id_}",
                "response_b": f"B to {id_}", "preference": preference, "in_alpacaeval": False}

    rows = [pair("1", "dev", "Name a colour."), pair("2", "fresh", "name a  colour."),  # a development question
            pair("3", "fresh", "Count to three.", "b"), pair("4", "fresh", "Count to three."),  # the same question
            pair("5", "fresh", "Spell cat."), {**pair("6", "fresh", "Say hi."), "in_alpacaeval": True}]
    source = tmp_path / "pairwise.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = preferred_answers(str(source), ["fresh"], 2, 0, tmp_path / "fresh.jsonl", exclude_subsets=("dev",))
    picked = [json.loads(line) for line in out.read_text().splitlines()]
    assert picked == [{"instruction": "Count to three.", "response": "B to 3", "id": "3"},
                      {"instruction": "Spell cat.", "response": "A to 5", "id": "5"}]
    with pytest.raises(ValueError, match="fewer than 3"):
        preferred_answers(str(source), ["fresh"], 3, 0, tmp_path / "more.jsonl", exclude_subsets=("dev",))
    # the confirmation set: the same rules, none of the fresh set's rows
    confirm = preferred_answers(str(source), ["fresh"], 1, 1, tmp_path / "confirm.jsonl", exclude_subsets=("dev",),
                                exclude_ids=frozenset({"3"}))
    assert [json.loads(line)["id"] for line in confirm.read_text().splitlines()] == ["5"]
