"""Scalar judge head: pairwise loss by hand, training on states, truncated-depth forward, save/load, length control,
and the feature cache it trains from."""

import math

import numpy as np
import pytest
import torch

from selfj_rlhf import SelfJudge
from selfj_rlhf.judge.self_judge import LENGTH_CONTROL_DEFAULT
from selfj_rlhf.core.errors import ConfigError
from selfj_rlhf.judge.features import FeatureCache, score_position_features
from selfj_rlhf.judge.head import LengthControl, ScalarHead, ScoreMap
from selfj_rlhf.training.scalar_head import ScalarHeadConfig, pairwise_loss, train_scalar_head, training_pairs
from selfj_rlhf.core.layers import layer_outputs

ITEMS = [("What is 2+2?", "4"), ("What is 2+2?", "Four, because two plus two is four."),
         ("Write a haiku about rain.", "Rain on the tin roof\nsoft drums counting out the night"),
         ("Explain recursion.", "Recursion is when a function calls itself " * 10)]


def test_pairwise_loss_by_hand():
    scores = torch.tensor([2.0, 0.5, -1.0])
    pairs = torch.tensor([[0, 1], [2, 1]])  # (better, worse)
    expected = (math.log(1 + math.exp(-(2.0 - 0.5))) + math.log(1 + math.exp(-(-1.0 - 0.5)))) / 2
    assert float(pairwise_loss(scores, pairs)) == pytest.approx(expected, rel=1e-6)


def test_training_pairs_margin_groups_and_length_ratio():
    labels = np.array([9.0, 5.0, 4.5, 8.0, 1.0])
    groups = ["a", "a", "a", "b", "b"]
    tokens = np.array([100, 100, 300, 50, 200])
    pairs = {tuple(p) for p in training_pairs(labels, groups, tokens, margin=1.0, max_length_ratio=None)}
    assert pairs == {(0, 1), (0, 2), (3, 4)}  # 5.0 vs 4.5 is under the margin; no pair crosses groups
    matched = {tuple(p) for p in training_pairs(labels, groups, tokens, margin=1.0, max_length_ratio=2.0)}
    assert matched == {(0, 1)}


def synthetic(n=240, hidden=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, hidden)).astype(np.float32) * 3 + 1
    direction = rng.normal(size=hidden)
    labels = np.clip(4.5 + (x - 1) @ direction / np.linalg.norm(direction), 0, 9)
    groups = [f"g{i // 6}" for i in range(n)]
    tokens = rng.integers(20, 400, size=n)
    teacher = x + rng.normal(scale=0.1, size=x.shape).astype(np.float32)
    return x, labels, groups, tokens, teacher


@pytest.mark.parametrize("loss", ["expected_mse", "pairwise", "mse+pairwise"])
@pytest.mark.parametrize("distill", [True, False])
def test_head_learns_a_linear_label(loss, distill):
    x, labels, groups, tokens, teacher = synthetic()
    cfg = ScalarHeadConfig(layer=1, loss=loss, distill=distill, steps=300)
    head, info = train_scalar_head(cfg, x, labels, groups, tokens, teacher if distill else None)
    predicted = head(torch.tensor(x)).detach().numpy()
    assert np.corrcoef(predicted, labels)[0, 1] > 0.95
    assert abs(predicted.mean() - labels.mean()) < 0.5  # on the label scale, pairwise included
    assert info["weight_decay"] in (1e-4, 1e-3, 1e-2, 1e-1)


def test_head_config_validation():
    with pytest.raises(ConfigError):
        ScalarHeadConfig(loss="hinge")
    with pytest.raises(ConfigError):
        ScalarHeadConfig(layer=0)
    x, labels, groups, tokens, _ = synthetic(n=24)
    with pytest.raises(ConfigError, match="teacher"):
        train_scalar_head(ScalarHeadConfig(layer=1), x, labels, groups, tokens, None)


