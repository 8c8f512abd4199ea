"""Response pool: loading, the by-question split, teacher labels, augmentation, and no grade reaching labels."""

import json

import pytest

from selfj_rlhf.core.errors import ConfigError, RecordError
from selfj_rlhf.training.pool import (PoolFields, augmented_rows, load_pool, read_split, select, split_groups,
                                      teacher_labels, write_split)
from selfj_rlhf.core.io import atomic_write_jsonl

GRADE_FIELDS = ("score", "judge", "rationale", "scale")


def write_jsonl(path, rows):
    atomic_write_jsonl(path, rows)
    return path


def pool_rows(questions=4, models=3):
    rows = []
    for q in range(questions):
        for m in range(models):
            rows.append({"id": f"q{q}:m{m}", "question_id": f"q{q}", "model": f"m{m}", "instruction": f"Question {q}?",
                         "reference": f"The reference answer to question {q} is {q * 7}.",
                         "response": f"Model {m} says {q * 7 if m == 0 else 'something else'} to question {q}.",
                         "score": 10 - m, "judge": "gpt-4", "rationale": "because", "scale": "1-10"})
    return rows


class GradeGuard(dict):
    """A row that fails the test as soon as a grade field is read."""

    def __getitem__(self, key):
        assert key not in GRADE_FIELDS, f"grade field '{key}' was read"
        return super().__getitem__(key)

    def get(self, key, default=None):
        assert key not in GRADE_FIELDS, f"grade field '{key}' was read"
        return super().get(key, default)

    def __contains__(self, key):
        assert key not in GRADE_FIELDS, f"grade field '{key}' was probed"
        return super().__contains__(key)


def test_load_pool_groups_and_never_reads_grades(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "pool.jsonl", pool_rows())
    import selfj_rlhf.training.pool as pool_module

    real = pool_module.iter_records
    monkeypatch.setattr(pool_module, "iter_records", lambda p: ((n, GradeGuard(r)) for n, r in real(p)))
    answers = load_pool([path])
    assert len(answers) == 12 and {a.group for a in answers} == {"q0", "q1", "q2", "q3"}
    assert answers[0].model == "m0" and answers[0].reference.startswith("The reference")
    for name in GRADE_FIELDS:
        assert all(not hasattr(a, name) for a in answers)
    # labelling from these answers: the guard is gone, and no field of the dataclass carries a grade
    rows = [{"id": a.id, "group": a.group, "cosine": 0.1 * i, "f1": 0.05 * i} for i, a in enumerate(answers)]
    labels = teacher_labels(rows, {"cosine": 1, "f1": 1})
    assert len(labels) == 12 and all(0 <= v <= 9 for v in labels)


def test_load_pool_missing_group_groups_by_instruction_and_names_bad_rows(tmp_path):
    rows = [{"instruction": "A?", "response": "x", "reference": "ref a"},
            {"instruction": "A?", "response": "y", "reference": "ref a"},
            {"instruction": "B?", "response": "z", "reference": "ref b"}]
    answers = load_pool([write_jsonl(tmp_path / "p.jsonl", rows)])
    assert answers[0].group == answers[1].group != answers[2].group
    assert answers[0].model == "unknown"
    bad = write_jsonl(tmp_path / "bad.jsonl", rows[:1] + [{"instruction": "C?", "response": "r"}])
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: field 'reference': missing"):
        load_pool([bad])
    renamed = write_jsonl(tmp_path / "renamed.jsonl", [{"q": "A?", "a": "x", "gold": "r", "qid": 7}])
    answer = load_pool([renamed], PoolFields(instruction="q", response="a", reference="gold", group="qid"))[0]
    assert (answer.instruction, answer.response, answer.reference, answer.group) == ("A?", "x", "r", "7")


