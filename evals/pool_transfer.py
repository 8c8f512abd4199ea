"""The response-pool judge measured honestly, on answers from models it never saw, and refitted for shipping.

    python recipes/label.py --config recipes/configs/label_pool_all.yaml        # teacher labels, all 150 questions
    python -m evals.pool_transfer --save_judge selfj_rlhf/judge/shipped/selfj-smollm2-135m-v3

The pool is the arena-bench v1 development half: 15 models' answers to 150 questions, labelled by the SELF-J
teacher from the GPT-4 reference alone (never a grade). Every design is a head on layer 18 of the frozen
embedded model, read from cached score-position states (one truncated forward per text, run once).

* **Question cross-validation**: 5 folds by question over all 150; each fold's answers are scored by a head
  trained on the other folds. Pearson with the GPT-4 grade, partial correlation given log length and mean
  within-question Spearman, as mean and sd over the folds.
* **Leave models out**: the 15 models in 3 groups of 5 (seeded, several rotations) crossed with 2 question
  halves. A head trained on two groups' answers to one half is tested on the other half's answers of a group it
  saw (within models) and of the group it never saw (left out). Same number of answers per question on both sides,
  so the within-question Spearmans are comparable; the goal is left-out >= 90 % of within.
* **Pool picks and abstention** with the out-of-fold scores of the shipped design: the mean GPT-4 grade of the
  judge's pick among a question's 15 answers (n = 15) and among random 4 (n = 4), against random, longest,
  shortest (in tokens) and the oracle; AURC of answering only above a score (risk: grade <= 5) against length.
* ``--save_judge``: the chosen design refitted on all 150 questions, with its length control and score map.

The GPT-4 grades are read here to measure, never to label or train.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np

from evals.lib.common import command_line, default_data, machine_info, write_results
from evals.lib.heads import fit, question_folds, save_head_judge
from selfj_rlhf.judge.directory import OTHER_MODELS
from evals.lib.metrics import bootstrap_ci

# name -> ScalarHeadConfig fields, plus augment (the off-topic / injected rows of the labels)
DESIGNS = {
    "pairwise": dict(loss="pairwise"),
    "pairwise, length-matched pairs (1.5x)": dict(loss="pairwise", max_length_ratio=1.5),
    "pairwise, weight decay 1": dict(loss="pairwise", weight_decay=1.0),
    "pairwise, weight decay 10": dict(loss="pairwise", weight_decay=10.0),
    "pairwise, no off-topic/injected rows": dict(loss="pairwise", augment=False),
    "mse": dict(loss="expected_mse"),
    "mse+pairwise": dict(loss="mse+pairwise"),
}


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", default="runs/labels_pool_all/labels_pool.jsonl",
                        help="Pool labels of all questions (recipes/configs/label_pool_all.yaml).")
    parser.add_argument("--pool", default=default_data("arena_bench_v1"), help="The pool file, for the grades.")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--layer", type=int, default=18, help="Decoder layer the heads read.")
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--cache_dir", default="runs/features")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rotations", type=int, default=2, help="Seeded 3-way model groupings (x3 held-out groups).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--previous_judge", default="selfj_rlhf/judge/shipped/selfj-smollm2-135m-v2",
                        help="A scalar-head judge on the same layer, measured on its own held-out questions.")
    parser.add_argument("--split", default="recipes/splits/arena_bench_v1_dev.json")
    parser.add_argument("--save_judge", default=None, help="Refit the chosen design on every question and save it.")
    parser.add_argument("--name", default="pool_transfer")
    return parser


# ---------------------------------------------------------------------------------------------- data
def load(args):
    """(rows of the labels with the GPT-4 grade on pool answers, layer-18 states, response tokens)."""
    from selfj_rlhf import SelfJudge
    from selfj_rlhf.judge.features import score_position_features
    from selfj_rlhf.data.datasets import iter_records

    grades = {row["id"]: float(row["score"]) for _, row in iter_records(args.pool)}
    rows = [row for _, row in iter_records(args.labels)]
    for row in rows:
        if row["kind"] == "pool":
            row["grade"] = grades[row["id"]]
    judge = SelfJudge.from_pretrained(args.model, max_length=args.max_length)
    feats = score_position_features(judge, [r["instruction"] for r in rows], [r["response"] for r in rows],
                                    cache=Path(args.cache_dir) / f"{args.model.replace('/', '_')}-upto-L{args.layer}",
                                    max_layer=args.layer)
    return rows, feats.states[:, args.layer, :].astype(np.float32), feats.response_tokens


def metrics(scores, rows, tokens, index) -> dict:
    from scipy.stats import pearsonr

    from evals.lib.metrics import partial_given_length, within_group_spearman

    grades = np.array([rows[i]["grade"] for i in index])
    s = np.asarray(scores)[index]
    within = within_group_spearman(scores, [r.get("grade", 0.0) for r in rows], [r["group"] for r in rows], index)
    return {"pearson": float(pearsonr(s, grades).statistic),
            "partial_given_log_length": partial_given_length(s, grades, tokens[index]),
            "spearman_within_question": within}


def question_cv(design, rows, states, tokens, folds, layer) -> tuple[dict, np.ndarray, np.ndarray]:
    """Per-fold metrics and the out-of-fold raw and length-controlled scores of every row."""
    raw, controlled = np.zeros(len(rows)), np.zeros(len(rows))
    per_fold = []
    groups = np.array([r["group"] for r in rows])
    pool = np.array([r["kind"] == "pool" for r in rows])
    for fold in folds:
        test = np.isin(groups, list(fold))
        head, length_fit = fit(design, rows, states, tokens, ~test, layer)
        raw[test] = head.predict(states[test])
        controlled[test] = length_fit.apply(raw[test], tokens[test])
        per_fold.append(metrics(raw, rows, tokens, np.flatnonzero(test & pool)))
    summary = {k: {"mean": statistics.fmean(f[k] for f in per_fold), "sd": statistics.pstdev(f[k] for f in per_fold)}
               for k in per_fold[0]}
    return summary, raw, controlled


def leave_models_out(design, rows, states, tokens, args) -> dict:
    """Within-models and left-out-models metrics over model groupings x question halves (see the docstring)."""
    models = sorted({r["model"] for r in rows if r["kind"] == "pool"})
    groups = np.array([r["group"] for r in rows])
    answer_model = np.array([r["model"] for r in rows])
    pool = np.array([r["kind"] == "pool" for r in rows])
    results = {"within": [], "left_out": []}
    for rotation in range(args.rotations):
        order = models[:]
        random.Random(args.seed + rotation).shuffle(order)
        thirds = [set(order[k::3]) for k in range(3)]
        halves = question_folds(rows, 2, args.seed + rotation)
        for train_half, test_half in ((halves[0], halves[1]), (halves[1], halves[0])):
            for out in range(3):
                seen = set().union(*(thirds[k] for k in range(3) if k != out))
                train = np.isin(groups, list(train_half)) & np.isin(answer_model, list(seen))
                scores = fit(design, rows, states, tokens, train, args.layer)[0].predict(states)
                test_questions = np.isin(groups, list(test_half)) & pool
                probe_seen = sorted(thirds[(out + 1) % 3])  # a seen group, the same size as the left-out one
                results["within"].append(metrics(scores, rows, tokens, np.flatnonzero(
                    test_questions & np.isin(answer_model, probe_seen))))
                results["left_out"].append(metrics(scores, rows, tokens, np.flatnonzero(
                    test_questions & np.isin(answer_model, sorted(thirds[out])))))
    summary = {side: {k: statistics.fmean(m[k] for m in values) for k in values[0]} for side, values in results.items()}
    summary["splits"] = len(results["within"])
    summary["ratio_spearman_within_question"] = (summary["left_out"]["spearman_within_question"]
                                                 / summary["within"]["spearman_within_question"])
    return summary


# ---------------------------------------------------------------------------------------------- picks
def pool_picks(rows, tokens, scorers: dict, n: int, subsets: int, seed: int) -> dict:
    """Mean GPT-4 grade of each picker's choice among n answers of a question (random subsets when n is below the
    question's answer count), with bootstrap CIs over questions of the differences to random and to longest."""
    rng = random.Random(seed)
    by_group: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r["kind"] == "pool":
            by_group.setdefault(r["group"], []).append(i)
    pickers = {"random (mean over candidates)": None, "longest (tokens)": tokens, "shortest (tokens)": -tokens,
               "oracle (GPT-4 grade)": np.array([r.get("grade", 0.0) for r in rows]), **scorers}
    per_question = {name: [] for name in pickers}
    for members in by_group.values():
        draws = [members] if n >= len(members) else [rng.sample(members, n) for _ in range(subsets)]
        for name, key in pickers.items():
            values = [statistics.fmean(rows[i]["grade"] for i in draw) if key is None
                      else rows[max(draw, key=lambda i: (key[i], -i))]["grade"] for draw in draws]
            per_question[name].append(statistics.fmean(values))
    table = {}
    for name, values in per_question.items():
        values = np.asarray(values)
        row = {"mean_grade": float(values.mean())}
        for base in ("random (mean over candidates)", "longest (tokens)"):
            if name != base:
                diff = values - np.asarray(per_question[base])
                row[f"vs {base.split(' ')[0]}"] = {"diff": float(diff.mean()),
                                                  "ci95": bootstrap_ci(diff, 2000, seed)}
        table[name] = row
    return {"n": n, "questions": len(by_group), "rows": table}


