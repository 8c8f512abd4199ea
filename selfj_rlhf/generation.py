"""Candidate generation with per-prompt seeding, so results do not depend on sharding."""

from __future__ import annotations

import hashlib

import torch


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A 31-bit seed derived from (run seed, prompt id): same prompt, same samples, on any process."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def chat_prompt_ids(tokenizer, instruction: str) -> list[int]:
    """Token ids of the policy prompt for one instruction (chat template when the tokenizer has one)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(instruction, add_special_tokens=True)


@torch.inference_mode()
def generate_candidates(model, tokenizer, instruction: str, *, n: int, seed: int, prompt_id: str,
                        max_new_tokens: int = 256, temperature: float = 0.7, top_p: float = 0.95) -> list[dict]:
    """Sample ``n`` responses to one instruction in one batched ``generate`` call.

    Returns ``[{"text", "num_tokens", "finished"}]``; ``finished`` is False when the sample hit
    ``max_new_tokens`` before an end-of-sequence token. ``temperature == 0`` means greedy (n copies).
    """
    device = next(model.parameters()).device
    ids = torch.tensor([chat_prompt_ids(tokenizer, instruction)], device=device)
    torch.manual_seed(prompt_seed(seed, prompt_id))
    sampling = temperature > 0
    kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p) if sampling else dict(do_sample=False)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         num_return_sequences=n if sampling else 1, pad_token_id=tokenizer.pad_token_id, **kwargs)
    new_tokens = out[:, ids.shape[1]:]
    eos_ids = model.generation_config.eos_token_id
    eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids]) | {tokenizer.eos_token_id}
    candidates = []
    for row in new_tokens.tolist():
        end = next((i for i, t in enumerate(row) if t in eos_ids), None)
        kept = row if end is None else row[:end]
        candidates.append({"text": tokenizer.decode(kept, skip_special_tokens=True).strip(),
                           "num_tokens": len(kept), "finished": end is not None})
    return candidates if sampling else candidates * n
