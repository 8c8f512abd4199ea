"""AlpacaEval for the policies the loops make: the base policy, its best-of-16 and the rejection-sampling and DPO
policies of evals/rl_loop_check.py, on the first AlpacaEval instructions against the AlpacaEval 2 reference
outputs (GPT-4 Turbo). Each policy's outputs come from ``selfj alpaca-eval generate`` (one thread each when two
run side by side; ``SELFJ_DATA_DIR`` set, so the instructions and references are its files):

    selfj alpaca-eval generate --policy smollm2-135m-instruct --n 1 --max_prompts 100 --max_new_tokens 256 \
        --output_dir runs/ae100/base
    selfj alpaca-eval generate --policy smollm2-135m-instruct --n 16 --max_prompts 100 --max_new_tokens 256 \
        --output_dir runs/ae100/best_of_16
    selfj alpaca-eval generate --policy runs/rl_check/rejection_sampling/round-01/policy --judge selfj-smollm2-135m \
        --n 1 --max_prompts 100 --max_new_tokens 256 --output_dir runs/ae100/rs_round2
    selfj alpaca-eval generate --policy runs/rl_check/dpo/round-01/policy --judge selfj-smollm2-135m \
        --n 1 --max_prompts 100 --max_new_tokens 256 --output_dir runs/ae100/dpo_round2
    python -m evals.alpaca_eval_policies --run base=runs/ae100/base --run best_of_16=runs/ae100/best_of_16 \
        --run rs_round2=runs/ae100/rs_round2 --run dpo_round2=runs/ae100/dpo_round2

Every run is annotated with ``selfj alpaca-eval evaluate``'s code (cached per run and annotator). Reported: the
win rate against the reference with its standard error, the length-controlled win rate (alpaca_eval's GLM; offline
its minimal form, without instruction difficulty, see ``selfj_rlhf.rlhf.alpacaeval``), the change of each policy's
per-instruction win probability from the first run's with a 95 % bootstrap CI over instructions, the judge's
mean score of the outputs (the score best-of-16 maximised) and the mean length in characters and tokens.

The offline annotators are not independent of these policies: ``local:smollm2-135m-instruct`` is the base policy
model itself (and the model the judge is built on), ``selfj:`` is a SELF-J judge. The figures check the loops for
gross failures; a claim of improvement needs the official annotator (``weighted_alpaca_eval_gpt4_turbo``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from evals.lib.common import command_line, data_dir, judges_measured, machine_info, write_results
from evals.lib.metrics import bootstrap_ci

from selfj_rlhf.data.datasets import iter_records

REFERENCE_FILE = "alpaca_eval/gpt4_1106_preview_outputs.json"  # AlpacaEval 2's reference outputs


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True,
                        help="NAME=DIR, a `selfj alpaca-eval generate` output directory (the first is the baseline "
                             "of the paired differences)")
    parser.add_argument("--annotator", action="append", default=None,
                        help="`selfj alpaca-eval evaluate` annotator, repeatable (default: local:smollm2-135m-instruct)")
    parser.add_argument("--reference_outputs", default=None,
                        help=f"Reference outputs (default: $SELFJ_DATA_DIR/{REFERENCE_FILE}, else preset:alpaca_eval)")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--name", default="alpaca_eval_policies")
    return parser


def independence(annotator: str, policies: list[str]) -> str | None:
    """Why an annotator is not independent of the evaluated policies, or None when it is."""
    from selfj_rlhf.rlhf.alpacaeval import LOCAL_PREFIX, SELFJ_PREFIX

    if annotator.startswith(SELFJ_PREFIX):
        return "a SELF-J judge, built on the same model as the judge the loops optimised"
    model = annotator.removeprefix(LOCAL_PREFIX)
    if annotator.startswith(LOCAL_PREFIX) and model in policies:
        return f"the model {model} itself, the base of every evaluated policy and of the judge"
    return None


def annotate(run_dir: Path, name: str, annotator: str, references: str, instances: int) -> tuple[dict, list[dict]]:
    """(result row, annotations) of one run, from its cache when the annotator, references and count match."""
    from selfj_rlhf.rlhf.alpacaeval import EvaluateConfig, annotator_dir_name, evaluate_outputs

    eval_dir = run_dir / f"eval-{annotator_dir_name(annotator)}"
    cached = eval_dir / "result.json"
    if cached.is_file():
        result = json.loads(cached.read_text())
        if (result["annotator"], result["reference_outputs"], result["instances"], result["name"]) \
                == (annotator, references, instances, name):
            return result, json.loads((eval_dir / "annotations.json").read_text())
    result = evaluate_outputs(EvaluateConfig(model_outputs=str(run_dir / "model_outputs.json"),
                                             reference_outputs=references, annotator=annotator, name=name,
                                             output_dir=str(eval_dir)))
    return result, json.loads((eval_dir / "annotations.json").read_text())


def run_summary(run_dir: Path) -> dict:
    """What generate recorded: its settings, and per instruction the chosen output's judge score and tokens."""
    settings = json.loads((run_dir / "run_config.json").read_text())
    chosen = {}
    for shard in sorted((run_dir / "shards").glob("*.jsonl")):
        for _, row in iter_records(shard):
            pick = row["candidates"][row["chosen"]]
            chosen[row["instruction"]] = {"score": row["chosen_score"], "tokens": pick["num_tokens"],
                                          "at_cap": not pick["finished"]}
    return {"settings": settings, "chosen": chosen}