def test_split_is_by_group_seeded_and_round_trips(tmp_path):
    groups = [f"q{i}" for i in range(20) for _ in range(3)]
    split = split_groups(groups, heldout=6, seed=1)
    assert len(split["heldout"]) == 6 and len(split["train"]) == 14
    assert not set(split["train"]) & set(split["heldout"])
    assert split == split_groups(list(reversed(groups)), heldout=6, seed=1)  # order of rows does not matter
    assert split != split_groups(groups, heldout=6, seed=2)
    write_split(tmp_path / "split.json", split, seed=1)
    assert read_split(tmp_path / "split.json") == split
    with pytest.raises(ConfigError):
        split_groups(groups, heldout=20)
    (tmp_path / "overlap.json").write_text(json.dumps({"train": ["a", "b"], "heldout": ["b"]}))
    with pytest.raises(RecordError, match="heldout"):
        read_split(tmp_path / "overlap.json")


def test_committed_split_covers_at_least_90_train_and_50_heldout_questions():
    from conftest import REPO_ROOT

    split = read_split(REPO_ROOT / "recipes" / "splits" / "arena_bench_v1_dev.json")
    assert len(split["train"]) >= 90 and len(split["heldout"]) >= 50


def test_committed_split_matches_the_pool(shared_data):
    from conftest import REPO_ROOT

    answers = load_pool([shared_data / "arena_bench_v1" / "grades.jsonl"])
    split = read_split(REPO_ROOT / "recipes" / "splits" / "arena_bench_v1_dev.json")
    assert set(split["train"]) | set(split["heldout"]) == {a.group for a in answers}
    assert split == split_groups([a.group for a in answers], heldout=50, seed=0)
    assert not {a.id for a in select(answers, split["train"])} & {a.id for a in select(answers, split["heldout"])}


def test_teacher_labels_within_question_percentiles():
    rows = [{"id": str(i), "group": "a" if i < 3 else "b", "cosine": c, "f1": 0.0}
            for i, c in enumerate([0.1, 0.5, 0.9, 0.2, 0.3, 0.4])]
    labels = teacher_labels(rows, {"cosine": 1})
    assert labels == pytest.approx([0, 4.5, 9, 0, 4.5, 9])
    ranked = teacher_labels(rows, {"cosine": 1}, normalize="rank")
    assert ranked[2] == pytest.approx(9) and ranked[0] == pytest.approx(0)
    with pytest.raises(ConfigError, match="selfeval"):
        teacher_labels(rows, {"cosine": 1, "selfeval": 1})
    with pytest.raises(ConfigError):
        teacher_labels(rows, {"length": 1})


def test_augmented_rows_penalise_offtopic_and_injections(tmp_path):
    answers = load_pool([write_jsonl(tmp_path / "pool.jsonl", pool_rows())])
    labels = {a.id: 6.0 for a in answers}
    rows = augmented_rows(answers, labels, offtopic_per_group=1, injected_per_group=2, penalty=4.0, seed=0)
    offtopic = [r for r in rows if r["kind"] == "offtopic"]
    injected = [r for r in rows if r["kind"] == "injected"]
    assert len(offtopic) == 4 and len(injected) == 8
    own = {a.group: {x.response for x in answers if x.group == a.group} for a in answers}
    for row in offtopic:
        assert row["label"] == 0.0 and row["response"] not in own[row["group"]]
    for row in injected:
        honest = next(a for a in answers if a.id == row["id"].split("#")[0])
        assert row["response"].startswith(honest.response) and len(row["response"]) > len(honest.response)
        assert row["label"] == pytest.approx(2.0) and row["group"] == honest.group
    assert rows == augmented_rows(answers, labels, offtopic_per_group=1, injected_per_group=2, penalty=4.0, seed=0)


def test_training_injections_differ_from_the_gaming_benchmark():
    from selfj_rlhf.training.pool import TRAINING_INJECTIONS

    from evals.lib.attacks import ATTACKS

    attacks = [attack("HONEST") for attack in ATTACKS.values()]
    for injection in TRAINING_INJECTIONS:
        assert all(injection.strip() not in text for text in attacks)


