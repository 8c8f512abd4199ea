"""In-distribution best-of-n check: does the reference-free judge pick answers closer to the reference?

    python -m evals.bestofn_check --judge selfj=selfj-smollm2-135m --judge zero-shot=smollm2-135m-instruct \
        --num_prompts 40 --k 4

On held-out instructions with references (default: AlpacaEval's 805 instructions with the GPT-4 Turbo
outputs as references; never used for training), the policy samples k candidates per instruction. Each
judge picks one without seeing the reference; the table reports the pick's MiniLM cosine and token F1 to
the reference, beside a random pick (the mean over candidates), the longest, the shortest, and the oracle
(best candidate by that same measure). Candidates are cached under --cache_dir, so judges can be added later.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from evals.lib.common import command_line, machine_info, default_data, write_results

from selfj_rlhf.core.io import atomic_write_json
from selfj_rlhf.data.datasets import iter_records
from evals.lib.baselines import baselines, pick_quality


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--references", default=default_data("alpaca_eval"),
                        help="JSON/JSONL with `instruction` and the reference in `output` or `reference`.")
    parser.add_argument("--policy", default="smollm2-135m-instruct")
    parser.add_argument("--judge", action="append", default=[], help="NAME=SPEC")
    parser.add_argument("--num_prompts", type=int, default=40)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", default="runs/eval_cache")
    parser.add_argument("--name", default="bestofn_check")
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    from selfj_rlhf import SelfJudge
    from selfj_rlhf.core.generation import generate_candidates
    from selfj_rlhf.training.labeling import cosine_similarities, load_embedder, token_f1
    from selfj_rlhf.core.models import load_causal_lm
    from tqdm.auto import tqdm

    rows = [row for _, row in iter_records(args.references)]
    picked = sorted(random.Random(args.seed).sample(range(len(rows)), min(args.num_prompts, len(rows))))
    cache = Path(args.cache_dir) / f"bestofn-{Path(args.references).stem}-n{args.num_prompts}-k{args.k}-s{args.seed}.json"
    if cache.is_file():
        items = json.loads(cache.read_text())
    else:
        policy, tokenizer = load_causal_lm(args.policy)
        embedder = load_embedder("all-minilm-l6-v2", "cpu")
        items = []
        for index in tqdm(picked, desc=f"sample {args.k} candidates", unit="prompt"):
            row = rows[index]
            reference = row.get("reference") or row["output"]
            candidates = generate_candidates(policy, tokenizer, row["instruction"], n=args.k, seed=args.seed,
                                             prompt_id=str(index), max_new_tokens=args.max_new_tokens,
                                             temperature=args.temperature)
            texts = [c["text"] for c in candidates]
            items.append({"index": index, "instruction": row["instruction"], "candidates": texts,
                          "cosine": cosine_similarities(embedder, texts, reference),
                          "f1": [token_f1(t, reference) for t in texts]})
        atomic_write_json(cache, items, indent=None)

    table = baselines(items)
    for name, spec in (item.split("=", 1) for item in args.judge):
        score_path = Path(args.cache_dir) / f"{cache.stem}__{spec.replace('/', '_')}.json"
        if score_path.is_file():
            scores = json.loads(score_path.read_text())
        else:
            judge = SelfJudge.from_pretrained(spec)
            scores = [judge.score([i["instruction"]] * args.k, i["candidates"])
                      for i in tqdm(items, desc=f"judge {name}", unit="prompt")]
            atomic_write_json(score_path, scores, indent=None)
        table[f"judge: {name}"] = pick_quality(items, [max(range(args.k), key=lambda c: (s[c], -c)) for s in scores])
    payload = {"command": command_line(), "machine": machine_info(), "policy": args.policy, "prompts": len(items),
               "k": args.k, "max_new_tokens": args.max_new_tokens, "references": args.references, "rows": table}
    m = payload["machine"]
    markdown = "\n".join([
        f"# Best-of-{args.k} pick quality on {len(items)} held-out AlpacaEval instructions", "",
        f"Command: `{payload['command']}`  ", f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}  ",
        f"Policy {args.policy} samples {args.k} answers (temperature {args.temperature}, {args.max_new_tokens} new tokens); "
        "judges pick without the reference; the pick is measured against the GPT-4 Turbo reference.", "",
        "| pick | MiniLM cosine to reference | token F1 to reference |", "|---|---:|---:|",
        *[f"| {name} | {row['cosine']:.3f} | {row['f1']:.3f} |" for name, row in table.items()], ""])
    write_results(args.name, payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
