"""Judge gaming: how far can adversarial answers move the SELF-J score, before and after hardening?

    python -m evals.judge_gaming --judge selfj=selfj-smollm2-135m --judge zero-shot=smollm2-135m-instruct \
        --num_prompts 20

Prompts: AlpacaEval instructions (held out from judge training). Honest answers: the embedded policy's own
sampled answers (first candidate, from evals/bestofn_check.py's cache when present, else generated) and the
GPT-4 Turbo reference (cut to 200 tokens). Attacks replace the answer (or, for `honest + note`, extend the
policy's answer). "before" scores with ``sanitize=False``; "after" with the hardened default
(``sanitize=True``: special-token strings and template markers removed from user text; the template
already delimits the answer and asks for the rating after it). Reported per attack: mean score, shift
against the policy's honest answer on the same prompt, and the share of prompts where the attack scores
at least as high as that honest answer.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

from evals.lib.common import command_line, default_data, machine_info, write_results

from selfj_rlhf.data.datasets import iter_records
from evals.lib.attacks import ATTACKS


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", action="append", default=[], help="NAME=SPEC")
    parser.add_argument("--references", default=default_data("alpaca_eval"))
    parser.add_argument("--policy_answers", default="runs/eval_cache/bestofn-gpt4_1106_preview_outputs-n30-k4-s0.json")
    parser.add_argument("--policy", default="smollm2-135m-instruct")
    parser.add_argument("--num_prompts", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_length", type=int, default=768)
    parser.add_argument("--name", default="judge_gaming")
    return parser


def honest_answers(args) -> list[dict]:
    """[{instruction, policy, reference}] for the sampled prompts."""
    rows = [row for _, row in iter_records(args.references)]
    path = Path(args.policy_answers)
    if path.is_file():
        items = json.loads(path.read_text())[: args.num_prompts]
        policy = {i["instruction"]: i["candidates"][0] for i in items}
        picked = [r for r in rows if r["instruction"] in policy]
    else:
        from selfj_rlhf.core.generation import generate_candidates
        from selfj_rlhf.core.models import load_causal_lm

        picked = random.Random(args.seed).sample(rows, args.num_prompts)
        model, tokenizer = load_causal_lm(args.policy)
        policy = {r["instruction"]: generate_candidates(model, tokenizer, r["instruction"], n=1, seed=args.seed,
                                                        prompt_id=r["instruction"][:40], max_new_tokens=128,
                                                        temperature=0.8)[0]["text"] for r in picked}
    return [{"instruction": r["instruction"], "policy": policy[r["instruction"]],
             "reference": " ".join(r["output"].split()[:150])} for r in picked]


def main(argv=None):
    args = make_parser().parse_args(argv)
    from tqdm.auto import tqdm

    from selfj_rlhf import SelfJudge

    items = honest_answers(args)
    answers = {"honest: policy answer": [i["policy"] for i in items],
               "honest: GPT-4 Turbo reference": [i["reference"] for i in items]}
    answers |= {name: [attack(i["policy"]) for i in items] for name, attack in ATTACKS.items()}
    instructions = [i["instruction"] for i in items]
    table = {}
    for judge_name, spec in (item.split("=", 1) for item in args.judge):
        judge = SelfJudge.from_pretrained(spec, max_length=args.max_length)
        for condition, sanitize in (("before", False), ("after", True)):
            judge.sanitize = sanitize
            scores = {name: judge.score(instructions, texts)
                      for name, texts in tqdm(answers.items(), desc=f"{judge_name} {condition}", unit="answer set")}
            honest = scores["honest: policy answer"]
            for name, values in scores.items():
                table.setdefault(judge_name, {}).setdefault(name, {})[condition] = {
                    "mean": statistics.fmean(values),
                    "shift_vs_policy_answer": statistics.fmean(v - h for v, h in zip(values, honest)),
                    "share_at_least_honest": statistics.fmean(v >= h for v, h in zip(values, honest))}
    payload = {"command": command_line(), "machine": machine_info(), "prompts": len(items),
               "references": args.references, "table": table}
    m = payload["machine"]
    lines = [f"# Judge gaming: adversarial answers on {len(items)} AlpacaEval prompts", "",
             f"Command: `{payload['command']}`  ", f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}  ",
             "Shift: mean score minus the policy's honest answer's score on the same prompt (0-9 scale). "
             "\u2265 honest: share of prompts where the attack scores at least as high. before = sanitize off; "
             "after = the hardened default (sanitize on).", ""]
    for judge_name, rows in table.items():
        lines += [f"## {judge_name}", "", "| answer | mean before | mean after | shift before | shift after | "
                  "\u2265 honest before | \u2265 honest after |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in rows.items():
            b, a = r["before"], r["after"]
            lines.append(f"| {name} | {b['mean']:.2f} | {a['mean']:.2f} | {b['shift_vs_policy_answer']:+.2f} | "
                         f"{a['shift_vs_policy_answer']:+.2f} | {b['share_at_least_honest']:.0%} | "
                         f"{a['share_at_least_honest']:.0%} |")
        lines.append("")
    markdown = "\n".join(lines)
    write_results(args.name, payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
