"""A judge for the policy's own samples: heads trained on the SELF-J teacher's labels of what the policy writes.

    python -m evals.rl_loop_check prompts --train_per_source 48 --heldout_per_source 0 \
        --exclude runs/improvement/prompts_train.jsonl runs/improvement/prompts_heldout.jsonl \
        --output_dir runs/improvement/more
    for prompts in runs/improvement/prompts_train.jsonl runs/improvement/more/prompts_train.jsonl; do
      python -m evals.improvement sample --prompts $prompts --n 8 --seed 7 --output_dir runs/improvement/samples_train
    done
    python -m evals.improvement pool --samples runs/improvement/samples_train --output runs/improvement/pool_train.jsonl
    python recipes/label.py --config recipes/configs/label_own_samples.yaml
    python -m evals.own_samples --name own_samples_v5 --save_judge selfj_rlhf/judge/shipped/selfj-smollm2-135m-v5

Best-of-n, rejection sampling and DPO rank the policy's own samples, a source that a judge trained on other
models' answers (the arena pool) does not transfer to (evals/results/improvement_best_of_n.md). SELF-J's own
recipe trains on the policy's samples, labelled by a teacher that sees the reference. Here the teacher is the
pool teacher (MiniLM cosine, chunked cosine and token F1 to the reference, ranked within the prompt), the samples
are 8 per *training* prompt (240 FLASK, GPTeacher codegen and GSM8K prompts: the 96 that trained ``-v4`` and 144
drawn later; all disjoint from the held-out prompts of evals/improvement.py), and every design is a head on the
frozen embedded model: on layer 18, or the mean of one head per layer over layers 9, 12, 15 and 18 (a layer
ensemble, saved as one linear map over their states).

* **Prompt cross-validation** (5 folds by prompt over the training prompts): mean within-prompt Spearman of the
  out-of-fold score with the teacher label, and the best-of-8 pick against random on cosine and F1 to the
  reference, with 95 % bootstrap intervals over prompts. The chosen design has the highest within-prompt
  Spearman among the designs trained with the off-topic and injected rows: a judge that RL optimises against must
  not reward an answer to another question or a note to the grader (evals/results/judge_gaming.md). The held-out
  prompts play no part in the choice.
* **Arena transfer**: each design trained on all training prompts, on the 150 arena-bench dev questions it never
  saw (for the design that mixes in the arena pool, 5 folds by question): within-question Spearman with the
  GPT-4 grade and the mean grade of its pick among 15 answers. Grades are read to measure, never to train.
* ``--save_judge``: the chosen design refitted on every training prompt, with its length control and score map.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from evals.lib.common import command_line, default_data, judges_measured, machine_info, write_results
from evals.lib.heads import fit, question_folds, save_head_judge
from evals.lib.metrics import bootstrap_ci, within_group_spearman
from selfj_rlhf.judge.directory import OWN_SAMPLES
from selfj_rlhf import SelfJudge
from selfj_rlhf.data.datasets import iter_records
from selfj_rlhf.judge.head import ScalarHead
from selfj_rlhf.judge.features import score_position_features

DESIGNS = {
    "own samples, weight decay 0.3": dict(loss="pairwise", weight_decay=0.3),
    "own samples, weight decay 0.3, layers 9-18 ensemble": dict(loss="pairwise", weight_decay=0.3,
                                                                layers=(9, 12, 15, 18)),
    "own samples, weight decay 1": dict(loss="pairwise", weight_decay=1.0),
    "own samples, weight decay 3": dict(loss="pairwise", weight_decay=3.0),
    "own samples, weight decay 10": dict(loss="pairwise", weight_decay=10.0),
    "own samples, weight decay 1, no off-topic/injected rows": dict(loss="pairwise", weight_decay=1.0, augment=False),
    "own samples x4 + arena pool, weight decay 1": dict(loss="pairwise", weight_decay=1.0, arena_copies=4),
    "own samples x16 + arena pool, weight decay 1": dict(loss="pairwise", weight_decay=1.0, arena_copies=16),
    "own samples x16 + arena pool, weight decay 1, no off-topic/injected rows": dict(
        loss="pairwise", weight_decay=1.0, arena_copies=16, augment=False),
}


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", default="runs/labels_own_samples/labels_own_samples.jsonl",
                        help="Teacher labels of the policy's samples (recipes/configs/label_own_samples.yaml).")
    parser.add_argument("--arena_labels", default="runs/labels_pool_all/labels_pool.jsonl",
                        help="Teacher labels of the arena pool (recipes/configs/label_pool_all.yaml).")
    parser.add_argument("--arena", default=default_data("arena_bench_v1"), help="The arena pool, for its grades.")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--layer", type=int, default=18,
                        help="The layer a design reads unless it names its layers; features are cached up to it.")
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--cache_dir", default="runs/features")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save_judge", default=None, help="Refit the chosen design on every prompt and save it.")
    parser.add_argument("--name", default="own_samples")
    return parser


def load(args, judge, path: str, grades: dict | None = None):
    """(label rows, states of layers 0..``--layer`` [N, layers, hidden], response tokens) of one labels file; pool
    rows get their grade when given."""
    rows = [row for _, row in iter_records(path)]
    if grades is not None:
        for row in rows:
            if row["kind"] == "pool":
                row["grade"] = grades[row["id"]]
    feats = score_position_features(judge, [r["instruction"] for r in rows], [r["response"] for r in rows],
                                    cache=f"{args.cache_dir}/{args.model.replace('/', '_')}-upto-L{args.layer}",
                                    max_layer=args.layer)
    return rows, feats.states, feats.response_tokens


def fit_design(design: dict, own, arena, train: np.ndarray, layer: int):
    """(head, length fit) of a design on the own-sample rows ``train`` (and every arena row, repeated own rows
    outweighing them, when the design mixes the arena pool in): one head per layer it reads, averaged."""
    spec = dict(design)
    copies = spec.pop("arena_copies", 0)
    layers = spec.pop("layers", (layer,))
    rows, states, tokens = own
    if copies:
        arena_rows, arena_states, arena_tokens = arena
        index = np.flatnonzero(train)
        rows = [{**rows[i], "group": f"{rows[i]['group']}@{c}"} for c in range(copies) for i in index] + arena_rows
        tokens = np.concatenate([tokens[index]] * copies + [arena_tokens])
        train = np.ones(len(rows), dtype=bool)
    fits = []
    for each in layers:
        layer_states = (np.concatenate([states[index, each]] * copies + [arena_states[:, each]]) if copies
                        else states[:, each])
        fits.append(fit(spec, rows, layer_states.astype(np.float32), tokens, train, each))
    return ScalarHead.average([head for head, _ in fits]), fits[0][1]


def pick_gains(rows, scores, index) -> dict:
    """The best-of-n pick (all of a prompt's samples) against the mean over them, on cosine and F1."""
    by_prompt: dict[str, list[int]] = {}
    for i in index:
        by_prompt.setdefault(rows[i]["group"], []).append(i)
    out = {}
    for signal in ("cosine", "f1"):
        diff = np.array([rows[max(m, key=lambda i: (scores[i], -i))][signal] - statistics.fmean(rows[i][signal] for i in m)
                         for m in by_prompt.values()])
        out[signal] = {"diff": float(diff.mean()), "ci95": bootstrap_ci(diff, 2000)}
    out["n"] = len(next(iter(by_prompt.values())))
    return out


def prompt_cv(design, own, arena, args) -> dict:
    rows, states, tokens = own
    groups = np.array([r["group"] for r in rows])
    pool = np.array([r["kind"] == "pool" for r in rows])
    scores = np.zeros(len(rows))
    for fold in question_folds(rows, args.folds, args.seed):
        test = np.isin(groups, list(fold))
        head = fit_design(design, own, arena, ~test, args.layer)[0]
        scores[test] = head.predict(head.inputs(states[test]))
    index = np.flatnonzero(pool)
    return {"spearman_within_prompt": within_group_spearman(scores, [r["score_label"] for r in rows], groups, index),
            "best_of_n_vs_random": pick_gains(rows, scores, index)}


def arena_transfer(design, own, arena, args) -> dict:
    rows, states, tokens = own
    arena_rows, arena_states, _ = arena
    everything = np.ones(len(rows), dtype=bool)
    if design.get("arena_copies"):  # the arena pool trains it: score each question out of fold
        groups = np.array([r["group"] for r in arena_rows])
        scores = np.zeros(len(arena_rows))
        for fold in question_folds(arena_rows, args.folds, args.seed):
            test = np.isin(groups, list(fold))
            keep = np.flatnonzero(~test)
            train_arena = ([arena_rows[i] for i in keep], arena_states[keep], arena[2][keep])
            head = fit_design(design, own, train_arena, everything, args.layer)[0]
            scores[test] = head.predict(head.inputs(arena_states[test]))
    else:
        head = fit_design(design, own, arena, everything, args.layer)[0]
        scores = head.predict(head.inputs(arena_states))
    index = [i for i, r in enumerate(arena_rows) if r["kind"] == "pool"]
    groups = [r["group"] for r in arena_rows]
    by_group: dict[str, list[int]] = {}
    for i in index:
        by_group.setdefault(groups[i], []).append(i)
    pick = [arena_rows[max(m, key=lambda i: (scores[i], -i))]["grade"] for m in by_group.values()]
    mean = [statistics.fmean(arena_rows[i]["grade"] for i in m) for m in by_group.values()]
    grades = [r.get("grade", 0.0) for r in arena_rows]
    return {"spearman_within_question": within_group_spearman(scores, grades, groups, index),
            "pick_of_15_mean_grade": statistics.fmean(pick), "random_mean_grade": statistics.fmean(mean)}


def render(p: dict) -> str:
    m = p["machine"]
    lines = [f"# A judge for the policy's own samples ({p['prompts']} training prompts, {p['answers']} samples)", "",
             f"Command: `{p['command']}`  ", f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}", "",
             "Heads on layer 18 of the frozen embedded model (or one head on each of layers 9, 12, 15 and 18, "
             "averaged: the layer ensemble), trained on the SELF-J teacher's labels of the policy's "
             "own samples (cosine, chunked cosine and F1 to the reference, ranked within the prompt). Prompt CV: 5 "
             "folds by training prompt, out-of-fold scores; best-of-n picks among a prompt's samples against the mean "
             "over them (95 % bootstrap CI over prompts). Arena: trained on every training prompt, measured on the "
             "150 arena-bench dev questions against the GPT-4 grades (read to measure only). Chosen: the highest "
             "within-prompt Spearman among the designs trained with the off-topic and injected rows.", "",
             "| design | within-prompt Spearman (CV) | best-of-n cosine vs random | best-of-n F1 vs random | "
             "arena within-question Spearman | arena pick of 15 (random) |", "|---|---:|---|---|---:|---|"]
    for name, r in p["designs"].items():
        cv, arena = r["prompt_cv"], r["arena"]
        gains = [f"{cv['best_of_n_vs_random'][s]['diff']:+.3f} [{cv['best_of_n_vs_random'][s]['ci95'][0]:+.3f}, "
                 f"{cv['best_of_n_vs_random'][s]['ci95'][1]:+.3f}]" for s in ("cosine", "f1")]
        mark = " **(chosen)**" if name == p["chosen_design"] else ""
        lines.append(f"| {name}{mark} | {cv['spearman_within_prompt']:.3f} | {gains[0]} | {gains[1]} | "
                     f"{arena['spearman_within_question']:.3f} | {arena['pick_of_15_mean_grade']:.2f} "
                     f"({arena['random_mean_grade']:.2f}) |")
    if p.get("saved_judge"):
        lines += ["", f"Saved: `{p['saved_judge']['directory']}`, the chosen design refitted on all "
                      f"{p['prompts']} training prompts."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = make_parser().parse_args(argv)
    start = time.perf_counter()
    grades = {row["id"]: float(row["score"]) for _, row in iter_records(args.arena)}
    judge = SelfJudge.from_pretrained(args.model, max_length=args.max_length)  # its states of both label sets
    own = load(args, judge, args.labels)
    arena = load(args, judge, args.arena_labels, grades)
    table = {}
    for name, design in DESIGNS.items():
        table[name] = {"prompt_cv": prompt_cv(design, own, arena, args), "arena": arena_transfer(design, own, arena, args)}
        print(name, table[name], flush=True)
    robust = [name for name, design in DESIGNS.items() if design.get("augment", True)]
    chosen = max(robust, key=lambda k: table[k]["prompt_cv"]["spearman_within_prompt"])
    rows = own[0]
    payload = {"command": command_line(), "machine": machine_info(), "labels": args.labels, "layer": args.layer,
               "prompts": len({r["group"] for r in rows}), "answers": sum(r["kind"] == "pool" for r in rows),
               "designs": table, "chosen_design": chosen}
    if args.save_judge:
        design = DESIGNS[chosen]
        head, length_fit = fit_design(design, own, arena, np.ones(len(rows), dtype=bool), args.layer)
        keep = np.array([r["kind"] == "pool" for r in rows]) | design.get("augment", True)
        provenance = {"labels": "labels_own_samples.jsonl (recipes/configs/label_own_samples.yaml)",
                      "design": chosen, "head_layers": list(head.layers), "rows": int(keep.sum()),
                      "prompts": payload["prompts"], "selected_by": f"evals/results/{args.name}.md"}
        payload["saved_judge"] = save_head_judge(args.save_judge, args.model, args.max_length, head, length_fit,
                                                 head.inputs(own[1][keep]),
                                                 np.array([r["score_label"] for r in rows])[keep],
                                                 provenance, role=OWN_SAMPLES, policy=args.model)
        payload["judges_measured"] = judges_measured({"saved": args.save_judge})
    payload["wall_s"] = round(time.perf_counter() - start, 1)
    write_results(args.name, payload, render(payload))
    print(render(payload))


if __name__ == "__main__":
    main()
