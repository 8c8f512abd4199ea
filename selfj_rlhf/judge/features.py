"""Score-position hidden states of a frozen judge model, cached on disk and keyed by what produced them.

A scalar judge head (``selfj_rlhf.training.scalar_head``) reads one layer's hidden state at the position where the
rating begins. The base model is frozen, so that state depends only on (model, template, max_length,
sanitize, instruction, response, reference): it is computed once, stored with every layer, and every head,
loss or layer choice trained or measured afterwards is a matrix product over the cache.

The cache is a directory of ``part-NNNNN.npz`` files, each written atomically after a few batches. A killed
run keeps every finished part; a rerun (or another job over overlapping texts) computes only the missing
keys. Beside the states, each row keeps the zero-shot digit distribution of the last layer (the SELF-J
expected score, for free), the response length in tokens and whether the response was truncated.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.layers import StopForward, base_model, decoder_layers
from ..core.tensors import left_pad


@dataclass
class Features:
    """Cached rows, in the order they were asked for.

    Attributes:
        states: ``[N, layers + 1, hidden]`` float16: index 0 is the embedding output, index ``l`` the output of
            decoder layer ``l`` (the last one after the final norm, as transformers returns it).
        digit_probs: ``[N, 10]`` zero-shot 0-9 distribution at the score position.
        response_tokens: ``[N]`` response length in tokens before truncation.
        truncated: ``[N]`` whether the response was cut to fit ``max_length``.
    """

    states: np.ndarray
    digit_probs: np.ndarray
    response_tokens: np.ndarray
    truncated: np.ndarray

    @property
    def zero_shot_scores(self) -> np.ndarray:
        return self.digit_probs @ np.arange(10, dtype=np.float32)


def feature_key(judge, instruction: str, response: str, reference: str | None, max_layer: int | None = None) -> str:
    fields = [judge.base_model, judge.template.name, judge.max_length, judge.sanitize, instruction, response, reference]
    if max_layer is not None:  # a truncated forward stores fewer layers: never mixed with full rows
        fields.append(max_layer)
    payload = json.dumps(fields, ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def save_part(directory: Path, prefix: str, **arrays: np.ndarray) -> Path:
    """Write ``arrays`` as the next ``<prefix>-NNNNN.npz`` of a cache directory: to a temporary name, then renamed, so
    a kill leaves whole parts only."""
    index = len(list(directory.glob(f"{prefix}-*.npz")))
    while (directory / f"{prefix}-{index:05d}.npz").exists():
        index += 1
    tmp = directory / f".{prefix}-{index:05d}.tmp.npz"
    np.savez(tmp, **arrays)
    return tmp.replace(directory / f"{prefix}-{index:05d}.npz")


class FeatureCache:
    """Append-only directory of feature parts (see the module docstring)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._rows: dict[str, tuple] = {}
        for part in sorted(self.directory.glob("part-*.npz")):
            with np.load(part) as data:
                for index, key in enumerate(data["keys"].tolist()):
                    self._rows[key] = (data["states"][index], data["digit_probs"][index],
                                       int(data["response_tokens"][index]), bool(data["truncated"][index]))

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, rows: dict[str, tuple]) -> None:
        """Store finished rows as one new part, written to a temporary name and renamed."""
        if not rows:
            return
        keys = list(rows)
        save_part(self.directory, "part", keys=np.array(keys), states=np.stack([rows[k][0] for k in keys]),
                  digit_probs=np.stack([rows[k][1] for k in keys]),
                  response_tokens=np.array([rows[k][2] for k in keys]), truncated=np.array([rows[k][3] for k in keys]))
        self._rows.update(rows)

    def get(self, keys: Sequence[str]) -> Features:
        rows = [self._rows[key] for key in keys]
        return Features(states=np.stack([r[0] for r in rows]), digit_probs=np.stack([r[1] for r in rows]),
                        response_tokens=np.array([r[2] for r in rows]), truncated=np.array([r[3] for r in rows]))


