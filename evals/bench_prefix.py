"""Prefix-shared vs independent judge scoring of n answers to one prompt, and what ``share_prefix="auto"`` picks.

    python -m evals.bench_prefix --ns 4 8 16 --settings short:128 short:384 long:128

Items: arena-bench questions with their 15 model answers plus the GPT-4 reference answer as a 16th (real,
distinct answers to one prompt), each answer cut to the setting's token count. "short" prompts are questions
under 100 tokens (AlpacaEval-like); "long" ones are at least 512 tokens (the case best-of-n over long
contexts or with-reference judging hits). ``never`` (independent), ``always`` (shared) and ``auto`` (the cost
model, ``SelfJudge.prefix_sharing_pays``) score the same items with the same batch size in one process,
interleaved; times are the best of ``--repeats`` runs, and auto / never is the median over rounds of the ratio of
the two runs of one round (paired, so that a slow spell of the machine cancels). The scores must agree within
1e-4 (checked and reported). auto / never is the number that matters: the cost model must never make scoring
slower.
"""

from __future__ import annotations

import argparse
import math
import time

from evals.lib.timing import interleaved_times, paired_ratio
from evals.lib.common import command_line, default_data, judges_measured, machine_info, write_results

from selfj_rlhf.data.datasets import iter_records
from selfj_rlhf.judge.self_judge import prefix_token_saving


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", default="selfj-smollm2-135m")
    parser.add_argument("--arena", default=default_data("arena_bench_v1"))
    parser.add_argument("--ns", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--prompts_per_setting", type=int, default=1)
    parser.add_argument("--settings", nargs="+", default=["short:128", "short:384", "long:128"],
                        help="PROMPTS:ANSWER_TOKENS, PROMPTS short (< 100 tokens) or long (>= 512 tokens).")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=2048, help="Judge prompt cap (the shipped judge's is 1,024).")
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs of each mode, at least.")
    parser.add_argument("--min_time_s", type=float, default=30.0,
                        help="More runs of each mode for a short setting, until they add up to about this many seconds "
                             "(a best of few runs of one second is noisy).")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time, which leaves out the time a shared "
                             "machine gives to other processes (for a one-thread run, OMP_NUM_THREADS=1).")
    parser.add_argument("--name", default="bench_prefix")
    return parser


def prompt_sets(args, tokenizer, answer_tokens: int) -> dict[str, list[tuple[str, list[str]]]]:
    """{"short": [(instruction, [16 answers])], "long": [...]} from arena-bench, answers cut to ``answer_tokens``."""
    by_question: dict[str, dict] = {}
    for _, row in iter_records(args.arena):
        entry = by_question.setdefault(row["question_id"], {"instruction": row["instruction"], "answers": [],
                                                            "reference": row["reference"]})
        entry["answers"].append(row["response"])

    def cut(text: str) -> str:
        return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[:answer_tokens])

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
    rows = []
    for setting in args.settings:
        kind, answer_tokens = setting.split(":")
        prompts = prompt_sets(args, judge.tokenizer, int(answer_tokens))[kind]
        for n in args.ns:
            instructions = [p for p, answers in prompts for _ in answers[:n]]
            responses = [a for _, answers in prompts for a in answers[:n]]

            def run(mode: str):
                judge.share_prefix = mode
                judge.scored_tokens = 0
                return judge.score(instructions, responses, batch_size=args.batch_size)

            tokens = {}
            started = time.perf_counter()
            independent = run("never")  # warm-up, token count and equality check
            repeats = max(args.repeats, min(16, math.ceil(args.min_time_s / (time.perf_counter() - started))))
            tokens["never"] = judge.scored_tokens
            shared = run("always")
            tokens["always"] = judge.scored_tokens
            max_diff = max(abs(a - b) for a, b in zip(independent, shared))
            modes = ("never", "always", "auto")
            runs = interleaved_times({mode: (lambda m=mode: run(m)) for mode in modes},
                                     {mode: repeats for mode in modes}, clock=CLOCKS[args.clock])
            times = {mode: min(values) for mode, values in runs.items()}
            # the split the judge itself makes: the prefix up to the answer, the rest (answer and prompt tail)
            encoded = [judge.encode(p, a) for p, a in zip(instructions, responses)]
            shared_prefix = sum(e.prefix_length for e in encoded) / len(encoded)
            rest = sum(len(e.input_ids) - e.prefix_length for e in encoded) / len(encoded)
            rows.append({"prompts": kind, "answer_tokens": int(answer_tokens), "n": n, "num_prompts": len(prompts),
                         "items": len(responses), "mean_prefix_tokens": shared_prefix,
                         "token_saving": prefix_token_saving(n, shared_prefix, rest),
                         "auto_shares": judge.prefix_sharing_pays(n, round(shared_prefix), rest),
                         "independent_s": times["never"], "shared_s": times["always"], "auto_s": times["auto"],
                         "speedup": times["never"] / times["always"],
                         "auto_vs_never": paired_ratio(runs["never"], runs["auto"]),
                         "auto_vs_never_best": times["never"] / times["auto"],
                         "independent_tokens": tokens["never"], "shared_tokens": tokens["always"],
                         "max_abs_score_diff": max_diff, "runs": repeats})
            print(rows[-1], flush=True)
    judge.share_prefix = "auto"
    payload = {"command": command_line(), "machine": machine_info(),
               "judges_measured": judges_measured({"judge": args.judge}), "settings": args.settings,
               "batch_size": args.batch_size, "repeats": args.repeats, "clock": args.clock, "rows": rows}
    m = payload["machine"]
    lines = ["# Prefix-shared vs independent scoring of n answers per prompt", "",
             f"Command: `{payload['command']}`  ",
             f"Machine: {m['cpu']} ({m['cpu_count']} cores, torch {m['torch']}, {m['torch_threads']} threads, "
             f"GPU: {m['cuda']}), {m['date']}  ",
             f"Judge `{payload['judges_measured'][0]['name']}`; batch size {args.batch_size}; times are "
             f"{'CPU time of this process' if args.clock == 'cpu' else 'wall time'} (`--clock {args.clock}`); "
             f"each the best of `runs` runs (at least {args.repeats}, more for short settings), the three methods interleaved in "
             "alternating order; auto / never is the median over rounds of the never/auto time ratio within a round "
             "(paired: a slow spell of the machine slows both runs of a round), beside it the ratio of best times. "
             "Token saving: n(P+A)/(P+nA), the factor by which sharing cuts the tokens run; "
             "auto: whether the cost model shares. Tokens = tokens run through the model.", "",
             "| prompts | answer cap | n | prefix P | token saving | independent s | shared s | shared speedup | auto shares "
             "| auto s | auto / never (paired; best) | tokens independent / shared | max score diff | runs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['prompts']} ({r['num_prompts']}) | {r['answer_tokens']} | {r['n']} | "
                     f"{r['mean_prefix_tokens']:.0f} | {r['token_saving']:.2f}x | {r['independent_s']:.2f} | "
                     f"{r['shared_s']:.2f} | {r['speedup']:.2f}x | {'yes' if r['auto_shares'] else 'no'} | "
                     f"{r['auto_s']:.2f} | {r['auto_vs_never']:.2f}x; {r['auto_vs_never_best']:.2f}x | "
                     f"{r['independent_tokens']} / {r['shared_tokens']} | {r['max_abs_score_diff']:.1e} | {r['runs']} |")
    lines.append("")
    markdown = "\n".join(lines)
    write_results(args.name, payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