def abstention(rows, tokens, scorers: dict) -> dict:
    from selfj_rlhf.rlhf.selective import aurc, oracle_aurc

    index = [i for i, r in enumerate(rows) if r["kind"] == "pool"]
    losses = [1.0 if rows[i]["grade"] <= 5 else 0.0 for i in index]
    table = {name: aurc([float(s[i]) for i in index], losses) for name, s in scorers.items()}
    table["length (tokens)"] = aurc([float(tokens[i]) for i in index], losses)
    table["oracle"] = oracle_aurc(losses)
    table["random (base risk)"] = statistics.fmean(losses)
    return {"answers": len(index), "risk": "GPT-4 grade <= 5", "aurc": table}


# ---------------------------------------------------------------------------------------------- main
def previous_judge_rows(args, rows, states, tokens) -> dict:
    """The previously shipped head on its own held-out questions (the committed split)."""
    from selfj_rlhf.judge.head import ScalarHead

    directory = Path(args.previous_judge)
    if not (directory / "selfj_config.json").is_file():
        return {}
    config = json.loads((directory / "selfj_config.json").read_text())
    if config["head"].get("layer") != args.layer:
        return {}
    head = ScalarHead.load(directory, config["head"])
    scores = head.predict(states)
    heldout = set(json.loads(Path(args.split).read_text())["heldout"])
    index = np.flatnonzero([r["kind"] == "pool" and r["group"] in heldout for r in rows])
    return {"judge": directory.name, "questions": len(heldout), **metrics(scores, rows, tokens, index)}


