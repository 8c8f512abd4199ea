"""Rank models by the judge's mean score of their answers; compare with the AlpacaEval 2 leaderboard.

    # AlpacaEval's public outputs (a checkout of the alpaca_eval repo's results/ folder, or any local copy):
    python -m evals.model_ranking --judge selfj=selfj-smollm2-135m-pool --alpaca_results path/to/alpaca_eval/results \
        --max_models 20 --max_instructions 50
    # Offline here: the 15 models answering arena-bench (the models the AlpacaEval 2 leaderboard also lists):
    python -m evals.model_ranking --judge selfj=selfj-smollm2-135m-pool --arena_questions 30

Every model's score is the judge's mean reference-free score over the same instructions. Reported: Spearman
and Kendall of that ranking against the AlpacaEval 2 leaderboard (``weighted_alpaca_eval_gpt4_turbo``,
shipped inside the alpaca_eval package; LC win rate and raw win rate) and, for arena-bench, against each
model's mean GPT-4 grade on the same questions; beside the same correlations for mean answer length.
Arena model names are mapped to leaderboard names by ``ARENA_TO_LEADERBOARD`` (approximate for versions
the leaderboard lists under a later snapshot; unmapped models are left out of the leaderboard columns).
Subsampling is stated in the results.
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

from evals.lib.common import RESULTS_DIR, command_line, machine_info, default_data, write_results
from evals.lib.score_cache import ScoreCache, judge_scores, load_arena
from selfj_rlhf.judge.directory import OTHER_MODELS, warn_if_outside_role

LEADERBOARD = "leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
ARENA_TO_LEADERBOARD = {
    "gpt-4-1106-preview": "gpt4_1106_preview", "gpt-4-0314": "gpt4_0314", "gpt-3.5-turbo-1106": "gpt-3.5-turbo-1106",
    "gpt-3.5-turbo": "gpt-3.5-turbo-0613", "claude-2.1": "claude-2.1", "claude-1": "claude",
    "claude-instant-1": "claude-instant-1.2", "Llama-2-70b-chat": "llama-2-70b-chat-hf",
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "Mixtral-8x7B-Instruct-v0.1",
    "mistralai/Mistral-7B-Instruct-v0.1": "Mistral-7B-Instruct-v0.1", "Starling-LM-7B-alpha": "Starling-LM-7B-alpha",
    "vicuna-33b-v1.3": "vicuna-33b-v1.3", "openchat_3.5": "openchat-3.5", "palm-2-chat-bison-001": "palm-2-chat-bison-001",
}


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", action="append", default=[], help="NAME=SPEC")
    parser.add_argument("--alpaca_results", default=None, help="Folder of <model>/model_outputs.json (AlpacaEval results).")
    parser.add_argument("--max_models", type=int, default=20)
    parser.add_argument("--max_instructions", type=int, default=50)
    parser.add_argument("--arena", default=default_data("arena_bench_v1"))
    parser.add_argument("--arena_questions", type=int, default=30)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", default="runs/eval_cache")
    parser.add_argument("--name", default="model_ranking")
    return parser


def leaderboard() -> dict[str, dict]:
    import csv

    import alpaca_eval

    path = Path(alpaca_eval.__file__).parent / LEADERBOARD
    with open(path) as fh:
        return {row[""]: {"win_rate": float(row["win_rate"]),
                          "lc_win_rate": float(row["length_controlled_winrate"] or "nan")} for row in csv.DictReader(fh)}


def alpaca_items(args) -> tuple[str, list[dict]]:
    """Rows (model, instruction, response) from AlpacaEval results, subsampled to shared instructions."""
    from selfj_rlhf.data.datasets import iter_records

    board = leaderboard()
    folders = sorted(p for p in Path(args.alpaca_results).iterdir() if (p / "model_outputs.json").is_file()
                     and p.name in board)
    folders = random.Random(args.seed).sample(folders, min(args.max_models, len(folders)))
    outputs = {p.name: {r["instruction"]: r["output"] for _, r in iter_records(p / "model_outputs.json")} for p in folders}
    shared = sorted(set.intersection(*(set(o) for o in outputs.values())))
    picked = random.Random(args.seed).sample(shared, min(args.max_instructions, len(shared)))
    rows = [{"model": m, "leaderboard_name": m, "instruction": i, "response": outputs[m][i]}
            for m in sorted(outputs) for i in picked]
    return f"alpaca-m{len(outputs)}-i{len(picked)}-s{args.seed}-L{args.max_length}", rows


def spearman_kendall(xs: list[float], ys: list[float]) -> dict:
    from scipy.stats import kendalltau, spearmanr

    if len(xs) < 3:
        return {"spearman": None, "kendall": None, "n": len(xs)}
    return {"spearman": float(spearmanr(xs, ys).statistic), "kendall": float(kendalltau(xs, ys).statistic), "n": len(xs)}


def main(argv=None):
    args = make_parser().parse_args(argv)
    for item in args.judge:  # every answer ranked here is another model's
        warn_if_outside_role(item.split("=", 1)[1], OTHER_MODELS, where="model ranking")
    if args.alpaca_results:
        tag, rows = alpaca_items(args)
        source = f"AlpacaEval outputs in {args.alpaca_results}"
    else:
        rows = load_arena(args.arena, args.arena_questions, args.seed)
        for r in rows:
            r["leaderboard_name"] = ARENA_TO_LEADERBOARD.get(r["model"])
        tag = f"arena-q{args.arena_questions}-s{args.seed}-L{args.max_length}"  # shared with evals/selective.py
        source = f"arena-bench answers ({args.arena}), {args.arena_questions} questions"
    cache = ScoreCache(args.cache_dir, tag)
    items = [(r["instruction"], r["response"], None) for r in rows]
    per_row = {"mean length (characters)": [float(len(r["response"])) for r in rows]}
    for name, spec in (item.split("=", 1) for item in args.judge):
        per_row[f"judge: {name}"] = cache.get(f"free-{spec.replace('/', '_')}", lambda: judge_scores(spec, items, args))
    models = sorted({r["model"] for r in rows})
    board = leaderboard()
    by_model = {m: [i for i, r in enumerate(rows) if r["model"] == m] for m in models}
    names = {m: rows[by_model[m][0]]["leaderboard_name"] for m in models}
    gpt4 = {m: statistics.fmean(rows[i]["score"] for i in by_model[m]) for m in models} if "score" in rows[0] else None
    on_board = [m for m in models if names[m] in board]
    table, means = {}, {}
    for scorer, values in per_row.items():
        mean = {m: statistics.fmean(values[i] for i in by_model[m]) for m in models}
        means[scorer] = mean
        table[scorer] = {
            "vs AlpacaEval 2 LC win rate": spearman_kendall([mean[m] for m in on_board],
                                                            [board[names[m]]["lc_win_rate"] for m in on_board]),
            "vs AlpacaEval 2 win rate": spearman_kendall([mean[m] for m in on_board],
                                                         [board[names[m]]["win_rate"] for m in on_board])}
        if gpt4:
            table[scorer]["vs mean GPT-4 grade (same answers)"] = spearman_kendall([mean[m] for m in models],
                                                                                   [gpt4[m] for m in models])
    per_model = {m: {"leaderboard_name": names[m], "lc_win_rate": board.get(names[m], {}).get("lc_win_rate"),
                     "mean_gpt4_grade": gpt4[m] if gpt4 else None, **{s: means[s][m] for s in per_row}} for m in models}
    payload = {"command": command_line(), "machine": machine_info(), "source": source, "models": len(models),
               "models_on_leaderboard": len(on_board), "rows": len(rows), "table": table, "per_model": per_model}
    m = payload["machine"]
    columns = list(next(iter(table.values())))
    lines = [f"# Ranking {len(models)} models by mean judge score", "", f"Command: `{payload['command']}`  ",
             f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}  ",
             f"Source: {source}; {len(rows)} answers; {len(on_board)} models mapped to the AlpacaEval 2 leaderboard.", "",
             "| scorer | " + " | ".join(f"{c}: Spearman / Kendall (n)" for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for scorer, entry in table.items():
        cells = [f"{_f(entry[c]['spearman'])} / {_f(entry[c]['kendall'])} ({entry[c]['n']})" for c in columns]
        lines.append(f"| {scorer} | " + " | ".join(cells) + " |")
    lines += ["", "| model | leaderboard name | LC win rate | mean GPT-4 grade | " + " | ".join(per_row) + " |",
              "|---|---|---:|---:|" + "---:|" * len(per_row)]
    for model, e in sorted(per_model.items(), key=lambda kv: -(kv[1]["lc_win_rate"] or -1)):
        lines.append(f"| {model} | {e['leaderboard_name'] or 'not mapped'} | {_f(e['lc_win_rate'], 1)} | "
                     f"{_f(e['mean_gpt4_grade'], 2)} | " + " | ".join(_f(e[s], 3) for s in per_row) + " |")
    lines += ["", f"Plot: `{args.name}.png` (each scorer's model means against the LC win rate and the mean GPT-4 grade).", ""]
    plot(per_model, list(per_row), RESULTS_DIR / f"{args.name}.png")
    markdown = "\n".join(lines)
    write_results(args.name, payload, markdown)
    print(markdown)


def plot(per_model: dict, scorers: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [("lc_win_rate", "AlpacaEval 2 LC win rate"), ("mean_gpt4_grade", "mean GPT-4 grade (same answers)")]
    fig, axes = plt.subplots(len(scorers), len(targets), figsize=(10, 3.2 * len(scorers)), squeeze=False)
    for row, scorer in enumerate(scorers):
        for col, (key, label) in enumerate(targets):
            ax = axes[row][col]
            points = [(e[key], e[scorer], m) for m, e in per_model.items() if e[key] is not None]
            ax.scatter([p[0] for p in points], [p[1] for p in points], s=14)
            for x, y, name in points:
                ax.annotate(name.split("/")[-1][:18], (x, y), fontsize=6)
            ax.set_xlabel(label)
            ax.set_ylabel(scorer)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
