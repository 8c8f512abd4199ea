"""The pre-registered policy-improvement test's analysis (evals/preregistration/policy_improvement.yaml).

    python -m evals.policy_improvement_report --measures runs/policy_improvement/greedy \
        --grpo_run runs/policy_improvement/grpo

Reads the measures that `python -m evals.policy_improvement evaluate` wrote, one folder per arm
(`<measures>/<arm>/measures.jsonl`: per test prompt the answer's cosine, F1, exact match, tokens, finished), and
computes what the plan fixed:

* the six primary endpoints (best-of-16's judge pick minus random, rejection-sampling arm a minus b, a minus base;
  each on cosine and F1): the mean per-prompt difference, a one-sided Wilcoxon signed-rank test (greater; zero
  differences dropped), Holm's correction over the six at one-sided alpha 0.025, and a paired bootstrap interval
  (10,000 resamples, seed 0) at each endpoint's Holm-adjusted level. Holm needs all six: while an arm is missing
  the endpoints that exist are reported with their uncorrected p-values and the report says the test is incomplete;
* the secondary comparisons with 95 % bootstrap intervals and no test, overall, per source and per reference-length
  stratum; each arm's mean length and share cut at the token cap;
* GRPO's curves: the judge's mean score of the policy's greedy answers to the 16 fixed development prompts and their
  mean length, every 10 steps (the recipe's probe_reward.jsonl), beside the reward of each step's own samples,
  plotted to evals/results/<name>_grpo.png.

The goal (the product's claim) stands when arm a beats both b and base on cosine and on F1 after the correction.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import yaml

from evals.lib.common import RESULTS_DIR, command_line, machine_info, write_results
from evals.policy_improvement import PLAN
from selfj_rlhf.core.errors import ConfigError
from selfj_rlhf.data.datasets import iter_records

METRICS = ("cosine", "f1")
# (name, arm, arm it is compared with): the plan's primary endpoints, on each of METRICS
PRIMARY = (("best-of-16 judge pick minus random", "bon16_judge", "bon16_random"),
           ("rejection sampling a minus b", "rs_a", "rs_b"),
           ("rejection sampling a minus base", "rs_a", "base"))
GOAL = ("rejection sampling a minus b", "rejection sampling a minus base")
SECONDARY = (("rejection sampling a minus c", "rs_a", "rs_c"), ("rejection sampling d minus base", "rs_d", "base"),
             ("rejection sampling b minus base", "rs_b", "base"), ("rejection sampling c minus base", "rs_c", "base"),
             ("rejection sampling a round 2 minus base", "rs_a2", "base"),
             ("rejection sampling a round 2 minus b", "rs_a2", "rs_b"),
             ("DPO minus base", "dpo", "base"), ("DPO minus b", "dpo", "rs_b"),
             ("GRPO minus base", "grpo", "base"), ("GRPO minus b", "grpo", "rs_b"))
RESAMPLES = 10_000


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", default=str(PLAN))
    parser.add_argument("--measures", default="runs/policy_improvement/greedy",
                        help="One folder per arm with its measures.jsonl (evals.policy_improvement evaluate).")
    parser.add_argument("--grpo_run", default="runs/policy_improvement/grpo",
                        help="The GRPO arm's output folder (probe_reward.jsonl, trainer logs); skipped when absent.")
    parser.add_argument("--budget_checks", nargs="*", default=["runs/policy_improvement/budget_check.json",
                                                               "runs/policy_improvement/budget_check_6ep.json"],
                        help="The plan's budget checks (`budget-check --output`), reported in this order; missing "
                             "files are skipped.")
    parser.add_argument("--name", default="policy_improvement",
                        help="The committed record: evals/results/<name>.json and .md (empty: print only).")
    return parser


def load_arms(root: Path) -> dict[str, dict[str, dict]]:
    """``{arm: {prompt id: measures}}`` for every ``<root>/<arm>/measures.jsonl``."""
    return {path.parent.name: {row["id"]: row for _, row in iter_records(path)}
            for path in sorted(root.glob("*/measures.jsonl"))}


def paired(arms: dict, arm: str, other: str, metric: str, keep=lambda row: True) -> np.ndarray:
    """Per-prompt differences ``arm - other`` on ``metric`` over the prompts both measured (and ``keep`` admits)."""
    if set(arms[arm]) != set(arms[other]):
        raise ConfigError(f"arms {arm} and {other} measured different prompts")
    return np.array([arms[arm][i][metric] - arms[other][i][metric] for i in sorted(arms[arm])
                     if keep(arms[arm][i])], dtype=float)


def bootstrap_interval(diff: np.ndarray, one_sided_alpha: float, seed: int = 0) -> list[float]:
    """The paired bootstrap's central interval of the mean difference, ``one_sided_alpha`` in each tail."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (RESAMPLES, len(diff)))].mean(1)
    return [float(np.quantile(means, one_sided_alpha)), float(np.quantile(means, 1 - one_sided_alpha))]


