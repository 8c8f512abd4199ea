"""Which self-label design carries a signal that transfers to GPT-4 grades? A cheap probe before training.

    python -m evals.label_transfer --labels runs/labels_smollm2/labels_relevance.jsonl --max_questions 30

For every labelled response (and every arena-bench dev answer) the frozen policy reads the reference-free judge
prompt; its hidden states at the score position (several layers) are the features. For each label design, a
ridge regression (or, for the binary designs, a logistic regression) is fitted on the labelled responses only,
then scores the arena answers, and the table reports how those scores agree with the GPT-4 grades (pooled
Pearson, mean Spearman within question) and with length. No GPT-4 grade is used for fitting. A design whose
probe anti-correlates with the grades teaches the judge the wrong thing, however well it is learned.

Designs, on the rows of a labels file written with reference_as_response and offtopic_as_response
(recipes/configs/label_relevance.yaml):
  self-evaluation    the policy's samples only, scored by the policy's own with-reference rating (the paper's signal)
  within-similarity  the policy's samples only, ranked within their instruction by MiniLM cosine to the reference
  reference-vs-sample  the reference (1) against the policy's samples (0)
  relevance          answers to the instruction (samples and reference, 1) against off-topic answers (0)
  ontopic-sample-vs-offtopic  the policy's samples (1) against off-topic answers (0)

Features are cached per row under --cache_dir (a killed run, or a new labels file, computes only what is missing).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evals.lib.common import command_line, machine_info, default_data, write_results
from evals.lib.metrics import arena_metrics
from evals.lib.score_cache import load_arena

from selfj_rlhf.data.datasets import iter_records
from selfj_rlhf.training.labeling import percentiles

LAYERS = (12, 18, 24, 27, 30)


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", required=True, help="labels.jsonl with reference and off-topic rows.")
    parser.add_argument("--arena", default=default_data("arena_bench_v1"))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max_questions", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_max_length", type=int, default=384)
    parser.add_argument("--arena_max_length", type=int, default=512)
    parser.add_argument("--cache_dir", default="runs/eval_cache")
    parser.add_argument("--name", default="label_transfer")
    return parser


def score_position_features(judge, pairs: list[tuple[str, str]], max_length: int, batch_size: int = 8):
    """[N, len(LAYERS), hidden] hidden states at the last prompt position (where the rating is read)."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from selfj_rlhf.core.tensors import left_pad

    judge.max_length = max_length
    encoded = [judge.encode(instruction, response).input_ids for instruction, response in pairs]
    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(encoded), batch_size), desc="features"):
            batch = left_pad(encoded[start:start + batch_size], judge.tokenizer.pad_token_id)
            hidden = judge.model(**batch, output_hidden_states=True, use_cache=False).hidden_states
            out.append(torch.stack([hidden[layer][:, -1, :] for layer in LAYERS], 1).float())
    return np.asarray(torch.cat(out).numpy())


def cached_features(path: Path, ids: list[str], compute):
    """Features for ``ids``, computing (via ``compute(missing_indices)``) only rows not in the cache at ``path``."""
    import numpy as np

    stored: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path) as data:
            stored = dict(zip(data["ids"].tolist(), data["features"]))
    missing = [i for i, key in enumerate(ids) if key not in stored]
    if missing:
        for index, features in zip(missing, compute(missing)):
            stored[ids[index]] = features
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, ids=np.array(list(stored)), features=np.stack(list(stored.values())))
        tmp.replace(path)
    return np.stack([stored[key] for key in ids])


