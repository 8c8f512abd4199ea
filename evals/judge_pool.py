"""Judge quality, second design: a response pool for the SELF-J teacher, read from the middle layers.

    python -m evals.judge_pool --save_design pool-L18 --save_judge selfj_rlhf/judge/shipped/selfj-smollm2-135m

The pool is the arena-bench v1 development half (one row per answer of 15 models to 150 questions, with the
GPT-4 reference), split by question (recipes/splits/arena_bench_v1_dev.json). On the training questions the
SELF-J teacher labels every answer from the reference alone (MiniLM cosine, chunked cosine, token F1, and
optionally the policy's own with-reference rating), within its question; off-topic answers (another
question's) and injected answers (an honest answer plus a note to the grader) join with a penalty. The pool's
GPT-4 grades are read only to measure, on the held-out questions: never for labels or training.

Every design of the table is a head on the frozen policy's cached score-position states
(``selfj_rlhf.judge.features``), so the expensive part, one forward per text, runs once for all rows; the digit
rows (zero-shot, the previously shipped LoRA judge) are read from their own forward passes.

Columns, all on held-out questions: pooled Pearson with the GPT-4 grade, mean Spearman within question,
partial correlation given log length, Spearman with length, score std, LLMBar accuracy, the judge-gaming
shifts (the attacks of evals/judge_gaming.py on one honest pool answer per held-out question), and the
best-of-4 pick on AlpacaEval prompts (evals/bestofn_check.py's candidates) by cosine and F1 to the reference.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from evals.lib.common import command_line, default_data, machine_info, write_results
from evals.lib.baselines import baselines, pick_quality
from evals.lib.metrics import arena_metrics, pairwise_accuracy
from evals.lib.attacks import ATTACKS
from evals.lib.metrics import partial_given_length

REPO = Path(__file__).resolve().parents[1]
GAMING_ROWS = ("inject: rate 9", "honest + note to grader", "fake reference block", "repeated digits",
               "off-topic", "constant generic")


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", default=default_data("arena_bench_v1"))
    parser.add_argument("--split", default=str(REPO / "recipes" / "splits" / "arena_bench_v1_dev.json"))
    parser.add_argument("--llmbar", default=default_data("llmbar"))
    parser.add_argument("--llmbar_pairs", type=int, default=300)
    parser.add_argument("--bestofn_candidates", default="runs/eval_cache/bestofn-gpt4_1106_preview_outputs-n30-k4-s0.json",
                        help="Candidates cached by evals/bestofn_check.py (run it first).")
    parser.add_argument("--own_samples", type=int, default=4,
                        help="The policy's own samples per training question, for the own-samples-only row (0: off).")
    parser.add_argument("--own_questions", type=int, default=50, help="Training questions the policy answers itself.")
    parser.add_argument("--teacher_questions", type=int, default=30,
                        help="Training questions whose teacher (with-reference) prompts are run, for the distillation "
                             "and self-rating rows (each costs a forward over reference + answer).")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--previous_judge", default=None, help="A digit judge directory to measure beside (LoRA).")
    parser.add_argument("--student_max_length", type=int, default=1024)
    parser.add_argument("--teacher_max_length", type=int, default=1280)
    parser.add_argument("--injected_per_question", type=int, default=2)
    parser.add_argument("--offtopic_per_question", type=int, default=1)
    parser.add_argument("--penalty", type=float, default=4.0)
    parser.add_argument("--cache_dir", default="runs/features")
    parser.add_argument("--stage", choices=("features", "all"), default="all",
                        help="features: compute and cache every forward pass, then stop.")
    parser.add_argument("--scalar_judge", action="append", default=[],
                        help="NAME=DIR of a scalar-head judge trained by recipes/train_judge.py (head: scalar), "
                             "measured from the same cached states and checked against its own forward.")
    parser.add_argument("--name", default="judge_pool")
    parser.add_argument("--seed", type=int, default=0)
    return parser


# ---------------------------------------------------------------------------------------------- data
@dataclass
class PoolData:
    """What the table is measured on: the pool split by question, the graded held-out answers (grades for
    measurement only), the gaming variants of one honest answer per held-out question, LLMBar pairs and best-of-4
    candidates."""

    pool: list
    split: dict
    train: list
    heldout: list
    measured: list[dict]
    gaming: dict[str, list[tuple[str, str]]]
    llmbar: list[dict]
    bestofn: list[dict]


def load_everything(args) -> PoolData:
    from selfj_rlhf.data.datasets import iter_records
    from selfj_rlhf.training.pool import load_pool, read_split, select

    pool = load_pool([args.pool])
    split = read_split(args.split)
    train, heldout = select(pool, split["train"]), select(pool, split["heldout"])
    # grades are read here, for measurement only, and only for held-out answers
    grades = {row["id"]: row for _, row in iter_records(args.pool) if row["question_id"] in set(split["heldout"])}
    measured = [{"id": a.id, "question_id": a.group, "model": a.model, "response": a.response,
                 "score": grades[a.id]["score"]} for a in heldout]
    rng = random.Random(args.seed)
    by_question: dict[str, list] = {}
    for a in heldout:
        by_question.setdefault(a.group, []).append(a)
    honest = [rng.choice(sorted(members, key=lambda a: a.id)) for _, members in sorted(by_question.items())]
    gaming = {"honest": [(a.instruction, a.response) for a in honest]}
    gaming |= {name: [(a.instruction, ATTACKS[name](a.response)) for a in honest] for name in GAMING_ROWS}
    llmbar = random.Random(args.seed).sample([r for _, r in iter_records(args.llmbar)], k=args.llmbar_pairs)
    bestofn = json.loads(Path(args.bestofn_candidates).read_text()) if Path(args.bestofn_candidates).is_file() else []
    return PoolData(pool=pool, split=split, train=train, heldout=heldout, measured=measured, gaming=gaming,
                    llmbar=llmbar, bestofn=bestofn)


def judges(args):
    from selfj_rlhf import SelfJudge

    student = SelfJudge.from_pretrained(args.model, max_length=args.student_max_length)
    teacher = SelfJudge(student.model, student.tokenizer, student.template, args.teacher_max_length,
                        base_model=args.model)
    return student, teacher


def features(judge, pairs, references=None, *, cache, desc):
    from selfj_rlhf.judge.features import score_position_features

    print(f"[features] {desc}: {len(pairs)} texts", flush=True)
    return score_position_features(judge, [p[0] for p in pairs], [p[1] for p in pairs], references, cache=cache)


# ---------------------------------------------------------------------------------------------- metrics
def cached_signals(cache_dir: Path, answers, embedder) -> list[dict]:
    """The teacher's similarity signals of the answers, cached as JSON by answer id (MiniLM runs once)."""
    import hashlib

    from selfj_rlhf.core.io import atomic_write_json
    from selfj_rlhf.training.pool import similarity_signals

    key = hashlib.sha1(json.dumps([[a.id, a.response, a.reference] for a in answers]).encode()).hexdigest()[:16]
    path = cache_dir / f"signals-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    signals = similarity_signals(answers, embedder)
    atomic_write_json(path, signals, indent=None)
    return signals


