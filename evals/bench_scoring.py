"""Scoring throughput: SelfJudge vs a bare forward vs generate-based scoring, on the same items.

    python -m evals.bench_scoring --json evals/results/bench_scoring.json

Items are (bundled instruction, the policy's own greedy answer). The three methods run in one process
over identical left-padded batches:
  * ``selfjudge``: ``SelfJudge.score`` (one forward, logits for the last position only);
  * ``bare_forward``: ``model(**batch)`` on the same batches (full logits: what a naive caller pays);
    ``bare_forward_last_logit`` is the same with ``logits_to_keep=1``, the wrapper's true floor;
  * ``generate_scoring``: the released SELF-J code's way, ``generate`` up to 10 tokens with 2 beams and
    read the digit probabilities of the first generated token.
"""

from __future__ import annotations

import argparse

import torch

from evals.lib.common import command_line, machine_info, write_results

from selfj_rlhf import SelfJudge
from selfj_rlhf.core.generation import generate_candidates
from evals.lib.timing import interleaved_best_times
from selfj_rlhf.data.prompts import load_prompts


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="Judge model spec.")
    parser.add_argument("--dataset", default=None, help="Prompt file (default: the bundled prompts).")
    parser.add_argument("--num_items", type=int, default=24)
    parser.add_argument("--answer_tokens", type=int, default=64, help="Greedy answer length of the scored items.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="Timed repeats of each method (best is reported).")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", default=None, help="Also write the JSON result here.")
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    judge = SelfJudge.from_pretrained(args.model, dtype=args.dtype)
    model, tokenizer = judge.model, judge.tokenizer
    prompts = load_prompts(args.dataset, max_prompts=args.num_items)
    answers = [generate_candidates(model, tokenizer, p.instruction, n=1, seed=0, prompt_id=p.id,
                                   max_new_tokens=args.answer_tokens, temperature=0)[0]["text"] for p in prompts]
    instructions = [p.instruction for p in prompts]
    encoded = [judge.encode(i, a).input_ids for i, a in zip(instructions, answers)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    batches = [judge._collate([encoded[i] for i in order[s:s + args.batch_size]])
               for s in range(0, len(order), args.batch_size)]
    tokens = int(sum(b["attention_mask"].sum() for b in batches))
    padded_tokens = int(sum(b["attention_mask"].numel() for b in batches))
    digit_ids = torch.tensor(judge.digit_ids)

    def run_selfjudge():
        judge.score(instructions, answers, batch_size=args.batch_size)

    def run_bare(last_only: bool):
        with torch.inference_mode():
            for batch in batches:
                extra = {"logits_to_keep": 1} if last_only else {}
                model(**batch, use_cache=False, **extra)

    def run_generate():
        with torch.inference_mode():
            for batch in batches:
                out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     max_new_tokens=10, num_beams=2, do_sample=False, output_scores=True,
                                     return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
                torch.softmax(out.scores[0][:, digit_ids], dim=-1)

    def run_wrapper_overhead():  # what SelfJudge adds around the forward: tokenising and collating
        encoded_now = [judge.encode(i, a).input_ids for i, a in zip(instructions, answers)]
        [judge._collate([encoded_now[i] for i in order[s:s + args.batch_size]])
         for s in range(0, len(order), args.batch_size)]

    run_selfjudge()  # warm-up (allocator, kernels)
    methods = {"selfjudge_s": run_selfjudge, "bare_forward_s": lambda: run_bare(False),
               "bare_forward_last_logit_s": lambda: run_bare(True), "generate_scoring_s": run_generate,
               "wrapper_overhead_s": run_wrapper_overhead}
    repeats = {name: args.repeats for name in methods} | {"generate_scoring_s": max(1, args.repeats // 2)}
    timings = interleaved_best_times(methods, repeats)
    payload = {
        "command": command_line(), "machine": machine_info(), "model": args.model, "items": len(prompts),
        "batch_size": args.batch_size, "tokens": tokens, "padded_tokens": padded_tokens, **timings,
        "selfjudge_tokens_per_s": tokens / timings["selfjudge_s"],
        "bare_forward_tokens_per_s": tokens / timings["bare_forward_s"],
        "generate_scoring_tokens_per_s": tokens / timings["generate_scoring_s"],
        "ratio_selfjudge_over_bare_forward": timings["selfjudge_s"] / timings["bare_forward_s"],
        "ratio_selfjudge_over_bare_forward_last_logit": timings["selfjudge_s"] / timings["bare_forward_last_logit_s"],
        "speedup_vs_generate_scoring": timings["generate_scoring_s"] / timings["selfjudge_s"],
    }
    m = payload["machine"]
    markdown = (
        "# Judge scoring throughput\n\n"
        f"Command: `{payload['command']}`  \nMachine: {m['cpu']} ({m['cpu_count']} cores, torch {m['torch']}, "
        f"{m['torch_threads']} threads, GPU: {m['cuda']}), {m['date']}  \n"
        f"Items: {payload['items']} bundled prompts with the model's own {args.answer_tokens}-token greedy answers, "
        f"{tokens} real tokens ({padded_tokens} padded), batch size {args.batch_size}, best of {args.repeats}.\n\n"
        "| method | seconds | real tokens/s | SelfJudge time ratio |\n|---|---:|---:|---:|\n"
        f"| SelfJudge.score | {timings['selfjudge_s']:.2f} | {payload['selfjudge_tokens_per_s']:.0f} | 1.00 |\n"
        f"| bare `model(**batch)` (full logits) | {timings['bare_forward_s']:.2f} | "
        f"{payload['bare_forward_tokens_per_s']:.0f} | {payload['ratio_selfjudge_over_bare_forward']:.2f} |\n"
        f"| bare forward, `logits_to_keep=1` | {timings['bare_forward_last_logit_s']:.2f} | "
        f"{tokens / timings['bare_forward_last_logit_s']:.0f} | "
        f"{payload['ratio_selfjudge_over_bare_forward_last_logit']:.2f} |\n"
        f"| generate-based (10 tokens, 2 beams) | {timings['generate_scoring_s']:.2f} | "
        f"{payload['generate_scoring_tokens_per_s']:.0f} | {1 / payload['speedup_vs_generate_scoring']:.2f} |\n\n"
        f"SelfJudge is {payload['speedup_vs_generate_scoring']:.1f}x faster than generate-based scoring and takes "
        f"{payload['ratio_selfjudge_over_bare_forward']:.2f}x the time of a bare `model(**batch)`; against the bare "
        f"last-logit forward it is {payload['ratio_selfjudge_over_bare_forward_last_logit']:.2f}x. What the wrapper adds "
        f"around the forward (tokenising and collating all items) measured {timings['wrapper_overhead_s'] * 1000:.0f} ms "
        "in total; differences beyond that are run-to-run noise of the shared machine (methods are interleaved, best "
        "of the repeats).\n"
    )
    write_results("bench_scoring", payload, markdown, args.json)
    print(markdown)


if __name__ == "__main__":
    main()