def _truncated_states(judge, batch: dict, max_layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, max_layer + 1, hidden]`` score-position states from a forward that stops after layer ``max_layer``,
    and NaN digit probabilities (the LM head never runs)."""

    base = base_model(judge.model)
    layers = decoder_layers(base)
    captured: list[torch.Tensor] = []

    def embedding(module, args, kwargs):
        captured.append((args[0] if args else kwargs["hidden_states"])[:, -1, :])

    def output(module, args, kwargs, result):
        captured.append((result[0] if isinstance(result, tuple) else result)[:, -1, :])

    def stop(module, args, kwargs):
        raise StopForward

    handles = [layers[0].register_forward_pre_hook(embedding, with_kwargs=True),
               layers[max_layer].register_forward_pre_hook(stop, with_kwargs=True)]
    handles += [layers[i].register_forward_hook(output, with_kwargs=True) for i in range(max_layer)]
    try:
        base.model(**batch, use_cache=False)
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    states = torch.stack(captured, 1)
    return states, torch.full((states.shape[0], 10), float("nan"))


@torch.inference_mode()
def score_position_features(judge, instructions: Sequence[str], responses: Sequence[str],
                            references: Sequence[str | None] | None = None, *, cache: FeatureCache | str | Path,
                            batch_size: int = 8, flush_every: int = 8, progress: bool = True,
                            max_layer: int | None = None) -> Features:
    """Hidden states of every layer at the score position of each judge prompt (see ``Features``).

    Rows already in ``cache`` are not recomputed; new rows are stored every ``flush_every`` batches, so a kill
    loses at most that much work. Batches are sorted by length to keep padding small. ``max_layer`` (below the
    model's layer count) stops each forward after that decoder layer: ``states`` then hold layers
    ``0..max_layer`` only, ``digit_probs`` are NaN, and the layers above never run (a head on a middle layer
    needs no more).
    """
    from tqdm.auto import tqdm

    if not isinstance(cache, FeatureCache):
        cache = FeatureCache(cache)
    refs = list(references) if references is not None else [None] * len(responses)
    if not len(instructions) == len(responses) == len(refs):
        raise ValueError(f"{len(instructions)} instructions, {len(responses)} responses, {len(refs)} references")
    if max_layer is not None and not 1 <= max_layer < judge.model.config.num_hidden_layers:
        raise ValueError(f"max_layer must be in 1..{judge.model.config.num_hidden_layers - 1}, got {max_layer}")
    keys = [feature_key(judge, i, r, ref, max_layer) for i, r, ref in zip(instructions, responses, refs)]
    todo: dict[str, tuple[str, str, str | None]] = {}
    for key, item in zip(keys, zip(instructions, responses, refs)):
        if key not in cache and key not in todo:
            todo[key] = item
    if todo:
        encoded = {key: judge.encode(*item) for key, item in todo.items()}
        lengths = {key: len(judge.tokenizer.encode(judge.clean(item[1]), add_special_tokens=False))
                   for key, item in todo.items()}
        order = sorted(encoded, key=lambda key: len(encoded[key].input_ids))
        pad = judge.tokenizer.pad_token_id if judge.tokenizer.pad_token_id is not None else 0
        digit_index = torch.tensor(judge.digit_ids)
        pending: dict[str, tuple] = {}
        batches = range(0, len(order), batch_size)
        for number, start in enumerate(tqdm(batches, desc="features", unit="batch", disable=not progress), 1):
            chunk = order[start:start + batch_size]
            batch = {k: v.to(judge.device) for k, v in left_pad([encoded[k].input_ids for k in chunk], pad).items()}
            judge.scored_tokens += int(batch["attention_mask"].sum())
            if max_layer is None:
                out = judge.model(**batch, output_hidden_states=True, use_cache=False, logits_to_keep=1)
                hidden = torch.stack([h[:, -1, :] for h in out.hidden_states], 1)
                digits = out.logits[:, -1, :].float()[:, digit_index.to(out.logits.device)]
                probs = torch.softmax(digits, -1).cpu().numpy()
            else:
                hidden, nan_probs = _truncated_states(judge, batch, max_layer)
                probs = nan_probs.numpy()
            states = hidden.to(torch.float16).cpu().numpy()
            for row, key in enumerate(chunk):
                pending[key] = (states[row], probs[row], lengths[key], encoded[key].truncated)
            if number % flush_every == 0:
                cache.add(pending)
                pending = {}
        cache.add(pending)
    return cache.get(keys)
