"""Greedy answers of one policy to a prompt file, written row by row so that a killed run resumes.

Greedy answers do not depend on their batch company, so prompts are generated in left-padded batches; each finished
answer is appended to ``<output_dir>/answers.jsonl`` (one row per prompt id) and ``spec.json`` records which policy
and token cap wrote them: a folder written for another policy or cap is refused rather than mixed.
"""

from __future__ import annotations

import json
from pathlib import Path

from selfj_rlhf.core.errors import ConfigError
from selfj_rlhf.core.io import ShardWriter, atomic_write_json, read_shards


def greedy_answers(spec: str, prompts, output_dir: str | Path, *, max_new_tokens: int, batch_size: int = 8,
                   desc: str = "greedy") -> list[dict]:
    """``[{"id", "text", "num_tokens", "finished"}]`` in the order of ``prompts`` (``PromptRecord``s) for the
    policy ``spec``; rows already in ``output_dir`` are kept, the rest generated."""
    out = Path(output_dir)
    settings = {"spec": spec, "max_new_tokens": max_new_tokens}
    recorded = out / "spec.json"
    if recorded.is_file() and json.loads(recorded.read_text()) != settings:
        raise ConfigError(f"{recorded}: written for {json.loads(recorded.read_text())}, not {settings}; "
                          "use another output folder")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(recorded, settings)
    done = read_shards(out, "answers.jsonl")
    todo = [p for p in prompts if p.id not in done]
    if todo:
        done.update(_generate(spec, todo, out / "answers.jsonl", max_new_tokens, batch_size, desc))
    return [done[p.id] for p in prompts]


def _generate(spec, prompts, path: Path, max_new_tokens: int, batch_size: int, desc: str) -> dict[str, dict]:
    from tqdm.auto import tqdm

    from selfj_rlhf.core.generation import generate_greedy_batch
    from selfj_rlhf.core.models import load_causal_lm

    model, tokenizer = load_causal_lm(spec)
    rows = {}
    with ShardWriter(path) as writer:
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
            batch = prompts[start:start + batch_size]
            answers = generate_greedy_batch(model, tokenizer, [p.instruction for p in batch],
                                            max_new_tokens=max_new_tokens)
            for prompt, answer in zip(batch, answers):
                rows[prompt.id] = {"id": prompt.id, **answer}
                writer.write(rows[prompt.id])
    return rows