def save_judge(args, design_name, rows, states, tokens) -> dict:
    """Refit the design on every question and save a judge directory (head, length control, score map)."""
    design = DESIGNS[design_name]
    everything = np.ones(len(rows), dtype=bool)
    head, length_fit = fit(design, rows, states, tokens, everything, args.layer)
    keep = np.array([r["kind"] == "pool" for r in rows]) | design.get("augment", True)
    provenance = {"labels": "labels_pool.jsonl (recipes/configs/label_pool_all.yaml: all 150 dev questions)",
                  "design": design_name, "head_layer": args.layer, "rows": int(keep.sum()),
                  "questions": len({r["group"] for r in rows}), "selected_by": "evals/results/pool_transfer.md"}
    return save_head_judge(args.save_judge, args.model, args.max_length, head, length_fit, states[keep],
                           np.array([r["score_label"] for r in rows])[keep], provenance, role=OTHER_MODELS,
                           policy=args.model)


def main(argv=None):
    args = make_parser().parse_args(argv)
    start = time.perf_counter()
    rows, states, tokens = load(args)
    folds = question_folds(rows, args.folds, args.seed)
    table, oof = {}, {}
    for name, design in DESIGNS.items():
        print(f"[design] {name}", flush=True)
        cv, raw, controlled = question_cv(design, rows, states, tokens, folds, args.layer)
        table[name] = {"question_cv": cv, "leave_models_out": leave_models_out(design, rows, states, tokens, args)}
        oof[name] = (raw, controlled)
    chosen = max(table, key=lambda k: table[k]["leave_models_out"]["left_out"]["spearman_within_question"])
    raw, controlled = oof[chosen]
    scorers = {"judge (length control off)": raw, "judge (length control on)": controlled}
    payload = {"command": command_line(), "machine": machine_info(), "labels": args.labels, "pool": args.pool,
               "layer": args.layer, "rows": len(rows), "questions": len({r["group"] for r in rows}),
               "answers": sum(r["kind"] == "pool" for r in rows), "designs": table, "chosen_design": chosen,
               "goal_ratio": 0.9, "previous_judge": previous_judge_rows(args, rows, states, tokens),
               "pool_picks": [pool_picks(rows, tokens, scorers, n, 50, args.seed) for n in (15, 4)],
               "abstention": abstention(rows, tokens, scorers)}
    if args.save_judge:
        payload["saved_judge"] = save_judge(args, chosen, rows, states, tokens)
    payload["wall_s"] = round(time.perf_counter() - start, 1)
    write_results(args.name, payload, render(payload))
    print(render(payload))


