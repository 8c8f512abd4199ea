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
    import torch
    from tqdm.auto import tqdm

    from selfj_rlhf.core.generation import chat_prompt_ids, eos_token_ids
    from selfj_rlhf.core.models import load_causal_lm
    from selfj_rlhf.core.tensors import left_pad

    model, tokenizer = load_causal_lm(spec)
    eos_ids, rows = eos_token_ids(model, tokenizer), {}
    with ShardWriter(path) as writer:
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
            batch = prompts[start:start + batch_size]
            encoded = left_pad([chat_prompt_ids(tokenizer, p.instruction) for p in batch], tokenizer.pad_token_id)
            with torch.inference_mode():
                generated = model.generate(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                                           max_new_tokens=max_new_tokens, do_sample=False,
                                           pad_token_id=tokenizer.pad_token_id)
            for prompt, ids in zip(batch, generated[:, encoded["input_ids"].shape[1]:].tolist()):
                end = next((i for i, t in enumerate(ids) if t in eos_ids), None)
                row = {"id": prompt.id, "text": tokenizer.decode(ids[:end], skip_special_tokens=True).strip(),
                       "num_tokens": len(ids) if end is None else end, "finished": end is not None}
                writer.write(row)
                rows[prompt.id] = row
    return rows