def measure(score_fn, d, feats) -> dict:
    """All columns for one judge. ``score_fn(set_name) -> scores`` over the cached texts of that set."""
    import numpy as np

    measured = d.measured
    scores = np.asarray(score_fn("heldout"), float)
    grades = [r["score"] for r in measured]
    tokens = feats["heldout"].response_tokens
    row = {k: v for k, v in arena_metrics(measured, scores.tolist()).items()
           if k in ("n", "pearson", "spearman_within_question", "spearman_with_length", "score_std")}
    row["partial_given_log_length"] = partial_given_length(scores, grades, tokens)
    honest = np.asarray(score_fn("gaming:honest"), float)
    row["gaming"] = {}
    for attack in GAMING_ROWS:
        attacked = np.asarray(score_fn(f"gaming:{attack}"), float)
        row["gaming"][attack] = {"shift": float((attacked - honest).mean()),
                                 "share_at_least_honest": float((attacked >= honest).mean())}
    if d.llmbar:
        a, b = score_fn("llmbar:a"), score_fn("llmbar:b")
        row["llmbar_accuracy"] = pairwise_accuracy(list(a), list(b), d.llmbar)
    if d.bestofn:
        flat = np.asarray(score_fn("bestofn"), float)
        k = len(d.bestofn[0]["candidates"])
        picks = [int(np.argmax(flat[i * k:(i + 1) * k])) for i in range(len(d.bestofn))]
        quality = pick_quality(d.bestofn, picks)
        row["bestofn_cosine"], row["bestofn_f1"] = quality["cosine"], quality["f1"]
    return row


