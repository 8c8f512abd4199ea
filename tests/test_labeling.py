import json

import pytest

from selfj_rlhf.core.errors import ConfigError, RecordError
from selfj_rlhf.training.labeling import LabelConfig, combine_labels, finalize_labels, run_labeling, to_class


@pytest.fixture
def label_data(tmp_path):
    rows = [{"id": f"q{i}", "instruction": f"Explain fact number {i}.", "category": cat,
             "reference": f"Fact {i} is a well known statement about the world, number {i}."}
            for i, cat in enumerate(["common", "coding", "academic", "common", "coding"])]
    rows.append({"id": "short", "instruction": "Pick A or B.", "reference": "B", "category": "common"})
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_label_run_and_resume(tiny_model_dir, label_data, tmp_path):
    def cfg(out, **kw):
        return LabelConfig(policy=str(tiny_model_dir), data=[str(label_data)], k=3, max_new_tokens=6,
                           output_dir=str(out), **kw)

    fresh = run_labeling(cfg(tmp_path / "fresh"))
    assert fresh["instructions"] == 5 and fresh["responses"] == 15  # the 1-char reference was dropped
    rows = read_jsonl(tmp_path / "fresh" / "labels.jsonl")
    for row in rows:
        assert 0 <= row["selfeval"] <= 9 and -1 <= row["similarity"] <= 1 and row["label"] in range(10)
        assert {"label_selfeval", "label_similarity", "label_overlap", "combined", "selfeval_probs"} <= set(row)
    partial = run_labeling(cfg(tmp_path / "resumed", max_instructions=2))
    assert partial["instructions"] == 2
    with open(tmp_path / "resumed" / "shards" / "part-000.jsonl", "ab") as fh:
        fh.write(b'{"id": "q2", "instr')  # killed mid-row
    resumed = run_labeling(cfg(tmp_path / "resumed"))
    assert resumed["resumed_instructions"] == 2
    assert read_jsonl(tmp_path / "resumed" / "labels.jsonl") == rows


def test_relabel_changes_only_labels(tiny_model_dir, label_data, tmp_path):
    base = LabelConfig(policy=str(tiny_model_dir), data=[str(label_data)], k=3, max_new_tokens=6,
                       output_dir=str(tmp_path / "run"))
    run_labeling(base)
    before = read_jsonl(tmp_path / "run" / "labels.jsonl")
    within = LabelConfig(**{**base.__dict__, "normalize": "within", "combine": "similarity"})
    finalize_labels(within, sorted({r["group"] for r in before}, key=[r["group"] for r in before].index))
    after = read_jsonl(tmp_path / "run" / "labels.jsonl")
    assert [r["response"] for r in after] == [r["response"] for r in before]
    for group in {r["group"] for r in after}:  # within-instruction ranks of k=3 -> classes {0, 5, 9}
        labels = sorted(r["label"] for r in after if r["group"] == group)
        assert labels[0] == 0 and labels[-1] == 9 or len(set(labels)) == 1


def test_reference_as_response(tiny_model_dir, label_data, tmp_path):
    cfg = LabelConfig(policy=str(tiny_model_dir), data=[str(label_data)], k=3, max_new_tokens=6, normalize="within",
                      selfeval_weight=0.0, similarity_weight=0.5, overlap_weight=0.5, reference_as_response=True,
                      output_dir=str(tmp_path / "run"))
    summary = run_labeling(cfg)
    assert summary["responses"] == 5 * 4
    rows = read_jsonl(tmp_path / "run" / "labels.jsonl")
    refs = [r for r in rows if r.get("is_reference")]
    assert len(refs) == 5 and all(r["selfeval"] is None for r in refs)
    assert all(r["label"] == 9 for r in refs)  # the reference itself ranks first among its instruction's answers
    with pytest.raises(ConfigError, match="selfeval_weight 0"):
        LabelConfig(reference_as_response=True)


def test_offtopic_partners_are_a_derangement_within_category():
    from selfj_rlhf.training.labeling import offtopic_partners

    rows = [{"id": f"{cat}{i}", "category": cat} for cat in ("a", "b") for i in range(5)] + [
        {"id": "lonely", "category": "c"}, {"id": "alone", "category": "d"}]
    partners = offtopic_partners(rows, seed=3)
    assert set(partners) == {r["id"] for r in rows}
    for row in rows:
        partner = partners[row["id"]]
        assert partner["id"] != row["id"]
        if row["category"] in ("a", "b"):
            assert partner["category"] == row["category"]
    # every reference is borrowed exactly once, and the pairing is reproducible
    assert sorted(p["id"] for p in partners.values()) == sorted(r["id"] for r in rows)
    assert {k: v["id"] for k, v in offtopic_partners(rows, seed=3).items()} == {k: v["id"] for k, v in partners.items()}