def holm(p_values: list[float], alpha: float) -> list[tuple[bool, float]]:
    """Holm's step-down: per p-value (in the given order), whether it is rejected and the level it was tested at."""
    order = sorted(range(len(p_values)), key=lambda k: p_values[k])
    out: list[tuple[bool, float]] = [(False, alpha)] * len(p_values)
    still = True
    for rank, k in enumerate(order):
        level = alpha / (len(p_values) - rank)
        still = still and p_values[k] <= level
        out[k] = (still, level)
    return out


def primary_endpoints(arms: dict, alpha: float) -> tuple[list[dict], bool]:
    """The primary endpoints that can be computed, and whether all six could (Holm applies only then)."""
    from scipy.stats import wilcoxon

    rows = []
    for name, arm, other in PRIMARY:
        for metric in METRICS:
            row = {"endpoint": f"{name}, {metric}", "comparison": name, "metric": metric, "arm": arm, "other": other}
            if arm in arms and other in arms:
                diff = paired(arms, arm, other, metric)
                row.update(prompts=len(diff), mean_difference=float(diff.mean()),
                           p_value=float(wilcoxon(diff, alternative="greater").pvalue) if diff.any() else 1.0)
            rows.append(row)
    complete = all("p_value" in row for row in rows)
    if complete:
        for row, (rejected, level) in zip(rows, holm([row["p_value"] for row in rows], alpha)):
            diff = paired(arms, row["arm"], row["other"], row["metric"])
            row.update(holm_level=level, significant=rejected, interval=bootstrap_interval(diff, level))
    return rows, complete


def secondary_comparisons(arms: dict) -> list[dict]:
    """Every comparison whose arms exist (the primary ones too), overall, per source and per reference length, with
    95 % bootstrap intervals and no test."""
    strata = {"all": lambda row: True, "long reference": lambda row: row["long_reference"],
              "short reference": lambda row: not row["long_reference"]}
    sources = sorted({row["source"] for measured in arms.values() for row in measured.values()})
    strata.update({source: (lambda row, s=source: row["source"] == s) for source in sources})
    out = []
    for name, arm, other in PRIMARY + SECONDARY:
        if arm not in arms or other not in arms:
            continue
        for stratum, keep in strata.items():
            for metric in METRICS:
                diff = paired(arms, arm, other, metric, keep)
                if len(diff):
                    out.append({"comparison": name, "stratum": stratum, "metric": metric, "prompts": len(diff),
                                "mean_difference": float(diff.mean()), "ci95": bootstrap_interval(diff, 0.025)})
    return out


def arm_summary(arms: dict) -> dict[str, dict]:
    return {arm: {"prompts": len(rows), **{m: float(np.mean([r[m] for r in rows.values()])) for m in METRICS},
                  "mean_tokens": float(np.mean([r["num_tokens"] for r in rows.values()])),
                  "cut_at_cap": float(np.mean([1.0 - float(r["finished"]) for r in rows.values()]))}
            for arm, rows in arms.items()}