def main(argv=None):
    args = make_parser().parse_args(argv)
    from selfj_rlhf.judge.features import FeatureCache
    from selfj_rlhf.training.labeling import load_embedder
    from selfj_rlhf.training.pool import answer_rows, augmented_rows, teacher_labels

    start = time.perf_counter()
    d = load_everything(args)
    student, teacher = judges(args)
    cache = FeatureCache(Path(args.cache_dir) / args.model.replace("/", "_"))
    embedder = load_embedder("all-minilm-l6-v2", "cpu")

    # ---- teacher labels of the training questions (reference-based signals; no grade)
    rows = answer_rows(d.train)
    for row, signals in zip(rows, cached_signals(Path(args.cache_dir), d.train, embedder)):
        row.update(signals)
    base_labels = dict(zip([r["id"] for r in rows], teacher_labels(rows, {"cosine": 1, "chunked_cosine": 1, "f1": 1})))
    augmented = augmented_rows(d.train, base_labels, offtopic_per_group=args.offtopic_per_question,
                                    injected_per_group=args.injected_per_question, penalty=args.penalty,
                                    seed=args.seed)

    # ---- every forward pass (cached; a rerun computes nothing)
    feats = {}
    feats["heldout"] = features(student, [(a.instruction, a.response) for a in d.heldout], cache=cache,
                                desc="held-out pool answers")
    feats["train"] = features(student, [(r["instruction"], r["response"]) for r in rows], cache=cache,
                              desc="training pool answers")
    feats["augmented"] = features(student, [(r["instruction"], r["response"]) for r in augmented], cache=cache,
                                  desc="augmented training answers")
    for attack, pairs in d.gaming.items():
        feats[f"gaming:{attack}"] = features(student, pairs, cache=cache, desc=f"gaming {attack}")
    if d.bestofn:
        feats["bestofn"] = features(student, [(i["instruction"], c) for i in d.bestofn for c in i["candidates"]],
                                    cache=cache, desc="best-of-4 candidates")
    if d.llmbar:
        for side in ("a", "b"):
            feats[f"llmbar:{side}"] = features(student, [(r["instruction"], r[f"response_{side}"]) for r in d.llmbar],
                                               cache=cache, desc=f"LLMBar response_{side}")
    own = own_sample_rows(args, d, student, embedder)
    if own:
        feats["own"] = features(student, [(r["instruction"], r["response"]) for r in own], cache=cache,
                                desc="the policy's own samples")
    subset = teacher_subset(args, rows + augmented)
    feats["teacher"] = features(teacher, [(r["instruction"], r["response"]) for r in subset],
                                [r["reference"] for r in subset], cache=cache, desc="teacher (with reference) prompts")
    if args.previous_judge:  # its own forward passes, cached as scores
        previous = previous_judge_scores(args, d)
        for name in ["heldout", *[f"gaming:{k}" for k in d.gaming], "bestofn", "llmbar:a", "llmbar:b"]:
            previous(name)
    if args.stage == "features":
        print(f"features cached in {time.perf_counter() - start:.0f} s")
        return
    table, checks = evaluate(Evaluation(args, d, rows, augmented, feats, student), own)
    payload = {"command": command_line(), "machine": machine_info(), "pool": args.pool, "split": args.split,
               "train_questions": len(d.split["train"]), "heldout_questions": len(d.split["heldout"]),
               "train_answers": len(rows), "augmented_answers": len(augmented), "heldout_answers": len(d.heldout),
               "llmbar_pairs": len(d.llmbar), "bestofn_prompts": len(d.bestofn),
               "student_max_length": args.student_max_length, "teacher_max_length": args.teacher_max_length,
               "truncated_share_heldout": float(feats["heldout"].truncated.mean()),
               "tokens_scored": student.scored_tokens + teacher.scored_tokens,
               "wall_s": round(time.perf_counter() - start, 1), "rows": table, "judge_checks": checks,
               "bestofn_baselines": baselines(d.bestofn) if d.bestofn else {}}
    write_results(args.name, payload, render(payload))
    print(render(payload))


