"""Selective instruction following on arena-bench: can the judge tell which answers to withhold?

    python -m evals.selective --judge selfj=selfj-smollm2-135m-pool --judge zero-shot=smollm2-135m-instruct \
        --max_questions 30 --grade_cut 6

Ground truth: GPT-4's 1-10 grade (with reference) of each answer; an answer is a failure (loss 1) when its
grade is below ``--grade_cut`` (default 6: grades 1-5; 45 % of all rows). Each scorer ranks the answers;
the table reports the risk-coverage metrics on all rows, then the threshold chosen on a calibration half
(split by question, so no question is in both) for a target coverage and a target risk, applied to the
test half. Baselines: response length (longer = more confident), random (a constant score: every
coverage has the base risk), and the oracle (the GPT-4 grade itself). Judge scores are reference-free
and cached (shared with evals/model_ranking.py).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from evals.lib.common import RESULTS_DIR, command_line, machine_info, default_data, write_results
from evals.lib.score_cache import ScoreCache, judge_scores, load_arena
from selfj_rlhf.judge.directory import OTHER_MODELS, warn_if_outside_role


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arena", default=default_data("arena_bench_v1"))
    parser.add_argument("--judge", action="append", default=[], help="NAME=SPEC")
    parser.add_argument("--max_questions", type=int, default=30)
    parser.add_argument("--grade_cut", type=int, default=6, help="Grades below this are failures.")
    parser.add_argument("--target_coverage", type=float, default=0.8)
    parser.add_argument("--target_risk", type=float, default=0.35)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", default="runs/eval_cache")
    parser.add_argument("--name", default="selective")
    return parser


def arena_scores(args) -> tuple[list[dict], dict[str, list[float]]]:
    """The subsampled arena rows and every scorer's scores (judges cached)."""
    rows = load_arena(args.arena, args.max_questions, args.seed)
    cache = ScoreCache(args.cache_dir, f"arena-q{args.max_questions}-s{args.seed}-L{args.max_length}")
    items = [(r["instruction"], r["response"], None) for r in rows]
    scorers = {}
    for name, spec in (item.split("=", 1) for item in args.judge):
        scorers[f"judge: {name}"] = cache.get(f"free-{spec.replace('/', '_')}", lambda: judge_scores(spec, items, args))
    scorers["length (characters)"] = [float(len(r["response"])) for r in rows]
    scorers["random (constant score)"] = [0.0] * len(rows)
    scorers["oracle (GPT-4 grade)"] = [float(r["score"]) for r in rows]
    return rows, scorers


def split_by_question(rows: list[dict], seed: int) -> tuple[list[int], list[int]]:
    questions = sorted({r["question_id"] for r in rows})
    random.Random(seed).shuffle(questions)
    calibration = set(questions[: len(questions) // 2])
    cal = [i for i, r in enumerate(rows) if r["question_id"] in calibration]
    test = [i for i, r in enumerate(rows) if r["question_id"] not in calibration]
    return cal, test


def main(argv=None):
    args = make_parser().parse_args(argv)
    for item in args.judge:  # the arena answers are other models'
        warn_if_outside_role(item.split("=", 1)[1], OTHER_MODELS, where="selective prediction on other models' answers")
    from selfj_rlhf.rlhf.selective import apply_threshold, choose_threshold, selective_report

    rows, scorers = arena_scores(args)
    losses = [float(r["score"] < args.grade_cut) for r in rows]
    cal, test = split_by_question(rows, args.seed)
    table = {}
    for name, scores in scorers.items():
        pick = lambda idx, values: [values[i] for i in idx]  # noqa: E731
        entry = selective_report(scores, losses, coverages=(0.5, 0.8), target_risks=(args.target_risk,))
        for kind, target in (("coverage", {"target_coverage": args.target_coverage}),
                             ("risk", {"target_risk": args.target_risk})):
            chosen = choose_threshold(pick(cal, scores), pick(cal, losses), **target)
            on_test = apply_threshold(pick(test, scores), pick(test, losses), chosen.threshold)
            entry[f"target_{kind}"] = {"threshold": chosen.threshold, "calibration_coverage": chosen.coverage,
                                       "calibration_risk": chosen.risk, "test_coverage": on_test["coverage"],
                                       "test_risk": on_test["risk"]}
        table[name] = entry
    payload = {"command": command_line(), "machine": machine_info(), "arena": args.arena, "rows": len(rows),
               "questions": len({r["question_id"] for r in rows}), "grade_cut": args.grade_cut,
               "calibration_rows": len(cal), "test_rows": len(test), "target_coverage": args.target_coverage,
               "target_risk": args.target_risk, "max_length": args.max_length, "table": table}
    plot(scorers, losses, rows, args, RESULTS_DIR / f"{args.name}.png")
    m = payload["machine"]
    lines = [f"# Selective instruction following on arena-bench ({len(rows)} answers, "
             f"{payload['questions']} questions)", "", f"Command: `{payload['command']}`  ",
             f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}  ",
             f"Failure = GPT-4 grade < {args.grade_cut} (base risk {table['oracle (GPT-4 grade)']['base_risk']:.3f}). "
             "AURC: lower is better; E-AURC = AURC - oracle AURC. Thresholds chosen on the calibration half "
             f"({len(cal)} rows), applied to the test half ({len(test)} rows, other questions).", "",
             f"| scorer | AURC | E-AURC | risk@50% | risk@80% | coverage@risk {args.target_risk:g} | "
             f"test cov / risk (target cov {args.target_coverage:g}) | test cov / risk (target risk {args.target_risk:g}) |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for name, e in table.items():
        c, r = e["target_coverage"], e["target_risk"]
        lines.append(f"| {name} | {e['aurc']:.3f} | {e['excess_aurc']:.3f} | {e['risk@0.5']:.3f} | {e['risk@0.8']:.3f} | "
                     f"{e[f'coverage@risk{args.target_risk:g}']:.3f} | {c['test_coverage']:.2f} / {c['test_risk']:.3f} | "
                     f"{r['test_coverage']:.2f} / {r['test_risk']:.3f} |")
    lines += ["", f"Plot: `{args.name}.png` (risk-coverage curves; judge score histograms by outcome).", ""]
    markdown = "\n".join(lines)
    write_results(args.name, payload, markdown)
    print(markdown)


def plot(scorers: dict, losses: list[float], rows: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from selfj_rlhf.rlhf.selective import risk_coverage_curve

    judges = [n for n in scorers if n.startswith("judge: ")]
    fig, axes = plt.subplots(1, 1 + len(judges), figsize=(5 * (1 + len(judges)), 4))
    axes = list(axes) if len(judges) else [axes]
    for name, scores in scorers.items():
        coverage, risk = risk_coverage_curve(scores, losses)
        axes[0].plot(coverage, risk, label=name)
    axes[0].set_xlabel("coverage")
    axes[0].set_ylabel(f"risk (share of answers graded < {args.grade_cut})")
    axes[0].set_title("risk-coverage")
    axes[0].legend(fontsize=7)
    for ax, name in zip(axes[1:], judges):
        scores = scorers[name]
        ax.hist([s for s, l in zip(scores, losses) if l == 0], bins=20, alpha=0.6, label=f"grade >= {args.grade_cut}")
        ax.hist([s for s, l in zip(scores, losses) if l == 1], bins=20, alpha=0.6, label=f"grade < {args.grade_cut}")
        ax.set_xlabel("judge score (0-9)")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
