"""Does the judge improve what the policy outputs, on signals the judge never sees?

    python -m evals.rl_loop_check prompts --heldout_per_source 22 --output_dir runs/improvement
    python -m evals.improvement sample                  # 16 samples per held-out prompt (resumable)
    python -m evals.improvement bestofn                 # judge the samples, picks at n = 1, 4, 8, 16

A second held-out set, drawn after the judge's training prompts, with every earlier prompt excluded, is sampled
the same way and measured alone or pooled with the first (``--samples`` takes several sample dirs):

    python -m evals.rl_loop_check prompts --train_per_source 0 --heldout_per_source 16 \
        --exclude runs/improvement/prompts_train.jsonl runs/improvement/prompts_heldout.jsonl \
        runs/improvement/more/prompts_train.jsonl --output_dir runs/improvement/heldout2
    python -m evals.improvement sample --prompts runs/improvement/heldout2/prompts_heldout.jsonl \
        --output_dir runs/improvement/heldout2/samples
    python -m evals.improvement bestofn --samples runs/improvement/samples runs/improvement/heldout2/samples

The judge trained on the policy's own samples (``selfj-smollm2-135m-v5``) samples the *training* prompts the same
way, writes them as a response pool for the SELF-J teacher, and is trained on its labels (evals/own_samples.py;
the commands are in the judge's PROVENANCE.md).

`sample` draws n answers per held-out prompt (FLASK, GPTeacher codegen, GSM8K; never trained on) from the
policy at the best-of-n recipe's sampling settings. `bestofn` scores every sample with the judge (reference-free)
and compares its pick at n = 1, 4, 8 and 16 (the first n samples of each prompt) with random (the mean over the
n candidates), the longest and the shortest answer in tokens, and the oracle by cosine, on the MiniLM cosine and
the token F1 to the reference answer and, for GSM8K, exact match of the final number. Every difference to random
and to longest gets a 95 % bootstrap interval over prompts.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from evals.lib.common import command_line, judges_measured, machine_info, write_results

from selfj_rlhf.core.io import ShardWriter, read_shards
from evals.lib.metrics import bootstrap_ci, final_number, reference_answer

RUN_DIR = Path("runs/improvement")
PICK_SIZES = (1, 4, 8, 16)
SIGNALS = ("cosine", "f1", "gsm8k_exact")


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sample = sub.add_parser("sample", help="Sample n answers per held-out prompt (resumable).")
    sample.add_argument("--prompts", default=str(RUN_DIR / "prompts_heldout.jsonl"))
    sample.add_argument("--policy", default="smollm2-135m-instruct")
    sample.add_argument("--n", type=int, default=16)
    sample.add_argument("--temperature", type=float, default=0.7)
    sample.add_argument("--top_p", type=float, default=0.95)
    sample.add_argument("--max_new_tokens", type=int, default=256)
    sample.add_argument("--seed", type=int, default=42)
    sample.add_argument("--output_dir", default=str(RUN_DIR / "samples"))
    pool = sub.add_parser("pool", help="Write samples as a response pool (one row per answer) for recipes/label.py.")
    pool.add_argument("--samples", required=True)
    pool.add_argument("--output", required=True)
    bestofn = sub.add_parser("bestofn", help="Judge the samples; picks at n = 1, 4, 8, 16 on independent signals.")
    bestofn.add_argument("--samples", nargs="+", default=[str(RUN_DIR / "samples")],
                         help="Output dirs of `sample`; several are pooled (each prompt in one of them only).")
    bestofn.add_argument("--judge", default="selfj-smollm2-135m")
    bestofn.add_argument("--batch_size", type=int, default=8)
    bestofn.add_argument("--bootstrap", type=int, default=2000)
    bestofn.add_argument("--name", default="improvement_best_of_n")
    return parser


def sample(args) -> None:
    """n samples per prompt with the library's sampling stage (recipes/sample.py); a rerun skips finished prompts."""
    from selfj_rlhf.training.sampling import SampleConfig, run_sampling

    summary = run_sampling(SampleConfig(policy=args.policy, dataset=args.prompts, n=args.n,
                                        temperature=args.temperature, top_p=args.top_p,
                                        max_new_tokens=args.max_new_tokens, seed=args.seed,
                                        output_dir=args.output_dir))
    print(f"{summary['prompts']} prompts sampled in {args.output_dir}")