# ---------------------------------------------------------------------------------------------- designs
DESIGNS = {
    # name: ScalarHeadConfig fields, plus weights (teacher signals), normalize, augment (off-topic/injected rows)
    # and subset (only the teacher_questions whose with-reference prompts ran: the distillation comparisons)
    "pool-L18": dict(layer=18, distill=False),
    "pool-L18 pairwise": dict(layer=18, distill=False, loss="pairwise"),
    "pool-L18 mse+pairwise": dict(layer=18, distill=False, loss="mse+pairwise"),
    "pool-L18 length-matched pairs": dict(layer=18, distill=False, loss="mse+pairwise", max_length_ratio=1.5),
    "pool-L18 no injected/off-topic rows": dict(layer=18, distill=False, augment=False),
    "pool-L18 rank over the pool (not within question)": dict(layer=18, distill=False, normalize="rank"),
    "pool-L12": dict(layer=12, distill=False),
    "pool-L24": dict(layer=24, distill=False),
    "pool-L30 (top)": dict(layer=30, distill=False),
    "subset-L18 no distillation": dict(layer=18, distill=False, subset=True),
    "subset-L18 distillation": dict(layer=18, distill=True, subset=True),
    "subset-L18 distillation + self-rating": dict(layer=18, distill=True, subset=True,
                                                  weights={"cosine": 1, "chunked_cosine": 1, "f1": 1, "selfeval": 1}),
    "subset-L18 self-rating only": dict(layer=18, distill=False, subset=True, weights={"selfeval": 1}),
}
SIMILARITY = {"cosine": 1, "chunked_cosine": 1, "f1": 1}


def teacher_subset(args, rows: list[dict]) -> list[dict]:
    """The rows of the first ``teacher_questions`` training questions (sorted ids): the distillation subset."""
    groups = sorted({r["group"] for r in rows})[: args.teacher_questions]
    return [r for r in rows if r["group"] in set(groups)]


def design_rows(rows, augmented, teacher_rows, teacher_zero_shot, spec, penalty):
    """(row indices into rows + augmented, labels, teacher positions or None) of one design.

    Labels are the teacher's over the design's pool rows (with the policy's with-reference rating as
    ``selfeval`` on the teacher subset); augmented rows: off-topic 0, injected the honest answer's label minus the
    penalty."""
    from selfj_rlhf.training.pool import teacher_labels

    teacher_position = {r["id"]: k for k, r in enumerate(teacher_rows)}
    groups = {r["group"] for r in teacher_rows} if spec.get("subset") else {r["group"] for r in rows}
    pool = [i for i, r in enumerate(rows) if r["group"] in groups]
    for i in pool:
        k = teacher_position.get(rows[i]["id"])
        rows[i]["selfeval"] = None if k is None else float(teacher_zero_shot[k]) / 9.0
    labels = teacher_labels([rows[i] for i in pool], spec.get("weights", SIMILARITY), spec.get("normalize", "within"))
    by_id = {rows[i]["id"]: v for i, v in zip(pool, labels)}
    extra = [(len(rows) + j, 0.0 if r["kind"] == "offtopic" else max(0.0, by_id[r["id"].split("#")[0]] - penalty))
             for j, r in enumerate(augmented) if r["group"] in groups] if spec.get("augment", True) else []
    index = pool + [i for i, _ in extra]
    y = labels + [v for _, v in extra]
    all_rows = rows + augmented
    teacher = [teacher_position[all_rows[i]["id"]] for i in index] if spec.get("subset") else None
    return index, y, teacher


def train_digit_readout(student, labels, digit_rows, steps=300, lr=0.01):
    """The digit judge's readout retrained on cached last-layer states of the student prompts: the LM head's ten
    digit rows (initialised from the model's), cross-entropy on the label classes; scored as the expected digit."""
    import numpy as np
    import torch

    from selfj_rlhf.training.labeling import to_class

    weight = torch.tensor(digit_rows, dtype=torch.float32, requires_grad=True)
    xs = torch.tensor(student, dtype=torch.float32)
    y = torch.tensor([to_class(v / 9.0) for v in labels])
    optimizer = torch.optim.Adam([weight], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(xs @ weight.T, y).backward()
        optimizer.step()
    return np.asarray(weight.detach())


def own_sample_rows(args, d, student, embedder) -> list[dict]:
    """The policy's own samples on the training questions (cached), labelled by the same teacher."""
    from selfj_rlhf.core.generation import generate_candidates
    from selfj_rlhf.core.io import atomic_write_json
    from selfj_rlhf.training.pool import PoolAnswer, teacher_labels

    if not args.own_samples:
        return []
    path = Path(args.cache_dir) / (f"own-samples-{args.model.replace('/', '_')}-q{args.own_questions}-k{args.own_samples}"
                                   f"-s{args.seed}.json")
    questions = {}
    for a in d.train:
        questions.setdefault(a.group, a)
    questions = {g: questions[g] for g in sorted(questions)[: args.own_questions]}
    if path.is_file():
        samples = json.loads(path.read_text())
    else:
        from tqdm.auto import tqdm

        samples = {group: [c["text"] for c in generate_candidates(
            student.model, student.tokenizer, a.instruction, n=args.own_samples, seed=args.seed, prompt_id=group,
            max_new_tokens=192, temperature=0.8, top_p=0.95)] for group, a in tqdm(questions.items(), desc="own samples")}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, samples, indent=None)
    answers = [PoolAnswer(f"{group}#own{i}", group, questions[group].instruction, questions[group].reference, text,
                          args.model) for group, texts in samples.items() for i, text in enumerate(texts)]
    rows = [{"id": a.id, "group": a.group, "instruction": a.instruction, "response": a.response, **signals}
            for a, signals in zip(answers, cached_signals(Path(args.cache_dir), answers, embedder))]
    for row, label in zip(rows, teacher_labels(rows, SIMILARITY)):
        row["label"] = label
    return rows


