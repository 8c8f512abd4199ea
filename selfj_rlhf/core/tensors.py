"""Left padding of token id lists: attention masks and position ids that count real tokens only."""

from __future__ import annotations

from typing import Sequence

import torch


def left_padding(lengths: Sequence[int]) -> dict[str, torch.Tensor]:
    """Attention mask and position ids of left-padded rows; positions count real tokens only, so padding does
    not shift the scores."""
    width = max(lengths)
    attention_mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        attention_mask[row, width - length:] = 1
    return {"attention_mask": attention_mask, "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0)}


def left_pad(sequences: Sequence[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-pad token id lists (see ``left_padding``)."""
    padding = left_padding([len(ids) for ids in sequences])
    input_ids = torch.full(padding["attention_mask"].shape, pad_token_id, dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, input_ids.shape[1] - len(ids):] = torch.tensor(ids, dtype=torch.long)
    return {"input_ids": input_ids, **padding}