def test_augmented_rows_label_content_free_and_padded_answers_low(tmp_path):
    from selfj_rlhf.training.pool import TRAINING_CONTENT_FREE

    answers = load_pool([write_jsonl(tmp_path / "pool.jsonl", pool_rows())])
    labels = {a.id: 6.0 for a in answers}
    settings = dict(offtopic_per_group=1, injected_per_group=2, penalty=4.0, seed=0)
    before = augmented_rows(answers, labels, **settings)
    rows = augmented_rows(answers, labels, **settings, content_free_per_group=2, padded_per_group=2,
                          padding_penalty=2.5)
    assert [r for r in rows if r["kind"] in ("offtopic", "injected")] == before  # the earlier kinds do not change
    content_free = [r for r in rows if r["kind"] == "content_free"]
    padded = [r for r in rows if r["kind"] == "padded"]
    groups = {a.group for a in answers}
    assert len(content_free) == 2 * len(groups) and len(padded) == 2 * len(groups)
    instruction = {a.group: a.instruction for a in answers}
    wordings = {t.replace("{instruction}", instruction[r["group"]]) for r in content_free for t in TRAINING_CONTENT_FREE}
    for row in content_free:
        assert row["label"] == 0.0 and row["response"] in wordings
    kinds = set()
    for row in padded:
        honest = next(a for a in answers if a.id == row["id"].split("#")[0])
        assert row["response"].startswith(honest.response.rstrip()) and len(row["response"]) > len(honest.response)
        assert row["label"] == pytest.approx(3.5) and row["group"] == honest.group
        kinds.add(row["response"] == "\n\n".join([honest.response.rstrip()] * 2))
    assert kinds == {True, False}  # both repetition and filler
    assert rows == augmented_rows(answers, labels, **settings, content_free_per_group=2, padded_per_group=2,
                                  padding_penalty=2.5)


def test_restated_rows_frame_the_instruction_and_leave_the_other_rows_alone(tmp_path):
    from selfj_rlhf.training.pool import TRAINING_RESTATEMENTS

    answers = load_pool([write_jsonl(tmp_path / "pool.jsonl", pool_rows())])
    labels = {a.id: 6.0 for a in answers}
    settings = dict(offtopic_per_group=1, injected_per_group=2, penalty=4.0, seed=0, content_free_per_group=2,
                    padded_per_group=1)
    before = augmented_rows(answers, labels, **settings)
    rows = augmented_rows(answers, labels, **settings, restated_per_group=2)
    assert [r for r in rows if r["kind"] != "restated"] == before  # cached features of the other rows stay valid
    restated = [r for r in rows if r["kind"] == "restated"]
    instruction = {a.group: a.instruction for a in answers}
    assert len(restated) == 2 * len(instruction)
    for row in restated:
        assert row["label"] == 0.0 and instruction[row["group"]] in row["response"]
        assert row["response"] != instruction[row["group"]]  # framed: the bare echo is the probe's
        assert any(row["response"] == t.replace("{instruction}", instruction[row["group"]]) for t in TRAINING_RESTATEMENTS)
    assert len({r["id"] for r in rows}) == len(rows)


def test_echoed_rows_are_halves_of_the_instruction_and_leave_the_other_rows_alone(tmp_path):
    from selfj_rlhf.training.pool import MIN_ECHOED_WORDS, echoed_parts

    rows = pool_rows()
    for row in rows[:6]:  # two questions long enough to echo by halves, two too short
        row["instruction"] = f"Explain in a few words why question {row['question_id']} has the answer it has."
    answers = load_pool([write_jsonl(tmp_path / "pool.jsonl", rows)])
    labels = {a.id: 6.0 for a in answers}
    settings = dict(offtopic_per_group=1, injected_per_group=2, penalty=4.0, seed=0, content_free_per_group=2,
                    padded_per_group=1, restated_per_group=1)
    before = augmented_rows(answers, labels, **settings)
    rows = augmented_rows(answers, labels, **settings, echoed_per_group=2)
    assert [r for r in rows if r["kind"] != "echoed"] == before  # cached features of the other rows stay valid
    instruction = {a.group: a.instruction for a in answers}
    echoed = [r for r in rows if r["kind"] == "echoed"]
    assert len(echoed) == sum(len(echoed_parts(text)) for text in instruction.values()) == 4
    for row in echoed:
        text = instruction[row["group"]]
        assert row["label"] == 0.0 and row["response"] != text.strip()  # never the bare whole: that is the probe's
        assert row["response"] in " ".join(text.split())
    assert len({r["id"] for r in rows}) == len(rows)
    one = [r for r in augmented_rows(answers, labels, **settings, echoed_per_group=1) if r["kind"] == "echoed"]
    assert [r["response"] for r in one] == [r["response"] for r in echoed if r["id"].endswith("#echoed0")]
    assert echoed_parts("one two three four five six") == ["one two three", "four five six"]
    assert echoed_parts(" ".join(["w"] * (MIN_ECHOED_WORDS - 1))) == []