def read_samples(directory: str) -> dict[str, dict]:
    """The sampled prompts of a ``sample`` output dir, by id (finished and partial runs alike)."""
    return read_shards(Path(directory) / "shards")


def write_pool(args) -> None:
    """One pool row per sample (``selfj_rlhf.training.sampling.pool_rows``): the prompt is the answer group and the
    policy the answering model."""
    from selfj_rlhf.core.io import atomic_write_jsonl
    from selfj_rlhf.training.sampling import pool_rows

    prompts = sorted(read_samples(args.samples).values(), key=lambda p: p["id"])
    rows = pool_rows(prompts)
    atomic_write_jsonl(args.output, rows)
    print(f"{len(rows)} answers to {len(prompts)} prompts written to {args.output}")


def judge_scores(args, prompts: list[dict]) -> dict[str, dict]:
    """Per prompt: every candidate's raw judge score and judge-token length, cached per judge identity (resumable)."""
    from tqdm.auto import tqdm

    from selfj_rlhf import SelfJudge
    from selfj_rlhf.judge.directory import judge_identity

    identity = judge_identity(args.judge)
    out = RUN_DIR / f"scores-{identity['name'].replace('/', '_')}-{identity['hash']}"
    done = read_shards(out) if out.is_dir() else {}
    todo = [p for p in prompts if p["id"] not in done]
    if todo:
        judge = SelfJudge.from_pretrained(args.judge, length_control=False)
        with ShardWriter(out / "part-000.jsonl") as writer:
            for prompt in tqdm(todo, desc="judge", unit="prompt"):
                texts = [c["text"] for c in prompt["candidates"]]
                details = judge.score_details([prompt["instruction"]] * len(texts), texts, batch_size=args.batch_size)
                writer.write({"id": prompt["id"], "raw": [d.raw_score for d in details],
                              "tokens": [d.response_tokens for d in details]})
        done = read_shards(out)
    return done


def prompt_signals(prompts: list[dict]) -> dict[str, dict]:
    """Per prompt and candidate: MiniLM cosine and token F1 to the reference, GSM8K exact match of the final number."""
    from selfj_rlhf.training.labeling import cosine_similarities, load_embedder, token_f1

    embedder = load_embedder("all-minilm-l6-v2", "cpu")
    signals = {}
    for prompt in prompts:
        texts = [c["text"] for c in prompt["candidates"]]
        row = {"cosine": cosine_similarities(embedder, texts, prompt["reference"]),
               "f1": [token_f1(t, prompt["reference"]) for t in texts]}
        if prompt["id"].startswith("gsm8k:"):
            answer = reference_answer(prompt["reference"])
            row["gsm8k_exact"] = [float(answer is not None and final_number(t) == answer) for t in texts]
        signals[prompt["id"]] = row
    return signals


def pickers(prompt: dict, scores: dict, length_fit) -> dict[str, np.ndarray | None]:
    """Each picker's key over a prompt's candidates (the pick is the first maximum); None: the random pick. The
    judge's score map is increasing, so the raw score (and its length-controlled value) picks as the score does."""
    raw = np.asarray(scores["raw"], dtype=np.float64)
    controlled = length_fit.apply(raw, scores["tokens"]) if length_fit is not None else raw
    lengths = np.asarray([c["num_tokens"] for c in prompt["candidates"]], dtype=np.float64)
    return {"random (mean over candidates)": None, "judge, length control off": raw,
            "judge, length control on": controlled, "longest (tokens)": lengths, "shortest (tokens)": -lengths}


def pick_values(values: list[float], key: np.ndarray | None, n: int) -> float:
    """The signal of the pick among the first n candidates (the mean over them for the random pick)."""
    if key is None:
        return float(np.mean(values[:n]))
    return float(values[int(np.argmax(key[:n]))])


