"""Candidate generation with per-prompt seeding, so results do not depend on sharding."""

from __future__ import annotations

import hashlib

import torch

from .errors import ConfigError
from .models import load_causal_lm, load_tokenizer, resolve_model_path

BACKENDS = ("hf", "vllm")


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


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every id that ends a generated answer: the generation config's (one or a list) and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    return set(ids if isinstance(ids, list) else [ids]) | {tokenizer.eos_token_id}


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
    eos_ids = eos_token_ids(model, tokenizer)
    candidates = []
    for row in new_tokens.tolist():
        end = next((i for i, t in enumerate(row) if t in eos_ids), None)
        kept = row if end is None else row[:end]
        candidates.append({"text": tokenizer.decode(kept, skip_special_tokens=True).strip(),
                           "num_tokens": len(kept), "finished": end is not None})
    return candidates if sampling else candidates * n


def vllm_candidate_generator(policy: str, *, n: int, seed: int, max_new_tokens: int, temperature: float, top_p: float,
                             dtype: str = "auto", gpu_memory_utilization: float = 0.5):
    """A ``generate(prompts) -> [[{"text", "num_tokens", "finished"}] * n]`` function backed by vLLM.

    vLLM batches all prompts of a call; each prompt's sampling seed is derived from (seed, prompt id) as in
    the transformers path (the samples themselves differ from it: other kernels, other RNG).
    """

    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        raise ConfigError("backend vllm needs the vllm package (pip install -e '.[vllm]', on a CUDA machine); "
                          "use backend hf otherwise") from None
    tokenizer = load_tokenizer(policy)
    llm = LLM(model=resolve_model_path(policy), dtype="auto" if dtype == "auto" else dtype, seed=seed,
              gpu_memory_utilization=gpu_memory_utilization)

    def generate(prompts) -> list[list[dict]]:
        params = [SamplingParams(n=n if temperature > 0 else 1, temperature=temperature,
                                 top_p=top_p if temperature > 0 else 1.0, max_tokens=max_new_tokens,
                                 seed=prompt_seed(seed, p.id)) for p in prompts]
        inputs = [{"prompt_token_ids": chat_prompt_ids(tokenizer, p.instruction)} for p in prompts]
        results = []
        for output in llm.generate(inputs, params, use_tqdm=False):
            samples = [{"text": o.text.strip(), "num_tokens": len(o.token_ids), "finished": o.finish_reason == "stop"}
                       for o in output.outputs]
            results.append(samples if temperature > 0 else samples * n)
        return results

    return generate


def candidate_generator(policy: str, *, backend: str, n: int, seed: int, max_new_tokens: int, temperature: float,
                        top_p: float, dtype: str = "auto", device: str = "cpu", gpu_memory_utilization: float = 0.5):
    """``(generate(prompts) -> candidates per prompt, HF policy or None, tokenizer or None)`` for a backend: ``hf``
    (one ``generate`` call per prompt, its n samples batched) or ``vllm`` (many prompts per call). Prompts need
    ``id`` and ``instruction``; every prompt is seeded from (seed, prompt id)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got '{backend}'")
    if backend == "vllm":
        return vllm_candidate_generator(policy, n=n, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature,
                                        top_p=top_p, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization), None, None
    model, tokenizer = load_causal_lm(policy, dtype=dtype, device=device)

    def generate(prompts) -> list[list[dict]]:
        return [generate_candidates(model, tokenizer, p.instruction, n=n, seed=seed, prompt_id=p.id,
                                    max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
                for p in prompts]

    return generate, model, tokenizer
