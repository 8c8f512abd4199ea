"""AlpacaEval harness: generate ``model_outputs.json``, evaluate it with alpaca_eval's Python API against
explicitly passed reference outputs, and lay out a leaderboard submission bundle.

alpaca_eval's default loader reads the references through a dataset script that ``datasets`` >= 4
rejects, so the references are always passed as a file: by default ``preset:alpaca_eval`` (the AlpacaEval 2
reference, GPT-4 Turbo's outputs, fetched as a file from the ``tatsu-lab/alpaca_eval`` dataset repo); offline,
``preset:alpaca_eval=<path>`` or the path of a copy of ``gpt4_1106_preview_outputs.json`` (AlpacaEval 2) or
``text_davinci_003_outputs.json`` (AlpacaEval 1).

Annotators (``--annotator``):

* an alpaca_eval config name or path, e.g. ``weighted_alpaca_eval_gpt4_turbo`` (the official AlpacaEval 2
  one; needs ``OPENAI_API_KEY``);
* ``local:<model spec>``: offline. Writes an annotator config into the run directory (alpaca_eval's
  weighted GPT-4 Turbo prompt, ``logprob_parser`` over the tokens ``m``/``M``) and runs it on a local
  HF model that returns next-token log-probabilities in one forward pass. alpaca_eval's own
  ``huggingface_local_completions`` samples text, which a small local model rarely formats as one
  identifier, so the completion function is supplied by this module;
* ``selfj:<judge spec>``: the SELF-J judge scores both outputs pointwise; the preference is
  ``1 + sigmoid((score_model - score_reference) / temperature)``. NOT independent of a policy trained
  or reranked with the same judge: use it for smoke tests and sanity checks, never as the headline.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..core.errors import ConfigError, RecordError
from ..core.io import atomic_write_json, atomic_write_text, require_str
from ..core.models import load_causal_lm, validate_model_spec
from ..data.datasets import iter_records
from ..judge.directory import OTHER_MODELS, POOL_JUDGE, warn_if_outside_role
from ..judge.self_judge import SelfJudge

LOCAL_PREFIX, SELFJ_PREFIX = "local:", "selfj:"
OFFICIAL_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"


def _require_alpaca_eval():
    try:
        import alpaca_eval  # noqa: F401  (imports pkg_resources: setuptools < 81, see the alpaca-eval extra)
        from alpaca_eval import main as alpaca_main
    except ImportError as err:
        raise ConfigError(f"alpaca_eval is not importable ({err}); install the extra: pip install -e '.[alpaca-eval]'") from None
    return alpaca_main


def load_outputs(path: str | Path, *, role: str) -> list[dict]:
    """Validated AlpacaEval-format rows (``instruction``, ``output``; ``generator`` and ``dataset`` kept)."""
    rows, seen = [], {}
    for line, row in iter_records(path):
        instruction = require_str(row, "instruction", path, line)
        output = require_str(row, "output", path, line, allow_empty=True)
        if instruction in seen:
            raise RecordError(path, line, "instruction", f"duplicate instruction (first on line {seen[instruction]})")
        seen[instruction] = line
        rows.append({"instruction": instruction, "output": output,
                     "generator": row.get("generator") or role, "dataset": row.get("dataset", "alpaca_eval")})
    if not rows:
        raise RecordError(path, None, None, f"no {role} outputs")
    return rows


def matched_references(model_rows: list[dict], reference_path: str | Path) -> list[dict]:
    """The reference rows of the model's instructions, in the model's order (an unknown instruction is an error)."""
    references = {r["instruction"]: r for r in load_outputs(reference_path, role="reference")}
    missing = [r["instruction"] for r in model_rows if r["instruction"] not in references]
    if missing:
        raise ConfigError(f"{len(missing)} model instructions are not in {reference_path} (first: {missing[0][:80]!r})")
    return [references[r["instruction"]] for r in model_rows]


# --- the offline local-model annotator ---------------------------------------------------------------------

LOCAL_PROMPT = "alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt"  # alpaca_eval's weighted AlpacaEval 2 prompt


class LocalLogprobCompletions:
    """alpaca_eval ``fn_completions`` for a local causal LM: the chat-formatted annotator prompt, one forward
    pass, and the log-probabilities of the identifier tokens in the shape ``logprob_parser`` reads."""

    def __init__(self):
        self._loaded: dict[str, tuple] = {}

    def _model(self, spec: str):
        if spec not in self._loaded:
            self._loaded[spec] = load_causal_lm(spec)
        return self._loaded[spec]

    def __call__(self, prompts: Sequence[str], model_name: str, tokens: Sequence[str] = ("m", "M"),
                 max_length: int = 4096, **_: Any) -> dict[str, list]:
        import torch
        from alpaca_eval.utils import prompt_to_chatml

        model, tokenizer = self._model(model_name)
        token_ids = {}
        for token in tokens:
            ids = tokenizer.encode(token, add_special_tokens=False)
            if len(ids) != 1:
                raise ConfigError(f"annotator token {token!r} is {len(ids)} tokens for {model_name}; need one")
            token_ids[token] = ids[0]
        completions, completions_all = [], []
        for prompt in prompts:
            messages = prompt_to_chatml(prompt)
            if getattr(tokenizer, "chat_template", None):
                text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                ids = tokenizer.encode(text, add_special_tokens=False)
            else:
                ids = tokenizer.encode("\n\n".join(m["content"] for m in messages), add_special_tokens=True)
            ids = ids[-max_length:]  # keep the end: the request for the identifier is there
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([ids], device=model.device), logits_to_keep=1).logits[0, -1]
            logprobs = torch.log_softmax(logits.float(), -1)
            top = [{"token": t, "logprob": float(logprobs[i])} for t, i in token_ids.items()]
            best = max(top, key=lambda t: t["logprob"])["token"]
            completions.append(best)
            completions_all.append({"text": best, "logprobs": {"content": [{"token": best, "top_logprobs": top}]}})
        return {"completions": completions, "completions_all": completions_all}


def write_local_annotator_config(run_dir: Path, model_spec: str) -> Path:
    """``<run_dir>/annotator_local/configs.yaml`` (+ its prompt) for ``model_spec``; returns the directory."""
    import yaml
    from alpaca_eval import constants

    directory = run_dir / "annotator_local"
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(constants.EVALUATORS_CONFIG_DIR) / LOCAL_PROMPT, directory / "prompt.txt")
    config = {"selfj_local_logprob": {
        "prompt_template": "annotator_local/prompt.txt",  # alpaca_eval resolves it from the config's grandparent
        "completions_kwargs": {"model_name": model_spec, "tokens": ["m", "M"]},
        "fn_completion_parser": "logprob_parser",
        "completion_parser_kwargs": {"numerator_token": "m", "denominator_tokens": ["m", "M"], "is_binarize": False},
        "completion_key": "completions_all",
        "batch_size": 1,
        "pretty_name": f"local {model_spec} (logprob of m/M)",
    }}
    atomic_write_text(directory / "configs.yaml",
                      "# Offline AlpacaEval annotator written by selfj_rlhf; fn_completions is supplied at run time\n"
                      "# (selfj_rlhf.rlhf.alpacaeval.LocalLogprobCompletions), as alpaca_eval only resolves built-in names.\n"
                      + yaml.safe_dump(config, sort_keys=False))
    return directory


# --- the SELF-J (not independent) annotator ----------------------------------------------------------------

class SelfJPairwiseAnnotator:
    """alpaca_eval ``Annotator`` built on the SELF-J judge: pointwise scores turned into a soft preference.

    Preference 1 means the reference (output_1) is better, 2 the model (output_2); a tie gives 1.5.
    """

    def __init__(self, annotators_config: str = "selfj", judge: str = POOL_JUDGE, temperature: float = 1.0,
                 batch_size: int = 8, max_length: int = 2048, **_: Any):
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.judge_spec, self.temperature, self.batch_size, self.max_length = judge, temperature, batch_size, max_length
        warn_if_outside_role(judge, OTHER_MODELS, where="the AlpacaEval annotator")

    def annotate_head2head(self, outputs_1, outputs_2, **_: Any) -> list[dict]:
        first, second = outputs_1.to_dict("records"), outputs_2.to_dict("records")
        judge = SelfJudge.from_pretrained(self.judge_spec, max_length=self.max_length)
        instructions = [r["instruction"] for r in first]
        score_1 = judge.score(instructions, [r["output"] for r in first], batch_size=self.batch_size)
        score_2 = judge.score(instructions, [r["output"] for r in second], batch_size=self.batch_size)
        annotations = []
        for r1, r2, s1, s2 in zip(first, second, score_1, score_2):
            preference = 1.5 if r1["output"] == r2["output"] else 1 + 1 / (1 + math.exp(-(s2 - s1) / self.temperature))
            annotations.append({"instruction": r1["instruction"], "output_1": r1["output"], "output_2": r2["output"],
                                "generator_1": r1["generator"], "generator_2": r2["generator"],
                                "dataset": r2.get("dataset", "alpaca_eval"), "annotator": f"selfj:{self.judge_spec}",
                                "preference": preference, "selfj_score_1": s1, "selfj_score_2": s2})
        return annotations


# --- evaluate ----------------------------------------------------------------------------------------------

@dataclass
class EvaluateConfig:
    """One AlpacaEval evaluation of a model_outputs.json."""

    model_outputs: str = field(default="runs/alpaca_eval/model_outputs.json", metadata={"help": "AlpacaEval-format outputs."})
    reference_outputs: str = field(default="preset:alpaca_eval", metadata={
        "help": "Reference outputs: a file or dataset spec (AlpacaEval 2: GPT-4 Turbo, the default preset; "
                "AlpacaEval 1: text_davinci_003_outputs.json)."})
    annotator: str = field(default=OFFICIAL_ANNOTATOR, metadata={
        "help": "alpaca_eval config name/path (API key needed), local:<model spec> (offline), or selfj:<judge spec> "
                "(not independent)."})
    name: str | None = field(default=None, metadata={"help": "Leaderboard name (default: the outputs' generator)."})
    max_instances: int | None = field(default=None, metadata={"help": "Evaluate only the first N outputs."})
    selfj_temperature: float = field(default=1.0, metadata={"help": "selfj annotator: score-difference temperature."})
    output_dir: str = field(default="runs/alpaca_eval/eval", metadata={"help": "Annotations and leaderboard go here."})


def _annotator_setup(cfg: EvaluateConfig, run_dir: Path) -> tuple[str, dict]:
    """(annotators_config for alpaca_eval, extra kwargs of ``evaluate``) for the chosen annotator."""
    if cfg.annotator.startswith(SELFJ_PREFIX):
        return "selfj", {"Annotator": SelfJPairwiseAnnotator, "judge": cfg.annotator[len(SELFJ_PREFIX):],
                         "temperature": cfg.selfj_temperature}
    if cfg.annotator.startswith(LOCAL_PREFIX):
        spec = cfg.annotator[len(LOCAL_PREFIX):]

        validate_model_spec(spec)
        directory = write_local_annotator_config(run_dir, spec)
        return str(directory / "configs.yaml"), {"fn_completions": LocalLogprobCompletions(),
                                                 "base_dir": str(run_dir)}
    if not os.environ.get("OPENAI_API_KEY") and not os.environ.get("OPENAI_CLIENT_CONFIG_PATH"):
        raise ConfigError(f"annotator {cfg.annotator} calls the OpenAI API: set OPENAI_API_KEY, or use an offline "
                          "annotator (local:<model spec>, or selfj:<judge spec> for a non-independent check)")
    return cfg.annotator, {}


def length_control_weights() -> tuple[bool, str | None]:
    """Whether the length-controlled GLM's data (``df_gamed.csv`` of the alpaca_eval hub dataset) can be had:
    from the cache when offline, else by download; otherwise a note saying why the offline GLM is used."""
    from huggingface_hub import constants, hf_hub_download

    try:
        hf_hub_download("tatsu-lab/alpaca_eval", "df_gamed.csv", repo_type="dataset",
                        local_files_only=constants.HF_HUB_OFFLINE)
        return True, None
    except Exception as err:  # offline and not cached, or no network
        return False, (f"the official length-controlled GLM's data (tatsu-lab/alpaca_eval df_gamed.csv) could not be "
                       f"loaded ({type(err).__name__})")


OFFLINE_LC_GLM = "length_controlled_minimal"
MIN_LC_INSTANCES = 10  # the GLM is chosen by 5-fold cross-validation over instances


def offline_length_controlled_winrate(annotations: Sequence[dict]) -> dict:
    """AlpacaEval's length-controlled win rate from these annotations alone, for when its hub data is missing.

    alpaca_eval's own ``length_controlled_minimal`` GLM (preference ~ tanh(standardised length difference) + the
    model's term), fitted with alpaca_eval's own routine and predicted at zero length difference. The official
    GLM adds each instruction's difficulty, estimated from the leaderboard's models (the hub file), so the two
    figures are not interchangeable; the standard error of a prediction without per-instruction terms would be
    zero, so none is given. ``lc_length_weight`` is the fitted weight of the length term (positive: the
    annotator prefers the longer output)."""
    import pandas as pd
    from alpaca_eval.metrics.glm_winrate import GLM_INFO, fit_LogisticRegressionCV, make_dmatrix_for_model

    frame = pd.DataFrame(list(annotations))
    frame = frame[frame["preference"].notna()]
    delta = frame["output_1"].str.len() - frame["output_2"].str.len()
    if len(frame) < MIN_LC_INSTANCES or not delta.std() > 0:
        return {"length_controlled_winrate": None, "lc_standard_error": None,
                "lc_note": f"no length-controlled win rate: {len(frame)} annotated instances (the GLM needs at "
                           f"least {MIN_LC_INSTANCES}, with outputs of different lengths)"}
    # the same features as alpaca_eval's GLM: preference in [0, 1] (0, an invalid annotation, counts as a tie)
    data = pd.DataFrame({"preference": frame["preference"].astype(float).replace({0.0: 1.5}).to_numpy() - 1,
                         "std_delta_len": (delta / delta.std()).to_numpy(), "not_gamed_baseline": True})
    glm = GLM_INFO[OFFLINE_LC_GLM]
    train, test = make_dmatrix_for_model(data, data[["not_gamed_baseline"]].assign(std_delta_len=0.0),
                                         formula=glm["formula"])
    model = fit_LogisticRegressionCV(train, "preference", is_ytrue_proba=True, **glm["kwargs"])
    weights = dict(zip(test.columns, model.coef_[0]))
    return {"length_controlled_winrate": float(model.predict_proba(test)[:, 1].mean() * 100),
            "lc_standard_error": None, "lc_glm": f"{OFFLINE_LC_GLM} (offline: no instruction difficulty)",
            "lc_length_weight": -float(weights["np.tanh(std_delta_len)"])}


def evaluate_outputs(cfg: EvaluateConfig) -> dict:
    """Annotate model vs reference outputs with alpaca_eval and compute win rates; returns the leaderboard row."""
    alpaca_main = _require_alpaca_eval()
    import pandas as pd

    model_rows = load_outputs(cfg.model_outputs, role="model")
    if cfg.max_instances is not None:
        model_rows = model_rows[:cfg.max_instances]
    reference_rows = matched_references(model_rows, cfg.reference_outputs)
    name = cfg.name or model_rows[0]["generator"]
    for row in model_rows:
        row["generator"] = name
    run_dir = Path(cfg.output_dir).resolve()  # alpaca_eval resolves the local config's paths against base_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    annotators_config, extra = _annotator_setup(cfg, run_dir)

    def run(metric: str, metric_kwargs: dict):
        return alpaca_main.evaluate(
            model_outputs=pd.DataFrame(model_rows), reference_outputs=pd.DataFrame(reference_rows),
            annotators_config=annotators_config, name=name, output_path=None, precomputed_leaderboard=None,
            is_return_instead_of_print=True, fn_metric=metric, metric_kwargs=metric_kwargs,
            sort_by="win_rate", is_cache_leaderboard=False, **extra)

    lc_available, lc_note = length_control_weights()
    if lc_available:
        leaderboard, annotations = run("get_length_controlled_winrate", {"save_weights_dir": None})
    else:
        leaderboard, annotations = run("get_winrate", {})
    annotations = pd.DataFrame(annotations).to_dict("records")
    atomic_write_text(run_dir / "annotations.json", json.dumps(annotations, indent=2, default=str) + "\n")
    atomic_write_text(run_dir / "leaderboard.csv", leaderboard.to_csv())
    row = {k: (None if isinstance(v, float) and math.isnan(v) else v)
           for k, v in leaderboard.loc[name].to_dict().items()}
    if not lc_available:
        row.update(offline_length_controlled_winrate(annotations))
    result = {"name": name, "annotator": cfg.annotator, "reference_outputs": cfg.reference_outputs,
              "instances": len(model_rows), **row,
              **annotator_independence(cfg.annotator)}
    if lc_note:
        result["note"] = f"{lc_note}; {result.get('lc_glm') or 'plain win rate only'}"
    atomic_write_json(run_dir / "result.json", result)
    return result


def annotator_independence(annotator: str) -> dict:
    """Whether an annotator is independent of the policies it judges, and why not: only the official (API)
    annotators are. A SELF-J judge is what a SELF-J policy was trained or reranked with; a local model is an
    offline stand-in, often the policy's own base model, whose verdicts follow its own preferences."""
    if annotator.startswith(SELFJ_PREFIX):
        return {"independent_annotator": False,
                "independence_note": "the SELF-J judge itself: not independent of a SELF-J-trained or -reranked policy"}
    if annotator.startswith(LOCAL_PREFIX):
        return {"independent_annotator": False,
                "independence_note": "a local model annotator: an offline stand-in, not independent of a policy "
                                     "built on the same model, and not the leaderboard's annotator"}
    return {"independent_annotator": True}