def bestofn(args) -> None:
    from selfj_rlhf.judge.self_judge import LENGTH_CONTROL_DEFAULT
    from selfj_rlhf.judge.head import LengthControl
    from selfj_rlhf.judge.directory import resolve_judge_dir

    shards = [read_samples(directory) for directory in args.samples]
    if any(set(a) & set(b) for i, a in enumerate(shards) for b in shards[i + 1:]):
        raise SystemExit(f"--samples {' '.join(args.samples)}: a prompt is in more than one of them")
    prompts = sorted((row for rows in shards for row in rows.values()), key=lambda p: p["id"])
    scores = judge_scores(args, prompts)
    signals = prompt_signals(prompts)
    directory = resolve_judge_dir(args.judge)
    config = {} if directory is None else json.loads((directory / "selfj_config.json").read_text())
    length_fit = LengthControl.from_dict(config["length_control"]) if config.get("length_control") else None

    per_prompt: dict[tuple[str, str, int], list[float]] = {}
    for prompt in prompts:
        keys = pickers(prompt, scores[prompt["id"]], length_fit)
        cosine_key = np.asarray(signals[prompt["id"]]["cosine"])
        keys["oracle by cosine"] = cosine_key
        for signal, values in signals[prompt["id"]].items():
            for n in PICK_SIZES:
                for name, key in keys.items():
                    per_prompt.setdefault((signal, name, n), []).append(pick_values(values, key, n))
    table = {}
    for (signal, name, n), values in per_prompt.items():
        entry = {"mean": statistics.fmean(values), "prompts": len(values)}
        for base in ("random (mean over candidates)", "longest (tokens)"):
            if name != base:
                diff = np.asarray(values) - np.asarray(per_prompt[(signal, base, n)])
                entry[f"vs {base.split(' ')[0]}"] = {"diff": float(diff.mean()), "ci95": bootstrap_ci(diff, args.bootstrap)}
        table.setdefault(signal, {}).setdefault(str(n), {})[name] = entry
    first = prompts[0]
    payload = {"command": command_line(), "machine": machine_info(),
               "judges_measured": judges_measured({"judge": args.judge}), "samples": args.samples,
               "policy": first["policy"],
               "temperature": first["temperature"], "prompts": len(prompts),
               "sources": {src: sum(p["id"].startswith(src + ":") for p in prompts)
                           for src in ("flask", "gpteacher-codegen", "gsm8k")},
               "samples_per_prompt": len(first["candidates"]), "length_control_default": LENGTH_CONTROL_DEFAULT,
               "mean_tokens": statistics.fmean(c["num_tokens"] for p in prompts for c in p["candidates"]),
               "table": table}
    write_results(args.name, payload, render(payload))
    print(render(payload))


def _ci(entry: dict | None) -> str:
    if entry is None:
        return "-"
    low, high = entry["ci95"]
    mark = " *" if low > 0 or high < 0 else ""
    return f"{entry['diff']:+.3f} [{low:+.3f}, {high:+.3f}]{mark}"


def render(p: dict) -> str:
    m = p["machine"]
    judge = p["judges_measured"][0]
    lines = [f"# Best-of-n on {p['prompts']} held-out prompts: does the judge's pick improve signals it never sees?", "",
             f"Command: `{p['command']}`  ", f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}  ",
             f"Judge: `{judge['name']}` ({judge['hash']}), reference-free. Policy {p['policy']} samples "
             f"{p['samples_per_prompt']} answers per prompt at temperature {p['temperature']} (mean "
             f"{p['mean_tokens']:.0f} tokens); prompts: {p['sources']}. The pick among the first n samples is measured "
             "against the reference answer, which the judge never sees. Random: the mean over the n candidates. "
             "Brackets: 95 % bootstrap CI over prompts; * marks a CI that excludes 0. The library default is length "
             f"control {'on' if p['length_control_default'] else 'off'}.", ""]
    names = {"cosine": "MiniLM cosine to the reference", "f1": "token F1 to the reference",
             "gsm8k_exact": "GSM8K exact match of the final number"}
    for signal, by_n in p["table"].items():
        count = next(iter(next(iter(by_n.values())).values()))["prompts"]
        lines += [f"## {names[signal]} ({count} prompts)", "",
                  "| n | pick | mean | vs random | vs longest |", "|---:|---|---:|---:|---:|"]
        for n, rows in by_n.items():
            for name, entry in rows.items():
                lines.append(f"| {n} | {name} | {entry['mean']:.3f} | {_ci(entry.get('vs random'))} | "
                             f"{_ci(entry.get('vs longest'))} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    args = make_parser().parse_args(argv)
    {"sample": sample, "pool": write_pool, "bestofn": bestofn}[args.command](args)


if __name__ == "__main__":
    main()