def test_length_control_round_trip():
    tokens = np.array([10, 20, 40, 80, 160, 320])
    labels = 2.0 + 1.5 * np.log1p(tokens)
    fit = LengthControl.fit(labels, tokens)
    assert fit.slope == pytest.approx(1.5)
    controlled = fit.apply(labels, tokens)
    assert np.ptp(controlled) == pytest.approx(0, abs=1e-9)  # a pure length trend is removed
    assert LengthControl.from_dict(fit.to_dict()) == fit
    assert fit.apply([5.0], [math.expm1(fit.center)])[0] == pytest.approx(5.0)  # the centre length is unchanged
    with pytest.raises(ConfigError):
        LengthControl.from_dict({"kind": "cubic"})


def test_truncated_forward_equals_full_model_layer(tiny_judge):
    batch = tiny_judge._collate([tiny_judge.encode(i, r).input_ids for i, r in ITEMS])
    with torch.no_grad():
        full = tiny_judge.model(**batch, output_hidden_states=True).hidden_states
        for layers in ([1], [2], [2, 1]):
            for layer, out in zip(layers, layer_outputs(tiny_judge.model, layers, **batch)):
                assert torch.allclose(out, full[layer], atol=1e-5)
    with pytest.raises(ConfigError):
        layer_outputs(tiny_judge.model, [3], **batch)


def scalar_judge(tiny_judge, layer, seed=0, score_map=None):
    torch.manual_seed(seed)
    head = ScalarHead(tiny_judge.model.config.hidden_size, layer)
    return SelfJudge(tiny_judge.model, tiny_judge.tokenizer, max_length=tiny_judge.max_length,
                     base_model=tiny_judge.base_model, head=head, length_fit=LengthControl(0.7, 3.0),
                     score_map=score_map)


@pytest.mark.parametrize("layers", [(1,), (2,), (2, 1)])
@pytest.mark.parametrize("share_prefix", ["never", "always"])
def test_scalar_judge_scores_the_layer_states(tiny_judge, layers, share_prefix):
    judge = scalar_judge(tiny_judge, layers)
    judge.share_prefix = share_prefix
    details = judge.score_details(*zip(*ITEMS))
    for (instruction, response), detail in zip(ITEMS, details):
        ids = torch.tensor([judge.encode(instruction, response).input_ids])
        with torch.no_grad():
            hidden = tiny_judge.model(input_ids=ids, output_hidden_states=True).hidden_states
            expected = float(judge.head(torch.cat([hidden[layer][0, -1] for layer in layers])))
        assert detail.raw_score == pytest.approx(expected, abs=1e-4)
        assert detail.score == pytest.approx(min(9.0, max(0.0, expected)), abs=1e-4)  # no score map: clipped
        assert detail.probs == [] and detail.digit_mass == 1.0
        assert detail.response_tokens == len(tiny_judge.tokenizer.encode(response.strip(), add_special_tokens=False))


def test_layer_ensemble_is_the_mean_of_its_heads_and_round_trips(tiny_judge, tmp_path):
    singles = [scalar_judge(tiny_judge, layer, seed=layer) for layer in (1, 2)]
    ensemble = SelfJudge(tiny_judge.model, tiny_judge.tokenizer, max_length=tiny_judge.max_length,
                         base_model=tiny_judge.base_model, head=ScalarHead.average([j.head for j in singles]))
    raw = [[d.raw_score for d in judge.score_details(*zip(*ITEMS))] for judge in (*singles, ensemble)]
    assert raw[2] == pytest.approx(np.mean(raw[:2], axis=0), abs=1e-5)
    ensemble.save_pretrained(tmp_path / "judge")
    assert ensemble.judge_config()["head"] == {"kind": "scalar", "layers": [1, 2]}
    loaded = SelfJudge.from_pretrained(str(tmp_path / "judge"), length_control=False)
    assert loaded.head.layers == (1, 2)
    assert [d.raw_score for d in loaded.score_details(*zip(*ITEMS))] == pytest.approx(raw[2], abs=1e-5)
    states = np.random.default_rng(0).normal(size=(3, 3, tiny_judge.model.config.hidden_size))
    assert loaded.head.predict(loaded.head.inputs(states)) == pytest.approx(
        np.mean([j.head.predict(states[:, j.head.layers[0], :]) for j in singles], axis=0), abs=1e-5)
    with pytest.raises(ConfigError, match="distinct layers"):
        ScalarHead.average([singles[0].head, singles[0].head])


