"""The pool judge's picks among other models' answers, out of fold: every design of its recipe, on GPT-4 grades.

    python recipes/label.py --config recipes/configs/label_pool_all.yaml
    python recipes/train_judge.py --config recipes/configs/train_judge_pool.yaml   # caches states and relevance
    python -m evals.pool_picks

The designs of the recipe's `cv_grid` (`selfj-smollm2-135m-v9`'s, marked chosen as the recipe chooses it, and v3's
design on the same labels) are
cross-validated as the recipe does (5 folds by question, its seed, the states and relevance from its feature cache),
so each arena-bench answer is scored by a head that never saw its question. Per design, over the 150 questions:
the mean within-question Spearman of those scores with the answers' GPT-4 grades, and the mean grade of the
judge's pick among a question's answers (about 15) against a random answer (the question's mean grade), the
longest and the shortest answer (in tokens), with 95 % bootstrap intervals over questions for pick minus random
and pick minus longest. The grades are read here to measure, never to train; the design was chosen by the
recipe on the teacher's labels alone. With the recipe's `echo_guard`, an answer the guard finds to copy its
question back scores below every other answer of the pool, as the shipped judge floors it.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from evals.lib.common import command_line, default_data, machine_info, write_results
from evals.lib.metrics import bootstrap_ci
from selfj_rlhf.cli.main import SUBCOMMANDS
from selfj_rlhf.data.datasets import iter_records
from selfj_rlhf.judge.echo_guard import EchoGuard
from selfj_rlhf.judge.features import score_position_features
from selfj_rlhf.judge.relevance import cached_relevance
from selfj_rlhf.judge.self_judge import SelfJudge
from selfj_rlhf.training.head_selection import HONEST, cross_validate, select_design
from selfj_rlhf.training.scalar_head import ScalarHeadConfig
from selfj_rlhf.training.train_judge import head_designs, load_scalar_rows


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="recipes/configs/train_judge_pool.yaml")
    parser.add_argument("--pool", default=default_data("arena_bench_v1"), help="The pool file, for the grades.")
    parser.add_argument("--bootstrap", type=int, default=10_000)
    parser.add_argument("--name", default="pool_picks")
    return parser


def pick_table(scores: np.ndarray, rows: list[dict], grades: dict, tokens: np.ndarray, draws: int) -> dict:
    """The within-question Spearman with the grade and the grade of the pick against random, longest, shortest."""
    from scipy.stats import spearmanr

    by_question: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        if row["kind"] == HONEST:
            by_question.setdefault(row["group"], []).append(index)
    spearman, pick, random_mean, longest, shortest = [], [], [], [], []
    for indices in by_question.values():
        graded = np.array([grades[(rows[i]["group"], rows[i]["model"])] for i in indices])
        values = scores[indices]
        if len(set(graded)) > 1 and len(set(values)) > 1:
            spearman.append(float(spearmanr(values, graded).statistic))
        pick.append(graded[int(np.argmax(values))])
        random_mean.append(graded.mean())
        longest.append(graded[int(np.argmax(tokens[indices]))])
        shortest.append(graded[int(np.argmin(tokens[indices]))])
    pick, random_mean, longest = np.array(pick), np.array(random_mean), np.array(longest)
    return {"questions": len(by_question), "spearman_with_grade": statistics.fmean(spearman),
            "pick_grade": float(pick.mean()), "random_grade": float(random_mean.mean()),
            "longest_grade": float(longest.mean()), "shortest_grade": float(np.mean(shortest)),
            "pick_minus_random": float((pick - random_mean).mean()),
            "pick_minus_random_ci95": bootstrap_ci(pick - random_mean, draws),
            "pick_minus_longest": float((pick - longest).mean()),
            "pick_minus_longest_ci95": bootstrap_ci(pick - longest, draws)}


def main(argv=None):
    args = make_parser().parse_args(argv)
    # `selfj train-judge`'s parser (the recipe's twin): the same config fields and training seed as the run that
    # trained the judge
    cfg, training_args = SUBCOMMANDS["train-judge"].parser().parse_args_and_config(["--config", args.config])
    seed = training_args.seed
    rows = load_scalar_rows(cfg)
    grades = {(str(r["question_id"]), r["model"]): float(r["score"]) for _, r in iter_records(args.pool)}
    _, grid = head_designs(cfg)
    judge = SelfJudge.from_pretrained(cfg.base_model, template=cfg.template, max_length=cfg.max_length)
    cache = Path(cfg.feature_cache) / cfg.base_model.replace("/", "_")
    instructions, responses = [r["instruction"] for r in rows], [r["response"] for r in rows]
    highest = max(layer for design in grid for layer in design.layers)
    student = score_position_features(judge, instructions, responses, cache=cache,
                                      max_layer=highest if highest < judge.model.config.num_hidden_layers else None)
    relevance = cached_relevance(judge, instructions, responses, cache / "relevance")
    table = cross_validate(grid, rows, student.states, student.response_tokens,
                           ScalarHeadConfig(distill=False, student_weight=cfg.alpha, distill_weight=cfg.beta,
                                            seed=seed), cfg.cv_folds, seed, relevance=relevance)
    chosen, _ = select_design(grid, table, rows, cfg.cv_max_attack_rate)  # as the recipe chooses, from the labels
    guarded = np.zeros(len(rows), dtype=bool)
    if cfg.echo_guard:
        guard = EchoGuard()
        guarded = np.array([guard.echoes(judge.clean(i), judge.clean(r)) for i, r in zip(instructions, responses)])

    def floored(scores: list[float]) -> np.ndarray:
        scores = np.array(scores)
        scores[guarded] = scores.min() - 1.0  # the guard's floor: below every answer the head scored
        return scores

    designs = {name: {"spearman_with_teacher_label": entry["spearman_within_prompt"],
                      **pick_table(floored(entry["out_of_fold_scores"]), rows, grades, student.response_tokens,
                                   args.bootstrap)}
               for name, entry in table.items()}
    payload = {"command": command_line(), "machine": machine_info(), "config": args.config, "labels": cfg.labels,
               "folds": cfg.cv_folds, "chosen": chosen.name, "designs": designs,
               "echo_guard_fired": {"honest_answers": int(sum(g for g, r in zip(guarded, rows) if r["kind"] == HONEST)),
                                    "rows": int(guarded.sum())} if cfg.echo_guard else None}
    write_results(args.name, payload, render(payload))
    print(render(payload))


def render(payload: dict) -> str:
    m = payload["machine"]
    lines = ["# The pool judge's designs on GPT-4 grades, out of fold", "", f"Command: `{payload['command']}`  ",
             f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}", "",
             f"Every design of `{payload['config']}`, {payload['folds']}-fold cross-validated by question on the "
             "teacher's labels; each answer scored by a head that never saw its question. Spearman: mean "
             "within-question Spearman with the GPT-4 grade (1-10). Pick: the mean grade of the highest-scored "
             "answer of each question; random is the question's mean grade. Intervals: 95 % bootstrap over "
             "questions.", "",
             "| design | Spearman with label | Spearman with grade | pick | random | longest | shortest | "
             "pick - random | pick - longest |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, row in payload["designs"].items():
        low, high = row["pick_minus_random_ci95"]
        low_l, high_l = row["pick_minus_longest_ci95"]
        mark = " **(chosen)**" if name == payload["chosen"] else ""
        lines.append(f"| {name}{mark} | {row['spearman_with_teacher_label']:.3f} | {row['spearman_with_grade']:.3f} | "
                     f"{row['pick_grade']:.2f} | {row['random_grade']:.2f} | {row['longest_grade']:.2f} | "
                     f"{row['shortest_grade']:.2f} | {row['pick_minus_random']:+.2f} [{low:+.2f}, {high:+.2f}] | "
                     f"{row['pick_minus_longest']:+.2f} [{low_l:+.2f}, {high_l:+.2f}] |")
    fired = payload.get("echo_guard_fired")
    if fired is not None:
        lines += ["", f"Echo guard (the recipe's `echo_guard`): fired on {fired['honest_answers']} of the graded "
                      f"answers ({fired['rows']} label rows in all, with the label-0 rows that restate the question); "
                      "those score below every other answer."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