def _ci(entry: dict) -> str:
    return f"{entry['diff']:+.2f} [{entry['ci95'][0]:+.2f}, {entry['ci95'][1]:+.2f}]"


def render(p: dict) -> str:
    m = p["machine"]
    lines = [f"# The pool judge on unseen questions and unseen models ({p['questions']} questions, {p['answers']} answers)",
             "", f"Command: `{p['command']}`  ", f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}  ",
             f"Heads on layer {p['layer']} of the frozen embedded model, trained on teacher labels (reference "
             "similarity, never a grade); measured against the GPT-4 grades.", "",
             "## Designs: 5-fold question cross-validation and leave-models-out", "",
             "| design | Pearson | partial r given log length | within-question Spearman | within-question Spearman, "
             "seen models | same, left-out models | left-out / seen (goal >= 0.90) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in p["designs"].items():
        cv, lmo = row["question_cv"], row["leave_models_out"]
        mark = " (chosen)" if name == p["chosen_design"] else ""
        lines.append(f"| {name}{mark} | {cv['pearson']['mean']:.3f} ± {cv['pearson']['sd']:.3f} | "
                     f"{cv['partial_given_log_length']['mean']:.3f} ± {cv['partial_given_log_length']['sd']:.3f} | "
                     f"{cv['spearman_within_question']['mean']:.3f} ± {cv['spearman_within_question']['sd']:.3f} | "
                     f"{lmo['within']['spearman_within_question']:.3f} | {lmo['left_out']['spearman_within_question']:.3f} | "
                     f"{lmo['ratio_spearman_within_question']:.2f} |")
    splits = next(iter(p["designs"].values()))["leave_models_out"]["splits"]
    lines += ["", f"Cross-validation: mean ± sd over {len(p['designs']) and 5} question folds. Leave-models-out: the "
              f"mean over {splits} splits (model thirds x question halves); each side is scored on 5 models' answers "
              "to questions the head never saw. The chosen design has the best left-out within-question Spearman."]
    if p.get("previous_judge"):
        prev = p["previous_judge"]
        lines += ["", f"Previously shipped head ({prev['judge']}) on its own {prev['questions']} held-out questions: "
                  f"Pearson {prev['pearson']:.3f}, partial r {prev['partial_given_log_length']:.3f}, within-question "
                  f"Spearman {prev['spearman_within_question']:.3f}."]
    for picks in p["pool_picks"]:
        lines += ["", f"## Pool picks, n = {picks['n']} ({picks['questions']} questions, out-of-fold scores of the "
                  "chosen design)", "", "| pick | mean GPT-4 grade (1-10) | vs random [95 % CI] | vs longest [95 % CI] |",
                  "|---|---:|---:|---:|"]
        for name, row in picks["rows"].items():
            lines.append(f"| {name} | {row['mean_grade']:.2f} | {_ci(row['vs random']) if 'vs random' in row else '-'} | "
                         f"{_ci(row['vs longest']) if 'vs longest' in row else '-'} |")
    ab = p["abstention"]
    lines += ["", f"## Abstention: AURC on {ab['answers']} answers (risk: {ab['risk']}; lower is better)", "",
              "| confidence | AURC |", "|---|---:|", *[f"| {k} | {v:.3f} |" for k, v in ab["aurc"].items()]]
    if p.get("saved_judge"):
        s = p["saved_judge"]
        lines += ["", f"Shipped: `{s['design']}` refitted on all {s['questions']} questions ({s['rows']} rows), "
                  f"score map {s['score_map']}, length control {s['length_control']}."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