def test_training_content_free_answers_differ_from_the_probe():
    """The probe measures what the judge learnt from the content-free and padded rows, not what it memorised."""
    from selfj_rlhf.judge.probe import ATTACKS, CONTENT_FREE, FILLER, PADDING
    from selfj_rlhf.training.pool import TRAINING_CONTENT_FREE, TRAINING_FILLER, TRAINING_RESTATEMENTS, echoed_parts

    instruction = "Name three primes below one hundred, please."
    probe = {attack.make("HONEST", instruction, "OTHER").strip() for attack in ATTACKS if attack.kind == CONTENT_FREE}
    training = {t.replace("{instruction}", instruction).strip() for t in TRAINING_CONTENT_FREE + TRAINING_RESTATEMENTS}
    training |= set(echoed_parts(instruction))
    assert not probe & training
    assert all(text for text in training)  # the empty answer is the probe's alone
    assert {a.name for a in ATTACKS if a.kind == PADDING} and TRAINING_FILLER.strip() not in FILLER


def test_pool_labeling_run_reads_no_grade_and_writes_labels(tmp_path, monkeypatch):
    """The whole labelling run (signals, teacher labels, augmentation, labels.jsonl) never reads a grade field."""
    import selfj_rlhf.training.pool as pool_module
    from selfj_rlhf.data.datasets import iter_records
    from selfj_rlhf.training.labeling import LabelConfig

    path = write_jsonl(tmp_path / "pool.jsonl", pool_rows(questions=4, models=3))
    split = {"train": ["q0", "q1", "q2"], "heldout": ["q3"]}
    write_split(tmp_path / "split.json", split)
    real = pool_module.iter_records
    monkeypatch.setattr(pool_module, "iter_records", lambda p: ((n, GradeGuard(r)) for n, r in real(p)))
    cfg = LabelConfig(normalize="within", similarity_weight=1.0, overlap_weight=1.0, selfeval_weight=0.0, seed=0,
                      output_dir=str(tmp_path / "out"), labels_name="labels.jsonl")
    pool = pool_module.PoolLabelConfig(pool=[str(path)], pool_split=str(tmp_path / "split.json"),
                                       chunked_similarity_weight=1.0, pool_offtopic_per_instruction=1,
                                       pool_injected_per_instruction=1)
    summary = pool_module.run_pool_labeling(cfg, pool)
    rows = [row for _, row in iter_records(tmp_path / "out" / "labels.jsonl")]
    assert summary["pool_answers"] == 9 and summary["augmented"] == 6 and len(rows) == 15
    assert {r["group"] for r in rows} == {"q0", "q1", "q2"}  # held-out questions are never labelled
    for row in rows:
        assert not set(GRADE_FIELDS) & set(row)
        assert 0 <= row["score_label"] <= 9 and row["label"] in range(10)
    pool = [r for r in rows if r["kind"] == "pool"]
    best = {g: max((r for r in pool if r["group"] == g), key=lambda r: r["score_label"])["model"] for g in ("q0", "q1", "q2")}
    assert set(best.values()) == {"m0"}  # the answer that states the reference's number ranks first
