"""Does SELF-J-driven policy training help the embedded policy? Held-out check of the RLHF recipes.

The prompts are those of ``evals/improvement.py`` (its ``prompts`` step): the shipped judge of the policy's own
samples was trained on the training ones, and every policy is measured on the held-out ones. Each command runs
alone (one thread each when two run side by side):

    python -m evals.rl_loop_check subset --per_source 16      # 48 balanced training prompts
    python recipes/rejection_sampling.py --config recipes/configs/rejection_sampling.yaml \
        --dataset runs/rl_check/prompts_train.jsonl --rounds 2
    python recipes/build_pairs.py --config recipes/configs/build_pairs.yaml     # round 0: the same candidates
    python recipes/dpo.py --config recipes/configs/dpo.yaml --dataset runs/rl_check/prompts_train.jsonl \
        --rounds 2 --pairs_file runs/rl_check/pairs.jsonl
    python recipes/grpo.py --config recipes/configs/grpo.yaml --dataset runs/rl_check/prompts_train.jsonl \
        --max_steps 30 --gradient_accumulation_steps 1 --learning_rate 1e-4
    python -m evals.rl_loop_check evaluate --prompts runs/improvement/prompts_heldout.jsonl \
        --policy base=smollm2-135m-instruct \
        --policy rs_round1=runs/rl_check/rejection_sampling/round-00/policy \
        --policy rs_round2=runs/rl_check/rejection_sampling/round-01/policy \
        --policy dpo_round1=runs/rl_check/dpo/round-00/policy --policy dpo_round2=runs/rl_check/dpo/round-01/policy \
        --policy grpo=runs/rl_check/grpo/policy

`evaluate` answers every held-out prompt greedily with each policy (never trained on) and reports the
judge's mean reference-free score (the reward being optimised), the MiniLM cosine and token F1 to the
reference answer and GSM8K exact match (independent signals the judge never sees), and the mean output length
(to expose length hacking), each with a bootstrap CI of its change from the base policy, beside the training
rounds' wall time and every run's training curve. Greedy outputs are cached per policy.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from evals.lib.common import command_line, default_data, judges_measured, machine_info, write_results
from evals.lib.greedy import greedy_answers
from evals.lib.metrics import bootstrap_ci, final_number, reference_answer

from selfj_rlhf.core.io import atomic_write_json, atomic_write_jsonl
from selfj_rlhf.data.datasets import iter_records

SOURCES = ("flask", "gpteacher_codegen", "gsm8k")
RUNS = ("rejection_sampling", "dpo", "grpo")


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prompts = sub.add_parser("prompts", help="Write train and held-out prompt files (disjoint, balanced by source).")
    prompts.add_argument("--data", nargs="+", default=[default_data(source) for source in SOURCES],
                         help="Instruction files (or dataset specs) with references, one per source.")
    prompts.add_argument("--train_per_source", type=int, default=32)
    prompts.add_argument("--heldout_per_source", type=int, default=14)
    prompts.add_argument("--min_reference_chars", type=int, default=20)
    prompts.add_argument("--max_instruction_chars", type=int, default=1200)
    prompts.add_argument("--seed", type=int, default=7)
    prompts.add_argument("--output_dir", default="runs/rl_check")
    prompts.add_argument("--exclude", nargs="*", default=[],
                         help="Prompt files whose ids are not drawn (to add training prompts to an existing split).")
    subset = sub.add_parser("subset", help="The first K prompts of each source of a prompt file, in turn by source.")
    subset.add_argument("--prompts", default="runs/improvement/prompts_train.jsonl")
    subset.add_argument("--per_source", type=int, default=16)
    subset.add_argument("--output", default="runs/rl_check/prompts_train.jsonl")
    evaluate = sub.add_parser("evaluate", help="Greedy held-out outputs of each policy, scored.")
    evaluate.add_argument("--policy", action="append", required=True, help="NAME=SPEC (first one is the baseline)")
    evaluate.add_argument("--judge", default="selfj-smollm2-135m")
    evaluate.add_argument("--prompts", default="runs/improvement/prompts_heldout.jsonl")
    evaluate.add_argument("--runs", nargs="*", default=[f"runs/rl_check/{run}" for run in RUNS],
                          help="Recipe output dirs: their rounds.json gives training-time rewards and wall time, "
                               "each policy's round.json the training curve.")
    evaluate.add_argument("--max_new_tokens", type=int, default=128)
    evaluate.add_argument("--batch_size", type=int, default=8, help="Prompts per greedy generate call.")
    evaluate.add_argument("--cache_dir", default="runs/rl_check/eval")
    evaluate.add_argument("--name", default="rl_loop_check")
    return parser


def write_prompt_files(args) -> None:
    from selfj_rlhf.data.prompts import write_prompt_split

    train, heldout = write_prompt_split(dict(zip(SOURCES, args.data)), args.output_dir,
                                        train_per_source=args.train_per_source,
                                        heldout_per_source=args.heldout_per_source,
                                        min_reference_chars=args.min_reference_chars,
                                        max_instruction_chars=args.max_instruction_chars, seed=args.seed,
                                        exclude_ids=frozenset(row["id"] for path in args.exclude
                                                              for _, row in iter_records(path)))
    print(f"train and held-out prompts: {train}, {heldout}")


def write_subset(args) -> None:
    """The first ``per_source`` prompts of each source (the id's prefix before ':'), taken in turn by source so
    that any leading part of the file (``--max_prompts``) stays balanced."""
    by_source: dict[str, list[dict]] = {}
    for _, row in iter_records(args.prompts):
        by_source.setdefault(row["id"].split(":", 1)[0], []).append(row)
    short = {name: len(rows) for name, rows in by_source.items() if len(rows) < args.per_source}
    if short:
        raise SystemExit(f"{args.prompts}: fewer than {args.per_source} prompts of {short}")
    rows = [by_source[name][k] for k in range(args.per_source) for name in by_source]
    atomic_write_jsonl(args.output, rows)
    print(f"{len(rows)} prompts ({args.per_source} from each of {sorted(by_source)}) written to {args.output}")


def greedy_outputs(name: str, spec: str, prompts, args) -> list[dict]:
    """Greedy answers of one policy, kept in ``cache_dir/<name>/`` (resumable; refused for another spec)."""
    return greedy_answers(spec, prompts, Path(args.cache_dir) / name, max_new_tokens=args.max_new_tokens,
                          batch_size=args.batch_size, desc=f"greedy {name}")


def evaluate(args) -> None:
    from selfj_rlhf import SelfJudge
    from selfj_rlhf.training.labeling import cosine_similarities, load_embedder, token_f1
    from selfj_rlhf.data.prompts import load_prompts

    prompts = load_prompts(args.prompts)
    policies = [item.split("=", 1) for item in args.policy]
    answers = {name: greedy_outputs(name, spec, prompts, args) for name, spec in policies}
    judge = SelfJudge.from_pretrained(args.judge, max_length=1024)
    embedder = load_embedder("all-minilm-l6-v2", "cpu")
    gsm8k = [i for i, p in enumerate(prompts) if p.id.startswith("gsm8k:")]
    per_prompt, table = {}, {}
    for name, spec in policies:
        texts = [o["text"] for o in answers[name]]
        signals = {"judge_score": judge.score([p.instruction for p in prompts], texts),
                   "cosine_to_reference": [cosine_similarities(embedder, [t], p.reference)[0]
                                           for t, p in zip(texts, prompts)],
                   "f1_to_reference": [token_f1(t, p.reference) for t, p in zip(texts, prompts)],
                   "tokens": [o["num_tokens"] for o in answers[name]]}
        if gsm8k:
            signals["gsm8k_exact"] = [float(final_number(texts[i]) == reference_answer(prompts[i].reference))
                                      for i in gsm8k]
        per_prompt[name] = signals
        table[name] = {"policy": spec, **{k: statistics.fmean(v) for k, v in signals.items()},
                       "mean_tokens": statistics.fmean(signals["tokens"]), "empty_outputs": sum(not t.strip() for t in texts)}
    base_name = policies[0][0]
    for name in table:
        if name != base_name:  # 95 % bootstrap intervals over prompts of each signal's change from the base policy
            table[name]["vs_base"] = {
                k: {"diff": float(np.mean(np.asarray(v) - np.asarray(per_prompt[base_name][k]))),
                    "ci95": bootstrap_ci(np.asarray(v) - np.asarray(per_prompt[base_name][k]), 2000)}
                for k, v in per_prompt[name].items()}
    runs, curves = training_runs(args.runs)
    payload = {"command": command_line(), "machine": machine_info(),
               "judges_measured": judges_measured({"reward": args.judge}), "prompts": args.prompts,
               "num_prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "rows": table, "rounds": runs,
               "training_curves": curves}
    plot_training(table, curves, Path("evals/results") / f"{args.name}.png")
    m = payload["machine"]
    lines = [f"# RLHF recipes on the embedded policy: {len(prompts)} held-out prompts, greedy outputs", "",
             f"Command: `{payload['command']}`  ", f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}  ",
             f"Judge (the reward): `{payload['judges_measured'][0]['name']}`, reference-free. Cosine/F1: to the "
             "dataset's reference answer, which the judge never sees; GSM8K: exact match of the final number. "
             "Brackets: the change from the base policy with its 95 % bootstrap CI over prompts (* excludes 0).", "",
             "| policy | judge score (0-9) | cosine to ref | token F1 to ref | GSM8K exact | mean tokens | empty |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def cell(row, key, digits=3):
        if key not in row:
            return "n/a"
        text = f"{row[key]:.{digits}f}"
        change = row.get("vs_base", {}).get("tokens" if key == "mean_tokens" else key)
        if change:
            low, high = change["ci95"]
            text += f" ({change['diff']:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]{' *' if low > 0 or high < 0 else ''})"
        return text

    for name, row in table.items():
        lines.append(f"| {name} | {cell(row, 'judge_score')} | {cell(row, 'cosine_to_reference')} | "
                     f"{cell(row, 'f1_to_reference')} | {cell(row, 'gsm8k_exact')} | {cell(row, 'mean_tokens', 1)} | "
                     f"{row['empty_outputs']} |")
    if runs:
        lines += ["", "Training rounds, counted from 1 (candidates scored during training; wall time of "
                  "sampling+scoring and of training; a round trained on given pairs shows n/a for its candidates):",
                  "", "| run | round | mean candidate score | mean chosen score | kept / pairs | train steps | "
                  "loss first -> last | sampling s | training s |", "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
        for run, rounds in runs.items():
            for r in rounds:
                kept = r.get("kept", r.get("pairs"))  # a round trained on a given pairs file records their count
                lines.append(f"| {run} | {r['round'] + 1} | {_fmt(r.get('mean_candidate_score'))} | "
                             f"{_fmt(r.get('mean_chosen_score'))} | {'n/a' if kept is None else kept} | {r['steps']} | "
                             f"{_fmt(r['first_loss'])} -> {_fmt(r['last_loss'])} | {_fmt(r.get('sampling_s'), 0)} | "
                             f"{_fmt(r.get('training_s'), 0)} |")
    for run, curve in curves.items():
        rewards = [c["reward"] for c in curve if c["reward"] is not None]
        if len(rewards) >= 10:  # online RL: how the reward of the policy's own samples moved while training
            lines += ["", f"{run}: mean judge reward of the step's samples, first 5 steps {statistics.fmean(rewards[:5]):.3f}"
                          f", last 5 steps {statistics.fmean(rewards[-5:]):.3f} ({len(rewards)} steps; curve in "
                          f"`{args.name}.png` and the JSON's `training_curves`)."]
    lines.append("")
    markdown = "\n".join(lines)
    write_results(args.name, payload, markdown)
    print(markdown)


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def training_runs(run_dirs: list[str]) -> tuple[dict, dict]:
    """Per run directory: its rounds (``rounds.json`` of a round recipe; one row from the policy's ``round.json``
    for GRPO) and its training curve, the logged loss and reward of every step, steps counted on across rounds."""
    runs, curves = {}, {}
    for run in map(Path, run_dirs):
        infos = [json.loads(p.read_text()) for p in sorted(run.glob("round-*/policy/round.json"))]
        if (run / "policy" / "round.json").is_file():
            infos = [json.loads((run / "policy" / "round.json").read_text())]
        if not infos:
            continue
        if (run / "rounds.json").is_file():
            runs[run.name] = json.loads((run / "rounds.json").read_text())
        else:
            runs[run.name] = [{"round": 0, **{k: infos[0].get(k) for k in ("steps", "first_loss", "last_loss",
                                                                           "training_s")}}]
        curve, offset = [], 0
        for round_index, info in enumerate(infos):
            for entry in info.get("log_history", []):
                if "step" in entry and ("loss" in entry or "reward" in entry):
                    curve.append({"round": round_index, "step": offset + entry["step"], "loss": entry.get("loss"),
                                  "reward": entry.get("reward")})
            offset += info["steps"]
        curves[run.name] = curve
    return runs, curves


def plot_training(table: dict, curves: dict, path: Path) -> None:
    """Held-out judge score per policy; the training loss per step of each run; the reward per step of online RL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (scores, losses, rewards) = plt.subplots(1, 3, figsize=(15, 4))
    names = list(table)
    scores.bar(names, [table[n]["judge_score"] for n in names], color="tab:blue")
    scores.set_ylabel("held-out mean judge score (greedy)")
    scores.set_title("reward on held-out prompts")
    scores.tick_params(axis="x", rotation=20)
    for run, curve in curves.items():
        points = [(c["step"], c["loss"]) for c in curve if c["loss"] is not None and c["reward"] is None]
        if points:
            losses.plot(*zip(*points), marker=".", label=run)
        points = [(c["step"], c["reward"]) for c in curve if c["reward"] is not None]
        if points:  # one step's few samples make a noisy reward: the mean of 5 steps beside it
            steps, values = zip(*points)
            line, = rewards.plot(steps, values, marker=".", alpha=0.35, label=f"{run}, per step")
            window = min(5, len(values))
            rewards.plot(steps[window - 1:], np.convolve(values, np.ones(window) / window, mode="valid"),
                         color=line.get_color(), label=f"{run}, mean of {window} steps")
    losses.set_xlabel("optimizer step (rounds in turn)")
    losses.set_ylabel("training loss")
    losses.set_title("training curves (training prompts)")
    rewards.set_xlabel("optimizer step")
    rewards.set_ylabel("mean judge reward of the step's samples")
    rewards.set_title("online RL reward")
    for axis in (losses, rewards):
        if axis.lines:
            axis.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.command == "prompts":
        write_prompt_files(args)
    elif args.command == "subset":
        write_subset(args)
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