def test_offtopic_as_response(tiny_model_dir, label_data, tmp_path):
    cfg = LabelConfig(policy=str(tiny_model_dir), data=[str(label_data)], k=3, max_new_tokens=6, normalize="within",
                      selfeval_weight=0.0, similarity_weight=1.0, reference_as_response=True,
                      offtopic_as_response=True, output_dir=str(tmp_path / "run"))
    summary = run_labeling(cfg)
    assert summary["responses"] == 5 * 6
    rows = read_jsonl(tmp_path / "run" / "labels.jsonl")
    offtopic = [r for r in rows if r.get("is_offtopic")]
    references = {r["group"]: r["reference"] for r in rows}
    samples = {r["group"]: r["response"] for r in rows if r["id"].endswith("#0")}
    assert len(offtopic) == 10 and all(r["relevance"] == 0.0 for r in offtopic)
    assert all(r["relevance"] == 1.0 for r in rows if not r.get("is_offtopic"))
    for row in offtopic:  # another instruction's reference (cut to 6 tokens) or first sample
        if row["id"].endswith("#offtopic"):
            others = set(references.values()) - {row["reference"]}
            assert any(other.startswith(row["response"]) for other in others)
            assert not row["reference"].startswith(row["response"])
        else:
            assert row["id"].endswith("#offtopic-sample")
            assert row["response"] in {text for group, text in samples.items() if group != row["group"]}
    relevance = LabelConfig(**{**cfg.__dict__, "combine": "relevance", "normalize": "none"})
    finalize_labels(relevance, sorted(references))
    labelled = read_jsonl(tmp_path / "run" / "labels.jsonl")
    assert {r["label"] for r in labelled if r.get("is_offtopic")} == {0}
    assert {r["label"] for r in labelled if not r.get("is_offtopic")} == {9}
    with pytest.raises(ConfigError, match="selfeval_weight 0"):
        LabelConfig(offtopic_as_response=True)
    with pytest.raises(ConfigError, match="needs offtopic_as_response"):
        LabelConfig(combine="relevance")


def test_token_f1():
    from selfj_rlhf.training.labeling import token_f1

    assert token_f1("The cat sat.", "the cat sat") == 1.0
    assert token_f1("dog", "the cat") == 0.0
    assert token_f1("the cat", "the cat sat on the mat") == pytest.approx(2 * 1 * (2 / 6) / (1 + 2 / 6))


def test_combination_rules():
    rows = [{"group": "a", "selfeval": 3.0, "similarity": 0.9, "response": "x y", "reference": "x y"},
            {"group": "a", "selfeval": 4.0, "similarity": 0.1, "response": "z", "reference": "x y"},
            {"group": "b", "selfeval": 2.0, "similarity": 0.5, "response": "x", "reference": "x y"}]
    out = combine_labels([dict(r) for r in rows], LabelConfig(normalize="rank", combine="mean"))
    assert [r["selfeval_norm"] for r in out] == [0.5, 1.0, 0.0]
    assert [r["similarity_norm"] for r in out] == [1.0, 0.0, 0.5]
    assert [r["combined"] for r in out] == [0.75, 0.5, 0.25]
    assert [r["label"] for r in out] == [7, 5, 2]
    out = combine_labels([dict(r) for r in rows], LabelConfig(normalize="none", combine="selfeval"))
    assert [r["label"] for r in out] == [to_class(3 / 9), to_class(4 / 9), to_class(2 / 9)]
    out = combine_labels([dict(r) for r in rows], LabelConfig(normalize="within", combine="overlap"))
    assert [r["overlap"] for r in out] == [1.0, 0.0, pytest.approx(2 / 3)]
    assert [r["label"] for r in out] == [9, 0, 5]  # a single-response group sits at the middle
    assert [r["label_similarity"] for r in out] == [9, 0, 5]
    assert to_class(1.0) == 9 and to_class(0.0) == 0


@pytest.mark.parametrize("kw,match", [({"combine": "max"}, "combine"), ({"normalize": "z"}, "normalize"),
                                      ({"k": 0}, "k must"), ({"normalize": "within", "k": 1}, "within needs")])
def test_config_validation(kw, match):
    with pytest.raises(ConfigError, match=match):
        LabelConfig(**kw)


def test_bad_reference_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "reference": "long enough reference text"}\n{"instruction": "b"}\n')
    from selfj_rlhf.training.labeling import load_label_sources

    with pytest.raises(RecordError, match=r"d.jsonl:2: field 'reference': missing"):
        load_label_sources(LabelConfig(data=[str(path)]))
