"""evals/own_samples: a layer-ensemble design is the mean of one head per layer, each fitted as the single-layer
design would be, and mixing the arena pool in repeats only the training rows."""

import numpy as np
import pytest

from evals.own_samples import fit_design


def synthetic(prompts=12, per_prompt=6, layers=4, hidden=8, seed=0):
    rng = np.random.default_rng(seed)
    n = prompts * per_prompt
    states = rng.normal(size=(n, layers, hidden)).astype(np.float16)
    labels = states[:, 2, 0].astype(float) + states[:, 3, 1] + 0.3 * rng.normal(size=n)
    rows = [{"group": f"p{i // per_prompt}", "kind": "pool", "score_label": float(4.5 + y)} for i, y in enumerate(labels)]
    return rows, states, rng.integers(20, 200, size=n)


def test_layer_ensemble_is_the_mean_of_single_layer_heads():
    own = synthetic()
    train = np.array([r["group"] != "p0" for r in own[0]])
    design = {"loss": "pairwise", "weight_decay": 0.3}
    ensemble, length_fit = fit_design({**design, "layers": (2, 3)}, own, None, train, layer=3)
    singles = [fit_design(design, own, None, train, layer=layer)[0] for layer in (2, 3)]
    assert ensemble.layers == (2, 3) and [head.layers for head in singles] == [(2,), (3,)]
    states = own[1]
    expected = np.mean([head.predict(head.inputs(states)) for head in singles], axis=0)
    assert ensemble.predict(ensemble.inputs(states)) == pytest.approx(expected, abs=1e-4)
    assert length_fit == fit_design(design, own, None, train, layer=2)[1]


def test_arena_mix_repeats_the_training_rows_only():
    own, arena = synthetic(seed=1), synthetic(prompts=4, seed=2)
    train = np.array([r["group"] in {"p1", "p2", "p3"} for r in own[0]])
    head, length_fit = fit_design({"loss": "pairwise", "weight_decay": 0.3, "arena_copies": 2, "layers": (2, 3)},
                                  own, arena, train, layer=3)
    assert head.layers == (2, 3)
    tokens = np.concatenate([own[2][train]] * 2 + [arena[2]])
    labels = [r["score_label"] for r in own[0] if r["group"] in {"p1", "p2", "p3"}] * 2 + \
        [r["score_label"] for r in arena[0]]
    from selfj_rlhf.judge.head import LengthControl

    assert length_fit == LengthControl.fit(labels, tokens)