def main(argv=None):
    args = make_parser().parse_args(argv)
    annotators = args.annotator or ["local:smollm2-135m-instruct"]
    root = data_dir()
    references = args.reference_outputs or (str(root / REFERENCE_FILE) if root else "preset:alpaca_eval")
    runs = {}
    for item in args.run:
        name, directory = item.split("=", 1)
        runs[name] = {"dir": Path(directory), **run_summary(Path(directory))}
    outputs = {name: json.loads((run["dir"] / "model_outputs.json").read_text()) for name, run in runs.items()}
    instructions = [o["instruction"] for o in next(iter(outputs.values()))]
    for name, rows in outputs.items():
        if [o["instruction"] for o in rows] != instructions:
            raise SystemExit(f"run {name} answered other instructions than {next(iter(runs))}: compare like with like")
    policies = [run["settings"]["policy"] for run in runs.values()]
    baseline = next(iter(runs))
    rows = {}
    for name, run in runs.items():
        settings, chosen = run["settings"], run["chosen"]
        rows[name] = {"policy": settings["policy"], "n": settings["n"], "temperature": settings["temperature"],
                      "max_new_tokens": settings["max_new_tokens"], "length_control": settings["length_control"],
                      "judge_score": statistics.fmean(chosen[i]["score"] for i in instructions),
                      "avg_chars": statistics.fmean(len(o["output"]) for o in outputs[name]),
                      "avg_tokens": statistics.fmean(chosen[i]["tokens"] for i in instructions),
                      "at_token_cap": sum(chosen[i]["at_cap"] for i in instructions), "annotators": {}}
    for annotator in annotators:
        wins = {}
        for name, run in runs.items():
            result, annotations = annotate(run["dir"], name, annotator, references, len(instructions))
            by_instruction = {a["instruction"]: float(a["preference"]) - 1 for a in annotations}
            wins[name] = np.array([by_instruction[i] for i in instructions])
            rows[name]["annotators"][annotator] = {
                key: result.get(key) for key in ("win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws",
                                                 "n_total", "length_controlled_winrate", "lc_standard_error",
                                                 "lc_glm", "lc_length_weight", "note")}
        for name in runs:
            if name != baseline:  # paired over instructions: the same references and annotator for every run
                diff = wins[name] - wins[baseline]
                rows[name]["annotators"][annotator]["win_probability_vs_baseline"] = {
                    "diff": float(diff.mean() * 100), "ci95": [100 * x for x in bootstrap_ci(diff, args.bootstrap)],
                    # near 1: the annotator's verdict follows the instruction (and output order), not the output
                    "pearson_per_instruction": (float(np.corrcoef(wins[name], wins[baseline])[0, 1])
                                                if wins[name].std() > 0 and wins[baseline].std() > 0 else None)}
    judge_specs = {f"{name}: generate's judge": run["settings"]["judge"] for name, run in runs.items()
                   if run["settings"].get("judge")}
    payload = {"command": command_line(), "machine": machine_info(), "reference_outputs": references,
               "instances": len(instructions), "judges_measured": judges_measured(judge_specs),
               "annotators": {a: {"independent": why is None, "why_not": why}
                              for a, why in ((a, independence(a, policies)) for a in annotators)},
               "rows": rows}
    markdown = render(payload, baseline)
    write_results(args.name, payload, markdown)
    print(markdown)