def designs(rows: list[dict]):
    """name -> (row mask, targets, binary?) on the labelled rows."""
    import numpy as np

    ref = np.array([bool(r.get("is_reference")) for r in rows])
    off = np.array([bool(r.get("is_offtopic")) for r in rows])
    sample = ~ref & ~off
    if not ref.any() or not off.any():
        raise SystemExit("--labels needs rows from reference_as_response and offtopic_as_response")
    within = np.full(len(rows), np.nan)  # similarity percentile among the samples of the same instruction
    groups: dict[str, list[int]] = {}
    for index in np.flatnonzero(sample):
        groups.setdefault(rows[index]["group"], []).append(int(index))
    for members in groups.values():
        within[members] = percentiles([rows[i]["similarity"] for i in members])
    selfeval = np.array([r["selfeval"] if r.get("selfeval") is not None else np.nan for r in rows], float)
    out = {"self-evaluation": (sample, selfeval, False),
           "within-similarity": (sample, within, False),
           "reference-vs-sample": (ref | sample, ref.astype(float), True),
           "relevance": (np.ones(len(rows), bool), (~off).astype(float), True),
           "ontopic-sample-vs-offtopic": (sample | off, sample.astype(float), True)}
    return out


def main(argv=None):
    args = make_parser().parse_args(argv)
    import numpy as np
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from selfj_rlhf import SelfJudge

    rows = [row for _, row in iter_records(args.labels)]
    arena = load_arena(args.arena, args.max_questions, args.seed)
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    judge = None

    def get_judge():
        nonlocal judge
        judge = judge or SelfJudge.from_pretrained(args.model, max_length=args.train_max_length)
        return judge

    model_key = args.model.replace("/", "_")
    train_pairs = [(r["instruction"], r["response"]) for r in rows]
    arena_pairs = [(r["instruction"], r["response"]) for r in arena]
    train_x = cached_features(cache / f"features-labelled-{model_key}-L{args.train_max_length}.npz",
                              [r["id"] for r in rows], lambda todo: score_position_features(
                                  get_judge(), [train_pairs[i] for i in todo], args.train_max_length))
    arena_x = cached_features(cache / f"features-arena-{model_key}-L{args.arena_max_length}.npz",
                              [r["id"] for r in arena], lambda todo: score_position_features(
                                  get_judge(), [arena_pairs[i] for i in todo], args.arena_max_length))
    table = {}
    for name, (mask, target, binary) in designs(rows).items():
        for index, layer in enumerate(LAYERS):
            if binary:
                probe = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=8, max_iter=2000))
                probe.fit(train_x[mask, index], target[mask].astype(int))
                scores = probe.decision_function(arena_x[:, index])
            else:
                probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(0, 5, 11)))
                probe.fit(train_x[mask, index], target[mask])
                scores = probe.predict(arena_x[:, index])
            table[f"{name} @ layer {layer}"] = {"design": name, "layer": layer, "train_rows": int(mask.sum()),
                                                **arena_metrics(arena, [float(s) for s in scores])}
    lengths = [float(len(r["response"])) for r in arena]
    payload = {"command": command_line(), "machine": machine_info(), "labels": args.labels,
               "arena_rows": len(arena), "arena_questions": args.max_questions, "rows": table,
               "length_baseline": arena_metrics(arena, lengths)}
    markdown = render_markdown(payload)
    write_results(args.name, payload, markdown)
    print(markdown)


def render_markdown(payload: dict) -> str:
    m = payload["machine"]
    base = payload["length_baseline"]
    lines = [f"# Label-design transfer probe ({payload['arena_rows']} arena-bench-v1 dev answers from "
             f"{payload['arena_questions']} questions)", "",
             f"Command: `{payload['command']}`  ", f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}  ",
             f"Labels: `{payload['labels']}`. A linear probe on the frozen policy's score-position hidden state is "
             "fitted to each self-label design (no GPT-4 grade is used), then scores the arena answers.", "",
             f"Length baseline: Pearson {base['pearson']:+.3f}, Spearman within question "
             f"{base['spearman_within_question']:+.3f}.", "",
             "| design | layer | rows fitted | Pearson | Spearman | Spearman within question | Spearman with length |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in payload["rows"].values():
        lines.append(f"| {row['design']} | {row['layer']} | {row['train_rows']} | {row['pearson']:+.3f} "
                     f"| {row['spearman']:+.3f} | {row['spearman_within_question']:+.3f} "
                     f"| {row['spearman_with_length']:+.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