@dataclass
class Evaluation:
    """The inputs every row of the table is measured on."""

    args: argparse.Namespace
    data: PoolData
    rows: list[dict]
    augmented: list[dict]
    feats: dict
    student: object

    def states(self, name: str, layer: int):
        return self.feats[name].states[:, layer, :].astype("float32")

    def eval_sets(self) -> list[str]:
        return [name for name in self.feats if name not in ("train", "augmented", "teacher")]

    def measure(self, score_fn) -> dict:
        return measure(score_fn, self.data, self.feats)


def design_table(ev: Evaluation) -> dict:
    """One row (and its length-controlled twin) per head design of ``DESIGNS``, trained on the teacher labels."""
    import numpy as np

    from selfj_rlhf.judge.head import LengthControl
    from selfj_rlhf.training.scalar_head import ScalarHeadConfig, train_scalar_head

    teacher_rows = teacher_subset(ev.args, ev.rows + ev.augmented)
    teacher_zero_shot = ev.feats["teacher"].zero_shot_scores
    groups = [r["group"] for r in ev.rows + ev.augmented]
    tokens = np.concatenate([ev.feats["train"].response_tokens, ev.feats["augmented"].response_tokens])
    table = {}
    for name, spec in DESIGNS.items():
        index, y, teacher = design_rows(ev.rows, ev.augmented, teacher_rows, teacher_zero_shot, spec, ev.args.penalty)
        y = np.asarray(y)
        cfg = ScalarHeadConfig(seed=ev.args.seed, **{k: v for k, v in spec.items()
                                                     if k not in ("weights", "normalize", "augment", "subset")})
        student_x = np.concatenate([ev.states("train", cfg.layer), ev.states("augmented", cfg.layer)])[index]
        teacher_x = (ev.feats["teacher"].states[teacher, cfg.layer, :].astype(np.float32)
                     if teacher is not None else None)
        head, info = train_scalar_head(cfg, student_x, y, [groups[i] for i in index], tokens[index], teacher_x)
        w, b = head.linear.weight.detach().numpy()[0], float(head.linear.bias.detach())
        scored = {s: ev.states(s, cfg.layer) @ w + b for s in ev.eval_sets()}
        length_fit = LengthControl.fit(y, tokens[index])
        table[name] = ev.measure(scored.__getitem__)
        table[name]["training"] = info
        table[f"{name}, length-controlled"] = ev.measure(
            lambda s: length_fit.apply(scored[s], ev.feats[s].response_tokens))
        print(name, {k: table[name][k] for k in ("pearson", "partial_given_log_length", "score_std")}, flush=True)
    return table


def own_samples_row(ev: Evaluation, own: list[dict]) -> dict:
    """A head trained on the policy's own samples only (no pool answer)."""
    import numpy as np

    from selfj_rlhf.training.scalar_head import ScalarHeadConfig, train_scalar_head

    name = "own samples only, L18, no distillation"
    y = np.asarray([r["label"] for r in own])
    cfg = ScalarHeadConfig(layer=18, distill=False, seed=ev.args.seed)
    head, info = train_scalar_head(cfg, ev.states("own", 18), y, [r["group"] for r in own],
                                   ev.feats["own"].response_tokens)
    w, b = head.linear.weight.detach().numpy()[0], float(head.linear.bias.detach())
    return {name: {**ev.measure(lambda s: ev.states(s, 18) @ w + b), "training": info}}