def test_scalar_judge_save_load_and_length_control(tiny_judge, tmp_path):
    judge = scalar_judge(tiny_judge, 1, score_map=ScoreMap(center=0.2, scale=0.5))
    judge.save_pretrained(tmp_path / "judge")
    assert (tmp_path / "judge" / "scalar_head.safetensors").is_file()
    assert not (tmp_path / "judge" / "model.safetensors").exists()  # the frozen base is referenced, not copied
    loaded = SelfJudge.from_pretrained(str(tmp_path / "judge"), length_control=False)
    assert loaded.head.layers == (1,) and loaded.length_fit == judge.length_fit and not loaded.length_control
    assert loaded.score_map == judge.score_map
    assert loaded.score(*zip(*ITEMS)) == pytest.approx(judge.score(*zip(*ITEMS)), abs=1e-5)
    assert SelfJudge.from_pretrained(str(tmp_path / "judge")).length_control is LENGTH_CONTROL_DEFAULT
    controlled = SelfJudge.from_pretrained(str(tmp_path / "judge"), length_control=True)
    for raw, detail in zip(judge.score_details(*zip(*ITEMS)), controlled.score_details(*zip(*ITEMS))):
        adjusted = raw.raw_score - 0.7 * (math.log1p(detail.response_tokens) - 3.0)
        assert detail.score == pytest.approx(float(judge.score_map.apply([adjusted])[0]), abs=1e-5)
        assert detail.raw_score == pytest.approx(raw.raw_score, abs=1e-5)
        assert 0 <= detail.score <= 9 and detail.length_control and not raw.length_control
    with pytest.raises(ValueError, match="length_control"):
        SelfJudge(tiny_judge.model, tiny_judge.tokenizer, length_control=True)


def test_feature_cache_matches_the_model_and_resumes(tiny_judge, tmp_path):
    instructions, responses = zip(*ITEMS)
    first = score_position_features(tiny_judge, instructions[:2], responses[:2], cache=tmp_path / "c", progress=False)
    assert len(list((tmp_path / "c").glob("part-*.npz"))) == 1
    both = score_position_features(tiny_judge, instructions, responses, cache=tmp_path / "c", progress=False,
                                   batch_size=1, flush_every=1)
    assert len(list((tmp_path / "c").glob("part-*.npz"))) == 3  # only the two missing rows were computed
    np.testing.assert_array_equal(both.states[:2], first.states)
    assert len(FeatureCache(tmp_path / "c")) == 4
    zero_shot = tiny_judge.score(instructions, responses)
    assert both.zero_shot_scores == pytest.approx(zero_shot, abs=1e-4)
    for index, (instruction, response) in enumerate(ITEMS):
        ids = torch.tensor([tiny_judge.encode(instruction, response).input_ids])
        with torch.no_grad():
            hidden = tiny_judge.model(input_ids=ids, output_hidden_states=True).hidden_states
        for layer in range(len(hidden)):
            np.testing.assert_allclose(both.states[index, layer], hidden[layer][0, -1].numpy(), atol=2e-2, rtol=1e-2)


def test_reward_length_control_follows_the_library_default(tiny_judge, tmp_path):
    from selfj_rlhf.core.errors import ConfigError
    from selfj_rlhf.judge.reward_signal import SelfJRewardConfig

    scalar_judge(tiny_judge, 1).save_pretrained(tmp_path / "judge")
    assert SelfJRewardConfig(judge=str(tmp_path / "judge")).load_judge().length_control is LENGTH_CONTROL_DEFAULT
    assert SelfJRewardConfig(judge=str(tmp_path / "judge"), length_control=True).load_judge().length_control is True
    assert SelfJRewardConfig(judge=str(tmp_path / "judge"), length_control=False).load_judge().length_control is False
    zero_shot = SelfJRewardConfig(judge=str(tiny_judge.base_model), max_judge_length=256)
    assert zero_shot.load_judge().length_control is False
    with pytest.raises(ConfigError, match="not trained with a length fit"):
        SelfJRewardConfig(judge=str(tiny_judge.base_model), length_control=True).load_judge()


