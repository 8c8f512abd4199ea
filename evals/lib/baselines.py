"""The reference-free picks a judge must beat in best-of-n (random, longest, shortest) and the oracle."""

from __future__ import annotations

import statistics


def pick_quality(items: list[dict], picks: list[int]) -> dict:
    """Mean cosine and F1 to the reference of the picked candidate of each item."""
    return {"cosine": statistics.fmean(item["cosine"][p] for item, p in zip(items, picks)),
            "f1": statistics.fmean(item["f1"][p] for item, p in zip(items, picks))}


def baselines(items: list[dict]) -> dict:
    """The reference-free picks a judge must beat, and the oracle."""
    k = len(items[0]["candidates"])

    def picks(choose):
        return pick_quality(items, [choose(item) for item in items])

    return {"random (mean over candidates)": {"cosine": statistics.fmean(statistics.fmean(i["cosine"]) for i in items),
                                              "f1": statistics.fmean(statistics.fmean(i["f1"]) for i in items)},
            "longest": picks(lambda i: max(range(k), key=lambda c: len(i["candidates"][c]))),
            "shortest": picks(lambda i: min(range(k), key=lambda c: len(i["candidates"][c]))),
            "oracle by cosine": picks(lambda i: max(range(k), key=lambda c: i["cosine"][c]))}