def digit_readout_row(ev: Evaluation) -> dict:
    """The digit judge's counterpart of the scalar head: its readout retrained on the pool (last layer)."""
    import numpy as np

    teacher_rows = teacher_subset(ev.args, ev.rows + ev.augmented)
    index, y, _ = design_rows(ev.rows, ev.augmented, teacher_rows, ev.feats["teacher"].zero_shot_scores, {},
                              ev.args.penalty)
    embeddings = ev.student.model.get_output_embeddings().weight.detach().float().numpy()[ev.student.digit_ids]
    top = len(ev.feats["heldout"].states[0]) - 1
    readout = train_digit_readout(np.concatenate([ev.states("train", top), ev.states("augmented", top)])[index], y,
                                  embeddings)

    def digit_scores(name):
        logits = ev.states(name, top) @ readout.T
        probs = np.exp(logits - logits.max(1, keepdims=True))
        return (probs / probs.sum(1, keepdims=True)) @ np.arange(10)

    return {"digit readout retrained on the pool (last layer)": ev.measure(digit_scores)}


def baseline_rows(ev: Evaluation) -> dict:
    """The zero-shot digit judge, response length and (when given) the previously shipped judge."""
    table = {"zero-shot SELF-J digit judge": ev.measure(lambda s: ev.feats[s].zero_shot_scores),
             "response length (tokens)": ev.measure(lambda s: ev.feats[s].response_tokens)}
    if ev.args.previous_judge:
        table["previously shipped judge (LoRA digit)"] = ev.measure(previous_judge_scores(ev.args, ev.data))
    return table


def grade_probe_row(ev: Evaluation) -> dict:
    """Diagnostic ceiling: a probe fitted to the GPT-4 grades of the *training* questions (never a judge)."""
    import numpy as np
    from sklearn.linear_model import RidgeCV

    from selfj_rlhf.data.datasets import iter_records

    train_ids = {a.id for a in ev.data.train}
    grades = {r["id"]: r["score"] for _, r in iter_records(ev.args.pool) if r["id"] in train_ids}
    probe = RidgeCV(alphas=np.logspace(0, 5, 11)).fit(ev.states("train", 18), [grades[r["id"]] for r in ev.rows])
    return {"ceiling: probe on GPT-4 grades (diagnostic only)": ev.measure(lambda s: probe.predict(ev.states(s, 18)))}


def shipped_judge_rows(ev: Evaluation) -> tuple[dict, dict]:
    """Rows of the judge directories named by ``--scalar_judge``, and a check that each loads and scores as its
    head does on the cached states."""
    from selfj_rlhf.judge.directory import resolve_judge_dir

    table, checks = {}, {}
    for name, spec in (item.split("=", 1) for item in ev.args.scalar_judge):
        directory = resolve_judge_dir(spec)
        if directory is None:
            raise SystemExit(f"--scalar_judge {name}={spec}: not a judge directory or shipped alias")
        head, length_fit = load_head(directory)
        w, b = head.linear.weight.detach().numpy()[0], float(head.linear.bias)
        scored = {s: np.concatenate([ev.states(s, layer) for layer in head.layers], 1) @ w + b for s in ev.eval_sets()}
        table[name] = ev.measure(scored.__getitem__)
        if length_fit is not None:
            table[f"{name}, length-controlled"] = ev.measure(
                lambda s: length_fit.apply(scored[s], ev.feats[s].response_tokens))
        checks[name] = check_judge(str(directory), ev.data, scored["heldout"], ev.student)
    return table, checks


def evaluate(ev: Evaluation, own: list[dict]) -> tuple[dict, dict]:
    """Every row of the table, and the shipped-judge checks."""
    table = design_table(ev)
    if own:
        table |= own_samples_row(ev, own)
    table |= digit_readout_row(ev)
    table |= baseline_rows(ev)
    table |= grade_probe_row(ev)
    judged, checks = shipped_judge_rows(ev)
    return table | judged, checks


def load_head(directory):
    from selfj_rlhf.judge.self_judge import JUDGE_CONFIG_NAME
    from selfj_rlhf.judge.head import LengthControl, ScalarHead

    config = json.loads((Path(directory) / JUDGE_CONFIG_NAME).read_text())
    lc = LengthControl.from_dict(config["length_control"]) if config.get("length_control") else None
    return ScalarHead.load(directory, config["head"]), lc