# --- bundle ------------------------------------------------------------------------------------------------

BUNDLE_README = """# AlpacaEval leaderboard submission: {name}

Made by selfj_rlhf (`selfj alpaca-eval bundle`). Layout mirrors the alpaca_eval repository:

- `src/alpaca_eval/models_configs/{name}/configs.yaml`: the model config (`fn_completions: null`: outputs are
  precomputed, not generated by alpaca_eval).
- `results/{name}/model_outputs.json`: the {count} outputs.
- `results/{name}/{annotator_dir}/annotations.json`: the annotations these numbers come from.
- `leaderboard_row.csv`: the row to add to `src/alpaca_eval/leaderboards/data_AlpacaEval_2/{annotator_dir}_leaderboard.csv`.

Annotator: `{annotator}`{independence}

## Submission checklist
1. [ ] Outputs cover all 805 AlpacaEval instructions (this bundle: {count}).
2. [ ] Annotated with the official annotator (`weighted_alpaca_eval_gpt4_turbo` for AlpacaEval 2) against the
       official GPT-4 Turbo reference outputs; offline or SELF-J annotations are not accepted on the leaderboard.
3. [ ] Fill `pretty_name` and `link` in the model config (a page describing the model and decoding).
4. [ ] Fork https://github.com/tatsu-lab/alpaca_eval, copy `src/` and `results/` from this bundle into it, add the
       leaderboard row, and open a pull request titled "Add {name}".
5. [ ] Say in the pull request how the outputs were produced (policy, best-of-n size, judge, abstention).
"""


