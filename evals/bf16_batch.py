"""How much a bf16 judge's score depends on the batch it runs in, and how often that changes a best-of-n pick.

    python -m evals.improvement sample          # the policy's samples of the held-out prompts (runs/improvement)
    python -m evals.bf16_batch --prompts 12 --n 8

In bf16 an answer's score depends on its batch mates: left padding changes the shapes that the matmuls and the
attention run on, and bf16 rounds differently for each. This benchmark scores the same answers (the first ``n``
samples of ``prompts`` held-out prompts) with fp32 and with bf16 in three batch compositions: alone (batch 1),
with the other answers to the same prompt, and in batches mixed across prompts (a seeded shuffle). It does so
for the zero-shot digit judge, with the LM head's logits in bf16 and in fp32 (``SelfJudge(fp32_readout=...)``),
and for the shipped scalar-head judge, whose head always reads its layer in fp32. Prefix sharing is off, so
only the batch composition changes.

Reported per judge and setting: the largest and mean |bf16 - fp32| score difference, the largest difference
between two bf16 compositions of the same answer, and the share of prompts whose best-of-n pick differs from
the fp32 pick and between bf16 compositions.
"""

from __future__ import annotations

import argparse
import time

from evals.lib.batch_dependence import COMPOSITIONS, compare, scores_by_composition
from evals.lib.common import command_line, judges_measured, machine_info, write_results
from selfj_rlhf import SelfJudge
from selfj_rlhf.core.io import read_shards
from selfj_rlhf.judge.directory import judge_identity

def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", default="runs/improvement/samples")
    parser.add_argument("--prompts", type=int, default=12, help="Held-out prompts (the first, by id).")
    parser.add_argument("--n", type=int, default=8, help="Answers per prompt (its first n samples).")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--digit_judge", default="smollm2-135m-instruct")
    parser.add_argument("--scalar_judge", default="selfj-smollm2-135m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="bf16_batch")
    return parser


def load_items(args) -> list[tuple[str, str, str]]:
    """(prompt id, instruction, answer) of the first n samples of the first prompts."""
    prompts = sorted(read_shards(args.samples).values(), key=lambda p: p["id"])[: args.prompts]
    return [(p["id"], p["instruction"], c["text"]) for p in prompts for c in p["candidates"][: args.n]]


def measure(spec: str, items, args, readouts: tuple[bool, ...]) -> dict:
    groups, instructions, responses = (list(column) for column in zip(*items))
    fp32 = SelfJudge.from_pretrained(spec, dtype="float32")
    reference = scores_by_composition(fp32, instructions, responses, groups, args.batch_size, args.seed)[COMPOSITIONS[1]]
    del fp32
    bf16 = SelfJudge.from_pretrained(spec, dtype="bfloat16")
    rows = {}
    for fp32_readout in readouts:
        bf16.fp32_readout = fp32_readout
        start = time.perf_counter()
        runs = scores_by_composition(bf16, instructions, responses, groups, args.batch_size, args.seed)
        label = "bf16" if len(readouts) == 1 else f"bf16, {'fp32' if fp32_readout else 'bf16'} LM-head logits"
        rows[label] = {**compare(groups, reference, runs), "wall_s": round(time.perf_counter() - start, 1)}
        print(spec, label, rows[label], flush=True)
    return {"fp32_score_std": float(reference.std()), "settings": rows}


def render(payload: dict) -> str:
    lines = [f"# {payload['title']}", "", f"Command: `{payload['command']}`  ",
             f"Machine: {payload['machine'].get('cpu', '')}, torch {payload['machine'].get('torch', '')}, "
             f"{payload['machine'].get('date', '')}", "",
             f"{payload['answers']} answers: the first {payload['n']} samples of {payload['prompts']} held-out prompts "
             f"(best-of-{payload['n']} picks). Scores on the judge's raw scale.", "",
             "| judge | setting | max abs bf16 - fp32 | mean abs bf16 - fp32 | max abs between compositions | "
             "pick changed vs fp32 (alone / with its prompt / mixed) | pick changed between compositions |",
             "|---|---|---:|---:|---:|---|---:|"]
    for judge, result in payload["judges"].items():
        for setting, r in result["settings"].items():
            changed = " / ".join(f"{r['pick_changed_vs_reference'][c]:.0%}" for c in COMPOSITIONS)
            lines.append(f"| {judge} (fp32 score std {result['fp32_score_std']:.2f}) | {setting} | "
                         f"{r['max_abs_vs_reference']:.3f} | {r['mean_abs_vs_reference']:.4f} | "
                         f"{r['max_abs_between_runs']:.3f} | {changed} | {r['pick_changed_between_runs']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = make_parser().parse_args(argv)
    items = load_items(args)
    names = {spec: judge_identity(spec)["name"] for spec in (args.digit_judge, args.scalar_judge)}
    judges = {f"zero-shot digit judge ({names[args.digit_judge]})": measure(args.digit_judge, items, args, (False, True)),
              f"scalar-head judge ({names[args.scalar_judge]})": measure(args.scalar_judge, items, args, (True,))}
    payload = {"title": "bf16 scores and the batch they run in", "command": command_line(), "machine": machine_info(),
               "judges_measured": judges_measured({"digit": args.digit_judge, "scalar": args.scalar_judge}),
               "prompts": args.prompts, "n": args.n, "answers": len(items), "batch_size": args.batch_size,
               "judges": judges}
    write_results(args.name, payload, render(payload))
    print(render(payload))


if __name__ == "__main__":
    main()