def render(payload: dict, baseline: str) -> str:
    m = payload["machine"]
    judges = ", ".join(sorted({f"`{j['name']}`" for j in payload["judges_measured"]}))
    lines = [f"# AlpacaEval of the loops' policies: {payload['instances']} instructions", "",
             f"Command: `{payload['command']}` (outputs: the `selfj alpaca-eval generate` commands in "
             "`evals/alpaca_eval_policies.py`)  ",
             f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}  ",
             f"References: AlpacaEval 2's GPT-4 Turbo outputs. Judge scores: {judges} (best-of-16 picks by it). "
             "Win rates in %; brackets: change of the per-instruction win probability from "
             f"{baseline}, 95 % bootstrap CI over instructions (* excludes 0); r: Pearson correlation of the "
             f"per-instruction win probabilities with {baseline}'s (near 1: the verdict follows the instruction, "
             "and the output order, rather than the output).", ""]
    for annotator, info in payload["annotators"].items():
        lines += [f"## Annotator `{annotator}`" + ("" if info["independent"] else ": **not independent**"), ""]
        if not info["independent"]:
            lines += [f"The annotator is {info['why_not']}.", ""]
        lines += ["| policy | decoding | win rate | LC win rate | vs " + baseline + " | r with " + baseline +
                  " | judge score (0-9) | avg chars | avg tokens | at token cap |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        notes = set()
        for name, row in payload["rows"].items():
            a = row["annotators"][annotator]
            decoding = "greedy" if row["n"] == 1 else f"best of {row['n']} at T={row['temperature']}"
            lc = "n/a" if a["length_controlled_winrate"] is None else f"{a['length_controlled_winrate']:.1f}"
            change, correlation = a.get("win_probability_vs_baseline"), "-"
            if change:
                low, high = change["ci95"]
                correlation = "n/a" if change["pearson_per_instruction"] is None else \
                    f"{change['pearson_per_instruction']:.2f}"
                change = f"{change['diff']:+.1f} [{low:+.1f}, {high:+.1f}]{' *' if low > 0 or high < 0 else ''}"
            lines.append(f"| {name} | {decoding} | {a['win_rate']:.1f} ± {a['standard_error']:.1f} | {lc} | "
                         f"{change or '-'} | {correlation} | {row['judge_score']:.2f} | {row['avg_chars']:.0f} | "
                         f"{row['avg_tokens']:.0f} | {row['at_token_cap']} |")
            if a.get("note"):  # evaluate's note names the offline LC GLM when it was used
                notes.add(a["note"])
        weights = {name: row["annotators"][annotator].get("lc_length_weight") for name, row in payload["rows"].items()}
        if all(w is not None for w in weights.values()):
            notes.add("fitted length weight (positive: the annotator prefers the longer output): "
                      + ", ".join(f"{name} {w:+.2f}" for name, w in weights.items()))
        lines += [""] + [f"- {note}" for note in sorted(notes)] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
