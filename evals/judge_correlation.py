"""How well do judges agree with GPT-4? Correlation with arena-bench grades and LLMBar pairwise accuracy.

    python -m evals.judge_correlation --judge selfj=selfj-smollm2-135m-pool --judge zero-shot=smollm2-135m-instruct \
        --with_reference selfj --with_reference zero-shot --max_questions 20 --max_pairs 100

Rows of the table: every ``--judge NAME=SPEC`` scored reference-free (and with the reference for the names
given to ``--with_reference``), plus baselines that need no judge: response length, MiniLM cosine to the
reference, and the policy's mean log-likelihood of the response (``--policy``). Metrics on the arena grades
(1-10, GPT-4 with reference): pooled Pearson / Spearman / Kendall, the mean Spearman within each answering
model, the mean Spearman among the answers to one question (what best-of-n needs), and each judge's
Spearman with length. On LLMBar: pairwise accuracy (ties count one half).

Scores are cached per (judge, mode, dataset) under ``--cache_dir``, so a killed run resumes judge by judge.
Subsampling: ``--max_questions`` arena questions (all 15 answers of each) and ``--max_pairs`` LLMBar pairs,
drawn with ``--seed``; the numbers say how many rows they rest on.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from evals.lib.common import RESULTS_DIR, command_line, machine_info, default_data, write_results

from evals.lib.metrics import arena_metrics, pairwise_accuracy
from evals.lib.score_cache import ScoreCache, judge_scores, load_arena
from selfj_rlhf.judge.directory import OTHER_MODELS, warn_if_outside_role
from selfj_rlhf.data.datasets import iter_records


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arena", default=default_data("arena_bench_v1"))
    parser.add_argument("--llmbar", default=default_data("llmbar"))
    parser.add_argument("--judge", action="append", default=[], help="NAME=SPEC (model spec or judge dir).")
    parser.add_argument("--with_reference", action="append", default=[], help="Also score NAME with the reference.")
    parser.add_argument("--policy", default="smollm2-135m-instruct", help="Model for the log-likelihood baseline.")
    parser.add_argument("--max_questions", type=int, default=20)
    parser.add_argument("--max_pairs", type=int, default=100, help="LLMBar pairs (0: skip LLMBar).")
    parser.add_argument("--max_length", type=int, default=768, help="Judge prompt cap (responses truncated).")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", default="runs/eval_cache")
    parser.add_argument("--name", default="judge_correlation", help="Result file stem under evals/results.")
    parser.add_argument("--cached_only", action="store_true",
                        help="Build the table from cached scores only; rows whose scores are missing are listed as not run.")
    return parser


def load_llmbar(path: str, max_pairs: int, seed: int) -> list[dict]:
    rows = [row for _, row in iter_records(path)]
    return random.Random(seed).sample(rows, min(max_pairs, len(rows)))


def loglik_scores(spec: str, items: list[tuple[str, str]], args) -> list[float]:
    """Mean per-token log-likelihood of each response under the policy, given its chat prompt."""
    import torch

    from selfj_rlhf.core.generation import chat_prompt_ids
    from selfj_rlhf.core.models import load_causal_lm

    model, tokenizer = load_causal_lm(spec)
    out = []
    with torch.inference_mode():
        for instruction, response in items:
            prompt = chat_prompt_ids(tokenizer, instruction)[-256:]
            answer = tokenizer.encode(response, add_special_tokens=False)[: args.max_length - len(prompt)] or [
                tokenizer.eos_token_id]
            ids = torch.tensor([prompt + answer])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
            logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(answer)[:, None])
            out.append(float(logp.mean()))
    return out


def similarity_scores(items: list[tuple[str, str]]) -> list[float]:
    from selfj_rlhf.training.labeling import cosine_similarities, load_embedder

    embedder = load_embedder("all-minilm-l6-v2", "cpu")
    return [cosine_similarities(embedder, [response], reference)[0] for response, reference in items]


def main(argv=None):
    args = make_parser().parse_args(argv)
    judges = dict(item.split("=", 1) for item in args.judge)
    for spec in judges.values():
        warn_if_outside_role(spec, OTHER_MODELS, where="judge correlation on other models' answers")
    unknown = set(args.with_reference) - set(judges)
    if unknown:
        raise SystemExit(f"--with_reference names unknown judges: {sorted(unknown)}")
    arena = load_arena(args.arena, args.max_questions, args.seed)
    llmbar = load_llmbar(args.llmbar, args.max_pairs, args.seed)
    # separate caches, so arena-only runs (--max_pairs 0) reuse the arena scores of full runs
    cache = ScoreCache(args.cache_dir, f"arena-q{args.max_questions}-s{args.seed}-L{args.max_length}", args.cached_only)
    bar_cache = ScoreCache(args.cache_dir, f"llmbar-p{args.max_pairs}-s{args.seed}-L{args.max_length}",
                           args.cached_only)
    not_run: list[str] = []
    free_items = [(r["instruction"], r["response"], None) for r in arena]
    ref_items = [(r["instruction"], r["response"], r["reference"]) for r in arena]
    bar_a = [(r["instruction"], r["response_a"], None) for r in llmbar]
    bar_b = [(r["instruction"], r["response_b"], None) for r in llmbar]

    table: dict[str, dict] = {}
    for name, spec in judges.items():
        key = spec.replace("/", "_")
        free = cache.get(f"free-{key}", lambda: judge_scores(spec, free_items, args))
        a = bar_cache.get(f"llmbar-a-{key}", lambda: judge_scores(spec, bar_a, args)) if llmbar else None
        b = bar_cache.get(f"llmbar-b-{key}", lambda: judge_scores(spec, bar_b, args)) if llmbar else None
        if free is None:
            not_run.append(f"{name} (reference-free)")
        else:
            table[f"{name} (reference-free)"] = {**arena_metrics(arena, free), "spec": spec, "kind": "judge",
                                                 "llmbar_accuracy": None if a is None or b is None
                                                 else pairwise_accuracy(a, b, llmbar)}
        if name in args.with_reference:
            ref = cache.get(f"ref-{key}", lambda: judge_scores(spec, ref_items, args))
            if ref is None:
                not_run.append(f"{name} (with reference)")
            else:
                table[f"{name} (with reference)"] = {**arena_metrics(arena, ref), "llmbar_accuracy": None,
                                                     "spec": spec, "kind": "judge, sees the reference"}
    lengths = [float(len(r["response"])) for r in arena]
    table["length (characters)"] = {**arena_metrics(arena, lengths), "kind": "baseline",
                                    "llmbar_accuracy": pairwise_accuracy([len(r["response_a"]) for r in llmbar],
                                                                         [len(r["response_b"]) for r in llmbar], llmbar)
                                    if llmbar else None}
    policy_key = args.policy.replace("/", "_")
    sims = cache.get("arena-similarity", lambda: similarity_scores([(r["response"], r["reference"]) for r in arena]))
    if sims is None:
        not_run.append("MiniLM cosine to reference")
    else:
        table["MiniLM cosine to reference"] = {**arena_metrics(arena, sims), "kind": "baseline, sees the reference",
                                               "llmbar_accuracy": None}
    ll = cache.get(f"arena-loglik-{policy_key}",
                   lambda: loglik_scores(args.policy, [(r["instruction"], r["response"]) for r in arena], args))
    ll_a = bar_cache.get(f"llmbar-a-loglik-{policy_key}", lambda: loglik_scores(
        args.policy, [(r["instruction"], r["response_a"]) for r in llmbar], args)) if llmbar else None
    ll_b = bar_cache.get(f"llmbar-b-loglik-{policy_key}", lambda: loglik_scores(
        args.policy, [(r["instruction"], r["response_b"]) for r in llmbar], args)) if llmbar else None
    if ll is None:
        not_run.append("policy log-likelihood")
    else:
        table["policy log-likelihood"] = {**arena_metrics(arena, ll), "kind": "baseline",
                                          "llmbar_accuracy": None if ll_a is None or ll_b is None
                                          else pairwise_accuracy(ll_a, ll_b, llmbar)}

    payload = {"command": command_line(), "machine": machine_info(), "arena_rows": len(arena),
               "arena_questions": args.max_questions, "llmbar_pairs": len(llmbar), "seed": args.seed,
               "max_length": args.max_length, "rows": table, "not_run": not_run}
    markdown = render_markdown(payload)
    write_results(args.name, payload, markdown)
    plot(table, RESULTS_DIR / f"{args.name}.png")
    print(markdown)


def render_markdown(payload: dict) -> str:
    def fmt(value):
        return "n/a" if value is None or value != value else f"{value:+.3f}"

    m = payload["machine"]
    lines = [f"# Judge agreement with GPT-4 ({payload['arena_rows']} arena-bench-v1 dev rows from "
             f"{payload['arena_questions']} questions; {payload['llmbar_pairs']} LLMBar pairs)", "",
             f"Command: `{payload['command']}`  ", f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}  ",
             f"Subsampled for the CPU (seed {payload['seed']}); judge prompts capped at {payload['max_length']} tokens.", "",
             "| row | kind | Pearson | Spearman | Kendall | Spearman within model | Spearman within question "
             "| Spearman with length | LLMBar accuracy |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in payload["rows"].items():
        acc = row.get("llmbar_accuracy")
        lines.append(f"| {name} | {row['kind']} | {fmt(row['pearson'])} | {fmt(row['spearman'])} | {fmt(row['kendall'])} "
                     f"| {fmt(row['spearman_within_model'])} | {fmt(row['spearman_within_question'])} "
                     f"| {fmt(row['spearman_with_length'])} | {'n/a' if acc is None else f'{acc:.3f}'} |")
    if payload.get("not_run"):
        lines += ["", f"Not run in this table (scores not computed yet): {', '.join(payload['not_run'])}."]
    return "\n".join(lines) + "\n"


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.5))
    ax.barh(names, [table[n]["spearman"] for n in names], color="tab:blue", label="Spearman (pooled)")
    ax.barh(names, [table[n]["spearman_within_question"] for n in names], height=0.35, color="tab:orange",
            label="Spearman within question")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("rank correlation with GPT-4 grades")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