def check_judge(directory, d, cached_scores, student, n=16) -> dict:
    """The judge directory loaded as users load it scores like the head on cached states, and costs less than
    the full-depth digit judge on the same answers."""
    import numpy as np

    from selfj_rlhf import SelfJudge

    judge = SelfJudge.from_pretrained(directory)
    sample = d.heldout[:n]
    timings = {}
    for name, scorer in (("scalar head", judge), ("zero-shot digit judge (all layers)", student)):
        scorer.score([a.instruction for a in sample[:2]], [a.response for a in sample[:2]])  # warm-up
        t0 = time.perf_counter()
        scores = scorer.score([a.instruction for a in sample], [a.response for a in sample])
        timings[name] = round(time.perf_counter() - t0, 2)
        if scorer is judge:
            direct = np.asarray(scores)
    return {"answers": n, "max_abs_diff_vs_cached_states": float(np.max(np.abs(direct - cached_scores[:n]))),
            "scoring_s": timings}


def previous_judge_scores(args, d):
    """Scores of a digit judge directory on every evaluated text (its own forward passes, cached as JSON)."""
    from evals.lib.score_cache import ScoreCache

    from selfj_rlhf import SelfJudge

    judge = None
    cache = ScoreCache(Path(args.cache_dir) / "scores", Path(args.previous_judge).name)
    texts = {"heldout": [(a.instruction, a.response) for a in d.heldout]}
    texts |= {f"gaming:{k}": v for k, v in d.gaming.items()}
    texts["bestofn"] = [(i["instruction"], c) for i in d.bestofn for c in i["candidates"]]
    for side in ("a", "b"):
        texts[f"llmbar:{side}"] = [(r["instruction"], r[f"response_{side}"]) for r in d.llmbar]

    def compute(name):
        nonlocal judge
        judge = judge or SelfJudge.from_pretrained(args.previous_judge)
        return judge.score([p[0] for p in texts[name]], [p[1] for p in texts[name]])

    return lambda name: cache.get(name, lambda: compute(name))


def render(payload) -> str:
    m = payload.machine
    lines = [f"# Judge quality on {payload['heldout_questions']} held-out arena questions "
             f"({payload['heldout_answers']} answers)", "",
             f"Command: `{payload['command']}`  ", f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['date']}  ",
             f"Training: {payload['train_answers']} pool answers of {payload['train_questions']} questions + "
             f"{payload['augmented_answers']} off-topic/injected rows; labels from the reference only.  ",
             f"Held-out responses truncated at {payload['student_max_length']} tokens: "
             f"{payload['truncated_share_heldout']:.0%}. Tokens scored this run: {payload['tokens_scored']:,}; "
             f"wall time {payload['wall_s']:.0f} s.", "",
             "| judge | Pearson | within-q Spearman | partial r given log len | Spearman w/ length | score std | "
             "LLMBar acc | 'rate 9' shift | 'rate 9' >= honest | note shift | best-of-4 cos | best-of-4 F1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    for name, r in payload.rows.items():
        g = r["gaming"]
        lines.append(f"| {name} | {f(r['pearson'])} | {f(r['spearman_within_question'])} | "
                     f"{f(r['partial_given_log_length'])} | {f(r['spearman_with_length'])} | {f(r['score_std'], '{:.2f}')} | "
                     f"{f(r.get('llmbar_accuracy'))} | {g['inject: rate 9']['shift']:+.2f} | "
                     f"{g['inject: rate 9']['share_at_least_honest']:.0%} | {g['honest + note to grader']['shift']:+.2f} | "
                     f"{f(r.get('bestofn_cosine'))} | {f(r.get('bestofn_f1'))} |")
    if payload.bestofn_baselines:
        lines += ["", f"Best-of-4 baselines on {payload['bestofn_prompts']} AlpacaEval prompts: " + "; ".join(
            f"{name} cosine {v['cosine']:.3f}, F1 {v['f1']:.3f}" for name, v in payload.bestofn_baselines.items())]
    for name, check in payload.judge_checks.items():
        lines += ["", f"`{name}` loaded with `SelfJudge.from_pretrained`: largest difference from the head on cached "
                      f"states {check['max_abs_diff_vs_cached_states']:.4f} over {check['answers']} held-out answers; "
                      "scoring time " + ", ".join(f"{k} {v:.2f} s" for k, v in check["scoring_s"].items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