def test_truncated_features_equal_the_full_forward_below_the_cut(tiny_judge, tmp_path):
    instructions, responses = zip(*ITEMS)
    full = score_position_features(tiny_judge, instructions, responses, cache=tmp_path / "full", progress=False)
    cut = score_position_features(tiny_judge, instructions, responses, cache=tmp_path / "cut", progress=False,
                                  max_layer=1)
    assert cut.states.shape[1] == 2  # the embedding output and layer 1; layer 2 never ran
    np.testing.assert_allclose(cut.states.astype(np.float32), full.states[:, :2].astype(np.float32), atol=1e-3)
    assert np.isnan(cut.digit_probs).all()
    with pytest.raises(ValueError, match="max_layer"):
        score_position_features(tiny_judge, instructions, responses, cache=tmp_path / "cut", max_layer=2)


def test_score_map_is_increasing_bounded_and_fits_the_labels():
    rng = np.random.default_rng(0)
    raw = rng.normal(4.0, 3.0, 400)
    labels = np.clip(9 / (1 + np.exp(-(raw - 4.5) / 1.5)) + rng.normal(0, 0.3, 400), 0, 9)
    fitted = ScoreMap.fit(raw, labels)
    assert fitted.center == pytest.approx(4.5, abs=0.2) and fitted.scale == pytest.approx(1.5, abs=0.2)
    grid = fitted.apply(np.linspace(-1e3, 1e3, 2001))
    assert np.all(np.diff(grid) >= 0) and grid.min() >= 0 and grid.max() <= 9
    assert ScoreMap.from_dict(fitted.to_dict()) == fitted
    with pytest.raises(ConfigError, match="scale"):
        ScoreMap.from_dict({"kind": "logistic", "center": 0.0, "scale": 0.0})
    with pytest.raises(ValueError, match="two rows"):
        ScoreMap.fit([1.0, 1.0], [2.0, 3.0])


def train_tiny_scalar_judge(tiny_model_dir, tmp_path, output: str = "judge", questions: int = 6, answers: int = 5,
                            **options):
    """A scalar judge trained by the recipe on ``questions`` x ``answers`` synthetic label rows (longer answers get
    higher labels), its states cached in ``tmp_path``; ``options`` go to ``JudgeTrainingConfig``."""
    import json

    from selfj_rlhf.training.distill import JudgeTrainingConfig
    from selfj_rlhf.training.train_judge import train_scalar_judge

    rows = [{"instruction": f"Question {q}?", "reference": f"The answer to {q} is long and careful.",
             "response": "word " * (3 + 5 * k) + str(q), "group": str(q), "score_label": float(min(9, 2 * k))}
            for q in range(questions) for k in range(answers)]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = JudgeTrainingConfig(labels=str(labels), base_model=str(tiny_model_dir), head="scalar", head_layer=1,
                              head_loss="pairwise", beta=0.0, alpha=1.0, max_length=256, head_weight_decay=0.1,
                              feature_cache=str(tmp_path / "features"), **options)
    return rows, train_scalar_judge(cfg, tmp_path / output)


def test_scalar_judge_recipe_saves_a_score_map_and_scores_on_0_9(tiny_model_dir, tmp_path):
    import json

    rows, out = train_tiny_scalar_judge(tiny_model_dir, tmp_path)
    config = json.loads((out / "selfj_config.json").read_text())
    assert config["score_map"]["kind"] == "logistic" and config["training"]["design"]["weight_decay"] == 0.1
    judge = SelfJudge.from_pretrained(str(out))
    details = judge.score_details([r["instruction"] for r in rows], [r["response"] for r in rows])
    assert all(0 <= d.score <= 9 for d in details)


def test_train_judge_saves_the_echo_guard_and_trains_the_same_head(tiny_model_dir, tmp_path):
    import json

    from safetensors.torch import load_file

    heads = {}
    for guard in (False, True):
        _, out = train_tiny_scalar_judge(tiny_model_dir, tmp_path, f"judge-{guard}", questions=4, answers=4,
                                         echo_guard=guard)
        config = json.loads((out / "selfj_config.json").read_text())
        assert ("echo_guard" in config) == guard
        heads[guard] = load_file(str(out / "scalar_head.safetensors"))
    assert heads[False].keys() == heads[True].keys()
    assert all(bool((heads[False][k] == heads[True][k]).all()) for k in heads[False])  # the guard is not trained