def grpo_curves(run: Path) -> dict | None:
    """The GRPO arm's probe rows (step, mean score, mean tokens) and its per-step training reward, when it ran."""
    from selfj_rlhf.rlhf.probe_reward import read_probe_rewards

    probes = read_probe_rewards(run)
    if not probes:
        return None
    states = sorted(run.glob("trainer/checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    round_info = run / "policy" / "round.json"
    history = (json.loads(round_info.read_text())["log_history"] if round_info.is_file()
               else json.loads(states[-1].read_text())["log_history"] if states else [])
    return {"probe": [{k: row[k] for k in ("step", "score_mean", "tokens_mean", "cut_at_cap")} for row in probes],
            "training_reward": [{"step": h["step"], "reward": h["reward"]} for h in history if "reward" in h]}


def plot_grpo(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (scores, lengths) = plt.subplots(1, 2, figsize=(10, 4))
    probe = curves["probe"]
    scores.plot([r["step"] for r in probe], [r["score_mean"] for r in probe], "o-", label="16 fixed prompts, greedy")
    if curves["training_reward"]:
        scores.plot([r["step"] for r in curves["training_reward"]], [r["reward"] for r in curves["training_reward"]],
                    alpha=0.4, label="the step's own samples")
    scores.set_xlabel("optimizer step")
    scores.set_ylabel("judge score (0-9)")
    scores.set_title("GRPO reward")
    scores.legend()
    lengths.plot([r["step"] for r in probe], [r["tokens_mean"] for r in probe], "o-")
    lengths.set_xlabel("optimizer step")
    lengths.set_ylabel("mean answer tokens (16 fixed prompts)")
    lengths.set_title("answer length")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(plan_path: str | Path, measures: str | Path) -> dict:
    plan_bytes = Path(plan_path).read_bytes()
    plan = yaml.safe_load(plan_bytes)
    arms = load_arms(Path(measures))
    if not arms:
        raise ConfigError(f"{measures}: no <arm>/measures.jsonl")
    sha = hashlib.sha256(plan_bytes).hexdigest()
    for arm in arms:
        summary = json.loads((Path(measures) / arm / "summary.json").read_text())
        if summary["preregistration_sha256"] != sha:
            raise ConfigError(f"{measures}/{arm}/summary.json: measured under another plan")
    primary, complete = primary_endpoints(arms, plan["test"]["alpha"])
    goal = None
    if complete:
        goal = all(row["significant"] for row in primary if row["comparison"] in GOAL)
    return {"preregistration_sha256": sha, "arms": arm_summary(arms), "primary": primary, "complete": complete,
            "goal_met": goal, "secondary": secondary_comparisons(arms)}


def render(payload: dict) -> str:
    m = payload["machine"]
    lines = ["# The pre-registered policy-improvement test", "", f"Command: `{payload['command']}`  ",
             f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}  ",
             f"Plan: evals/preregistration/policy_improvement.yaml (sha256 `{payload['preregistration_sha256'][:16]}`)",
             "", "## Arms: greedy answers to the test prompts, and best-of-n picks (bon<n>_<pick>)", "",
             "| arm | prompts | cosine | F1 | mean tokens | cut at the cap |", "|---|---:|---:|---:|---:|---:|"]
    for arm, row in payload["arms"].items():
        lines.append(f"| {arm} | {row['prompts']} | {row['cosine']:.3f} | {row['f1']:.3f} | {row['mean_tokens']:.1f} "
                     f"| {row['cut_at_cap']:.0%} |")
    if payload.get("budget_checks"):
        lines += ["", "## Budget checks: arm d's mean per-token log-probability change on the development references",
                  "", "| policy | prompts | change (nats) | plan's minimum | retrain with 6 epochs |",
                  "|---|---:|---:|---:|---|"]
        lines += [f"| `{c['policy']}` | {c['prompts']} | {c['change_nats']:+.4f} | {c['minimum_nats']} | "
                  f"{'yes' if c['retrain_with_6_epochs'] else 'no'} |" for c in payload["budget_checks"]]
    lines += ["", "## Primary endpoints", ""]
    if not payload["complete"]:
        lines += ["**Incomplete:** Holm's correction needs all six endpoints; the arms below are missing where a row "
                  "has no p-value. Uncorrected p-values only, no conclusion.", ""]
    lines += ["| endpoint | prompts | mean difference | one-sided p (Wilcoxon) | Holm level | interval | significant |",
              "|---|---:|---:|---:|---:|---|---|"]
    for row in payload["primary"]:
        if "p_value" not in row:
            lines.append(f"| {row['endpoint']} | not run ({row['arm']} or {row['other']} missing) | | | | | |")
            continue
        interval = "[{:+.3f}, {:+.3f}]".format(*row["interval"]) if "interval" in row else ""
        level = f"{row['holm_level']:.4f}" if "holm_level" in row else ""
        significant = {True: "yes", False: "no"}.get(row.get("significant"), "")
        lines.append(f"| {row['endpoint']} | {row['prompts']} | {row['mean_difference']:+.4f} | {row['p_value']:.4f} "
                     f"| {level} | {interval} | {significant} |")
    if payload["goal_met"] is not None:
        lines += ["", f"Goal (arm a beats b and base on cosine and F1 after the correction): "
                      f"**{'met' if payload['goal_met'] else 'not met'}**."]
    if payload.get("grpo"):
        lines += ["", "## GRPO: the judge's score of greedy answers to 16 fixed development prompts", "",
                  f"Plot: `{payload.get('grpo_plot', 'not written')}`", "",
                  "| step | mean score | mean tokens | cut at the cap |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['step']} | {r['score_mean']:.3f} | {r['tokens_mean']:.1f} | {r['cut_at_cap']:.0%} |"
                  for r in payload["grpo"]["probe"]]
    lines += ["", "## Secondary comparisons (95 % bootstrap intervals, no test)", "",
              "| comparison | stratum | metric | prompts | mean difference | 95 % interval |",
              "|---|---|---|---:|---:|---|"]
    for row in payload["secondary"]:
        lines.append(f"| {row['comparison']} | {row['stratum']} | {row['metric']} | {row['prompts']} | "
                     f"{row['mean_difference']:+.4f} | [{row['ci95'][0]:+.4f}, {row['ci95'][1]:+.4f}] |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = make_parser().parse_args(argv)
    payload = {"command": command_line(), "machine": machine_info(), **report(args.plan, args.measures),
               "grpo": grpo_curves(Path(args.grpo_run)),
               "budget_checks": [json.loads(Path(path).read_text()) for path in args.budget_checks
                                 if Path(path).is_file()]}
    if payload["grpo"] and args.name:
        payload["grpo_plot"] = f"evals/results/{args.name}_grpo.png"
    markdown = render(payload)
    if args.name:
        if payload["grpo"]:
            plot_grpo(payload["grpo"], RESULTS_DIR / f"{args.name}_grpo.png")
        write_results(args.name, payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
