"""Arena-bench items and judge scores cached on disk by judge and item set, so reruns are cheap."""

from __future__ import annotations

import json
import random
from pathlib import Path

from selfj_rlhf.core.io import atomic_write_json
from selfj_rlhf.data.datasets import iter_records


def load_arena(path: str, max_questions: int, seed: int) -> list[dict]:
    rows = [row for _, row in iter_records(path)]
    questions = sorted({r["question_id"] for r in rows})
    chosen = set(random.Random(seed).sample(questions, min(max_questions, len(questions))))
    return [r for r in rows if r["question_id"] in chosen]


class ScoreCache:
    def __init__(self, directory: str, tag: str, cached_only: bool = False):
        self.directory = Path(directory)
        self.tag = tag
        self.cached_only = cached_only

    def get(self, key: str, compute):
        """Cached scores for ``key``, computing and caching them first (None under ``cached_only``)."""
        path = self.directory / f"{self.tag}__{key.replace('/', '_')}.json"
        if path.is_file():
            return json.loads(path.read_text())
        if self.cached_only:
            return None
        values = compute()
        atomic_write_json(path, values, indent=None)
        return values


def judge_scores(spec: str, items: list[tuple[str, str, str | None]], args) -> list[float]:
    from selfj_rlhf import SelfJudge

    judge = SelfJudge.from_pretrained(spec, max_length=args.max_length)
    instructions, responses, references = zip(*items)
    refs = None if references[0] is None else list(references)
    return judge.score(list(instructions), list(responses), refs, batch_size=args.batch_size)