def annotator_dir_name(annotator: str) -> str:
    """A directory name for an annotator: ``local:<spec>``/``selfj:<spec>`` flattened, a config path's stem."""
    return annotator.replace(":", "_").replace("/", "_") if ":" in annotator else Path(annotator).stem


def write_bundle(model_outputs: str | Path, eval_dir: str | Path, output_dir: str | Path, *, name: str | None = None,
                 policy: str | None = None, pretty_name: str | None = None, link: str = "") -> Path:
    """Write the leaderboard submission layout from an outputs file and an ``evaluate`` run directory."""
    import yaml

    rows = load_outputs(model_outputs, role="model")
    eval_dir = Path(eval_dir)
    result_path = eval_dir / "result.json"
    if not result_path.is_file():
        raise ConfigError(f"{result_path} not found: run `selfj alpaca-eval evaluate` first")
    result = json.loads(result_path.read_text())
    name = name or result["name"]
    annotator = result["annotator"]
    annotator_dir = annotator_dir_name(annotator)
    out = Path(output_dir)
    for row in rows:
        row["generator"] = name
    atomic_write_json(out / "results" / name / "model_outputs.json", rows)
    annotations = json.loads((eval_dir / "annotations.json").read_text())
    atomic_write_json(out / "results" / name / annotator_dir / "annotations.json", annotations)
    config = {name: {"prompt_template": None, "fn_completions": None,
                     "completions_kwargs": {"model_name": policy or name},
                     "pretty_name": pretty_name or name, "link": link}}
    atomic_write_text(out / "src" / "alpaca_eval" / "models_configs" / name / "configs.yaml",
                      yaml.safe_dump(config, sort_keys=False))
    columns = ["", "win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total", "discrete_win_rate",
               "length_controlled_winrate", "lc_standard_error", "mode", "avg_length"]
    values = [name] + ["" if result.get(c) is None else str(result.get(c)) for c in columns[1:]]
    atomic_write_text(out / "leaderboard_row.csv", ",".join(columns) + "\n" + ",".join(values) + "\n")
    independence = ("" if result.get("independent_annotator", True) else
                    f" (NOT independent: {result.get('independence_note', 'not the official annotator')})")
    atomic_write_text(out / "README.md", BUNDLE_README.format(name=name, count=len(rows), annotator=annotator,
                                                              annotator_dir=annotator_dir, independence=independence))
    return out
