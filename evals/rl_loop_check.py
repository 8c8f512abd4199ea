"""Does SELF-J-driven policy training help the embedded policy? Held-out check of the RLHF recipes.

    python -m evals.rl_loop_check prompts            # train / held-out prompt files (SELFJ_DATA_DIR or presets)
    accelerate launch --cpu --num_processes 2 recipes/rejection_sampling.py --config recipes/configs/rejection_sampling.yaml
    python recipes/build_pairs.py --config recipes/configs/build_pairs.yaml
    accelerate launch --cpu --num_processes 2 recipes/dpo.py --config recipes/configs/dpo.yaml
    python -m evals.rl_loop_check evaluate --policy base=smollm2-135m-instruct \
        --policy rejection_sampling=runs/rl_check/rejection_sampling/round-00/policy \
        --policy dpo=runs/rl_check/dpo/round-00/policy

`evaluate` answers every held-out prompt greedily with each policy (never trained on) and reports the
judge's mean reference-free score (the reward being optimised), the MiniLM cosine and token F1 to the
reference answer (an independent signal the judge never sees), and the mean output length (to expose
length hacking), beside the training rounds' wall time. Greedy outputs are cached per policy.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from evals.lib.common import command_line, default_data, judges_measured, machine_info, write_results
from evals.lib.metrics import bootstrap_ci, final_number, reference_answer

from selfj_rlhf.core.io import atomic_write_json
from selfj_rlhf.data.datasets import iter_records

SOURCES = ("flask", "gpteacher_codegen", "gsm8k")


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
    evaluate = sub.add_parser("evaluate", help="Greedy held-out outputs of each policy, scored.")
    evaluate.add_argument("--policy", action="append", required=True, help="NAME=SPEC (first one is the baseline)")
    evaluate.add_argument("--judge", default="selfj-smollm2-135m")
    evaluate.add_argument("--prompts", default="runs/rl_check/prompts_heldout.jsonl")
    evaluate.add_argument("--runs", nargs="*", default=["runs/rl_check/rejection_sampling", "runs/rl_check/dpo"],
                          help="Recipe output dirs whose rounds.json gives training-time rewards and wall time.")
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
                                        max_instruction_chars=args.max_instruction_chars, seed=args.seed)
    print(f"train and held-out prompts: {train}, {heldout}")


def greedy_outputs(name: str, spec: str, prompts, args) -> list[dict]:
    """Greedy answers of one policy, cached in ``cache_dir/<name>.json`` (keyed by the policy spec)."""
    from tqdm.auto import tqdm

    import torch

    from selfj_rlhf.core.generation import chat_prompt_ids, eos_token_ids
    from selfj_rlhf.core.tensors import left_pad
    from selfj_rlhf.core.models import load_causal_lm

    cache = Path(args.cache_dir) / f"{name}.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached["spec"] == spec and cached["max_new_tokens"] == args.max_new_tokens \
                and [o["id"] for o in cached["outputs"]] == [p.id for p in prompts]:
            return cached["outputs"]
    model, tokenizer = load_causal_lm(spec)
    outputs, eos_ids = [], eos_token_ids(model, tokenizer)
    # greedy answers do not depend on batch company, so prompts are generated in left-padded batches
    for start in tqdm(range(0, len(prompts), args.batch_size), desc=f"greedy {name}", unit="batch"):
        batch = prompts[start:start + args.batch_size]
        encoded = left_pad([chat_prompt_ids(tokenizer, p.instruction) for p in batch], tokenizer.pad_token_id)
        with torch.inference_mode():
            generated = model.generate(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                                       max_new_tokens=args.max_new_tokens, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)
        for prompt, row in zip(batch, generated[:, encoded["input_ids"].shape[1]:].tolist()):
            end = next((i for i, t in enumerate(row) if t in eos_ids), len(row))
            outputs.append({"id": prompt.id, "text": tokenizer.decode(row[:end], skip_special_tokens=True).strip(),
                            "num_tokens": end})
    atomic_write_json(cache, {"spec": spec, "max_new_tokens": args.max_new_tokens, "outputs": outputs}, indent=None)
    return outputs


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
    runs = {}
    for run in args.runs:
        path = Path(run) / "rounds.json"
        if path.is_file():
            runs[Path(run).name] = json.loads(path.read_text())
    payload = {"command": command_line(), "machine": machine_info(),
               "judges_measured": judges_measured({"reward": args.judge}), "prompts": args.prompts,
               "num_prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "rows": table, "rounds": runs}
    plot_rewards(table, runs, Path("evals/results") / f"{args.name}.png")
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
        lines += ["", "Training rounds (candidates scored during training; wall time of sampling+scoring and of "
                  "training):", "", "| run | round | mean candidate score | mean chosen score | kept / pairs | "
                  "train steps | loss first -> last | sampling s | training s |", "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
        for run, rounds in runs.items():
            for r in rounds:
                kept = r.get("kept", r.get("pairs"))
                if kept is None and r.get("pairs_file"):  # rounds trained on a given pairs file
                    kept = sum(1 for _ in iter_records(r["pairs_file"]))
                lines.append(f"| {run} | {r['round']} | {_fmt(r.get('mean_candidate_score'))} | "
                             f"{_fmt(r.get('mean_chosen_score'))} | {kept} | {r['steps']} | "
                             f"{_fmt(r['first_loss'])} -> {_fmt(r['last_loss'])} | {_fmt(r.get('sampling_s'), 0)} | "
                             f"{_fmt(r.get('training_s'), 0)} |")
    lines.append("")
    markdown = "\n".join(lines)
    write_results(args.name, payload, markdown)
    print(markdown)


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def plot_rewards(table: dict, runs: dict, path: Path) -> None:
    """Held-out judge score per policy, and the training-time mean candidate score per round of each run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(table)
    left.bar(names, [table[n]["judge_score"] for n in names], color="tab:blue")
    left.set_ylabel("held-out mean judge score (greedy)")
    left.set_title("reward on held-out prompts")
    left.tick_params(axis="x", rotation=20)
    for run, rounds in runs.items():
        right.plot([r["round"] for r in rounds], [r.get("mean_candidate_score") for r in rounds], marker="o", label=run)
    right.set_xlabel("round")
    right.set_ylabel("mean judge score of sampled candidates")
    right.set_title("reward per round (training prompts)")
    if runs:
        right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.command == "prompts":
        write_prompt_files(args)
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
