"""Prefix-shared vs independent judge scoring of n answers to one prompt, short and long prompts.

    python evals/bench_prefix.py --ns 4 8 16

Items: arena-bench questions with their 15 model answers plus the GPT-4 reference answer as a 16th (real,
distinct answers to one prompt), each answer cut to ``--answer_tokens``. "short" prompts are questions
under 100 tokens (AlpacaEval-like); "long" ones are at least 512 tokens (the case best-of-n over long
contexts or with-reference judging hits). Both methods score the same items with the same batch size in
one process, interleaved, best of ``--repeats``; the scores must agree within 1e-4 (checked and reported).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scoring import interleaved_best_times  # noqa: E402
from common import command_line, default_data, machine_info, write_results  # noqa: E402

from selfj_rlhf.io import iter_records  # noqa: E402


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", default="selfj-smollm2-135m")
    parser.add_argument("--arena", default=default_data("arena_bench_v1"))
    parser.add_argument("--ns", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--prompts_per_setting", type=int, default=1)
    parser.add_argument("--answer_tokens", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=2048, help="Judge prompt cap (the shipped judge's is 1,024).")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--name", default="bench_prefix")
    return parser


def prompt_sets(args, tokenizer) -> dict[str, list[tuple[str, list[str]]]]:
    """{"short": [(instruction, [16 answers])], "long": [...]} from arena-bench."""
    by_question: dict[str, dict] = {}
    for _, row in iter_records(args.arena):
        entry = by_question.setdefault(row["question_id"], {"instruction": row["instruction"], "answers": [],
                                                            "reference": row["reference"]})
        entry["answers"].append(row["response"])

    def cut(text: str) -> str:
        return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[:args.answer_tokens])

    sets = {"short": [], "long": []}
    for qid in sorted(by_question):
        entry = by_question[qid]
        answers = [cut(a) for a in entry["answers"] + [entry["reference"]]]
        if len(answers) < max(args.ns):
            continue
        length = len(tokenizer.encode(entry["instruction"], add_special_tokens=False))
        kind = "short" if length < 100 else "long" if length >= 512 else None
        if kind and len(sets[kind]) < args.prompts_per_setting:
            sets[kind].append((entry["instruction"], answers))
    return sets


def main(argv=None):
    args = make_parser().parse_args(argv)
    from selfj_rlhf import SelfJudge

    judge = SelfJudge.from_pretrained(args.judge, max_length=args.max_length)
    sets = prompt_sets(args, judge.tokenizer)
    rows = []
    for kind, prompts in sets.items():
        for n in args.ns:
            instructions = [p for p, answers in prompts for _ in answers[:n]]
            responses = [a for _, answers in prompts for a in answers[:n]]
            prefix_tokens = sum(len(judge.encode(p, "").input_ids) for p, _ in prompts) / len(prompts)

            def run(mode: str):
                judge.share_prefix = mode
                judge.scored_tokens = 0
                return judge.score(instructions, responses, batch_size=args.batch_size)

            tokens = {}
            independent = run("never")  # warm-up, token count and equality check
            tokens["never"] = judge.scored_tokens
            shared = run("always")
            tokens["always"] = judge.scored_tokens
            max_diff = max(abs(a - b) for a, b in zip(independent, shared))
            times = interleaved_best_times({"never": lambda: run("never"), "always": lambda: run("always")},
                                           {"never": args.repeats, "always": args.repeats})
            rows.append({"prompts": kind, "n": n, "num_prompts": len(prompts), "items": len(responses),
                         "mean_prefix_tokens": prefix_tokens, "independent_s": times["never"],
                         "shared_s": times["always"], "speedup": times["never"] / times["always"],
                         "independent_tokens": tokens["never"], "shared_tokens": tokens["always"],
                         "max_abs_score_diff": max_diff})
            print(rows[-1], flush=True)
    judge.share_prefix = "auto"
    payload = {"command": command_line(), "machine": machine_info(), "judge": args.judge,
               "answer_tokens": args.answer_tokens, "batch_size": args.batch_size, "repeats": args.repeats, "rows": rows}
    m = payload["machine"]
    lines = ["# Prefix-shared vs independent scoring of n answers per prompt", "",
             f"Command: `{payload['command']}`  ",
             f"Machine: {m['cpu']} ({m['cpu_count']} cores, torch {m['torch']}, {m['torch_threads']} threads, "
             f"GPU: {m['cuda']}), {m['date']}  ",
             f"Judge {args.judge}; answers cut to {args.answer_tokens} tokens; batch size {args.batch_size}; best of "
             f"{args.repeats}, methods interleaved. Tokens = tokens run through the model.", "",
             "| prompts | n | prompt prefix (tokens) | independent s | shared s | speedup | tokens independent / shared "
             "| max score diff |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['prompts']} ({r['num_prompts']}) | {r['n']} | {r['mean_prefix_tokens']:.0f} | "
                     f"{r['independent_s']:.2f} | {r['shared_s']:.2f} | {r['speedup']:.2f}x | "
                     f"{r['independent_tokens']} / {r['shared_tokens']} | {r['max_abs_score_diff']:.1e} |")
    lines.append("")
    markdown = "\n".join(lines)
    write_results(args.name, payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
