"""Train a SELF-J judge from labels.jsonl: build teacher/student examples, wrap LoRA, run the trainer,
and save a judge directory that ``SelfJudge.from_pretrained`` loads."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from ..core.errors import ConfigError, RecordError
from ..core.io import (atomic_write_json, atomic_write_text, last_complete_checkpoint, publish_directory, require_finite,
                       require_str)
from ..core.models import load_causal_lm, validate_model_spec
from ..data.datasets import iter_records
from ..judge.directory import OTHER_MODELS, OWN_SAMPLES, directory_hash
from ..judge.echo_guard import EchoGuard
from ..judge.features import score_position_features
from ..judge.relevance import cached_relevance
from ..judge.head import ScoreMap
from ..judge.self_judge import JUDGE_CONFIG_NAME, SelfJudge
from ..judge.templates import get_template
from .distill import DistillCollator, JudgeTrainingConfig, make_distill_trainer_class
from .head_selection import HONEST, HeadDesign, cross_validate, fit_head_design, select_design
from .scalar_head import ScalarHeadConfig
from .top_layers import (CachedDistillCollator, cache_layer_inputs, check_split, frozen_layer_count,
                         full_model_state_dict, keep_top_layers)

# a scalar head's teacher prompt holds the reference too: it gets this many tokens more than the student's
TEACHER_EXTRA_TOKENS = 256


def load_label_rows(cfg: JudgeTrainingConfig) -> list[dict]:
    """Validated rows of labels.jsonl: instruction, reference, response and the chosen class column."""
    rows = []
    for line, row in iter_records(cfg.labels):
        instruction = require_str(row, "instruction", cfg.labels, line)
        reference = require_str(row, "reference", cfg.labels, line)
        response = require_str(row, "response", cfg.labels, line, allow_empty=True)
        if cfg.label_field not in row:
            raise RecordError(cfg.labels, line, cfg.label_field, "missing")
        label = require_finite(row[cfg.label_field], cfg.labels, line, cfg.label_field)
        if label != int(label) or not 0 <= label <= 9:
            raise RecordError(cfg.labels, line, cfg.label_field, f"expected an integer class 0-9, got {label}")
        rows.append({"instruction": instruction, "reference": reference, "response": response, "label": int(label)})
        if cfg.max_examples is not None and len(rows) >= cfg.max_examples:
            break
    if not rows:
        raise RecordError(cfg.labels, None, None, "no labelled rows")
    return rows


def build_examples(judge, rows: list[dict], max_reference_tokens: int | None = None) -> list[dict]:
    """Teacher (with reference) and student (reference-free) token ids for each labelled response."""
    tokenizer = judge.tokenizer

    def cut(reference: str) -> str:
        if max_reference_tokens is None:
            return reference
        ids = tokenizer.encode(reference, add_special_tokens=False)
        return reference if len(ids) <= max_reference_tokens else tokenizer.decode(ids[:max_reference_tokens])

    examples = []
    for r in rows:
        teacher = judge.encode(r["instruction"], r["response"], cut(r["reference"])).input_ids
        student = judge.encode(r["instruction"], r["response"]).input_ids
        # `length` lets train_sampling_strategy=group_by_length batch prompts of similar size (less padding)
        examples.append({"teacher_input_ids": teacher, "student_input_ids": student, "label": r["label"],
                         "length": len(teacher) + len(student)})
    return examples


def lora_config(cfg: JudgeTrainingConfig, layers: list[int] | None = None):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules),
                      layers_to_transform=cfg.lora_layers if layers is None else layers,
                      bias="none", task_type="CAUSAL_LM")


def top_layer_setup(cfg: JudgeTrainingConfig, model, examples: list[dict], pad_token_id: int):
    """Cache the frozen layers' outputs, cut the model to its top layers (in place) and return the dataset
    rows, the collator and the index of the first trained layer (see ``top_layers``)."""
    import torch

    offset = frozen_layer_count(model, cfg.train_top_layers)
    teacher = None  # a student-only run (no teacher CE, no KL) never reads the teacher prompts
    if cfg.train_teacher or cfg.beta > 0:
        teacher = cache_layer_inputs(model, [e["teacher_input_ids"] for e in examples], offset, pad_token_id)
    student = cache_layer_inputs(model, [e["student_input_ids"] for e in examples], offset, pad_token_id)
    with torch.no_grad():
        full_logits = model(input_ids=torch.tensor([examples[0]["student_input_ids"]]), logits_to_keep=1,
                            use_cache=False).logits[0, -1]
    keep_top_layers(model, cfg.train_top_layers)
    check_split(full_logits, model, student[0])
    rows = [{"index": i, "label": e["label"], "length": e["length"]} for i, e in enumerate(examples)]
    return rows, CachedDistillCollator(teacher, student), offset


def export_top_layer_adapter(cfg: JudgeTrainingConfig, trained_top, offset: int, output_dir: Path):
    """Save the top-layer adapter as an adapter of the full base model (layer indices shifted by ``offset``)."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    full, _ = load_causal_lm(cfg.base_model, dtype="float32", device="cpu")
    total = offset + cfg.train_top_layers
    full = get_peft_model(full, lora_config(cfg, layers=list(range(offset, total))))
    state = full_model_state_dict(get_peft_model_state_dict(trained_top), offset)
    result = set_peft_model_state_dict(full, state)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise RuntimeError(f"top-layer adapter export left {len(missing)} LoRA weights unset (first: {missing[0]})")
    full.save_pretrained(str(output_dir), safe_serialization=True)
    return full


def train_judge(cfg: JudgeTrainingConfig, training_args) -> Path:
    """Train the judge and publish it at ``training_args.output_dir`` (checkpoints live there while it trains; the
    finished judge replaces them in one atomic step, ``core.io.publish_directory``); returns that directory. A
    directory that already holds a judge is not trained again."""
    from datasets import Dataset

    output_dir = Path(training_args.output_dir)
    if (output_dir / JUDGE_CONFIG_NAME).is_file():
        print(f"{output_dir} already holds a trained judge; remove it to train again")
        return output_dir
    if cfg.alpha < 0 or cfg.beta < 0:
        raise ConfigError(f"alpha and beta must be >= 0, got alpha={cfg.alpha}, beta={cfg.beta}")
    get_template(cfg.template)
    validate_model_spec(cfg.base_model)
    rows = load_label_rows(cfg)
    # fp32 master weights on CPU; on GPU, training_args.bf16 decides the compute dtype
    model, tokenizer = load_causal_lm(cfg.base_model, dtype="float32", device="cpu")
    judge = SelfJudge(model, tokenizer, cfg.template, cfg.max_length, base_model=cfg.base_model,
                      echo_guard=EchoGuard() if cfg.echo_guard else None)
    examples = build_examples(judge, rows, cfg.max_reference_tokens)
    offset = None
    if cfg.train_top_layers:
        if training_args.world_size > 1:
            raise ConfigError("train_top_layers is a single-process option (the cache is per process)")
        if cfg.lora_layers is not None:
            raise ConfigError("give train_top_layers or lora_layers, not both")
        if not cfg.use_lora:
            raise ConfigError("train_top_layers needs use_lora (a full fine-tune of a cut model cannot be saved as a judge)")
        examples, collator, offset = top_layer_setup(cfg, model, examples, tokenizer.pad_token_id)
        adapter_layers = list(range(cfg.train_top_layers))  # indices inside the cut model
    else:
        collator, adapter_layers = DistillCollator(tokenizer.pad_token_id), None
    model.train()
    if cfg.use_lora:
        from peft import get_peft_model
        from transformers import set_seed

        set_seed(training_args.seed)  # the adapter's random init follows the run's seed, not earlier RNG use
        model = get_peft_model(model, lora_config(cfg, layers=adapter_layers))
    training_args.remove_unused_columns = False
    trainer_class = make_distill_trainer_class()
    trainer = trainer_class(model=model, args=training_args, train_dataset=Dataset.from_list(examples),
                            data_collator=collator, digit_ids=judge.digit_ids, judge_config=cfg)
    resume = _last_checkpoint(training_args)
    trainer.train(resume_from_checkpoint=resume)
    final_dir = output_dir
    # every process saves (ZeRO-3 gathers), so the staging name is the same on all of them
    output_dir = output_dir.with_name(f".{output_dir.name}.staging")
    if trainer.is_world_process_zero():
        shutil.rmtree(output_dir, ignore_errors=True)  # left by a run killed while it saved
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        trained = trainer.accelerator.unwrap_model(trainer.model)
        if offset is not None:  # replaces the cut model's adapter that save_model wrote
            trained = export_top_layer_adapter(cfg, trained, offset, output_dir)
        if cfg.use_lora and cfg.merge_adapter:
            merged = trained.merge_and_unload()
            merged.save_pretrained(output_dir, safe_serialization=True)
            (output_dir / "adapter_config.json").unlink(missing_ok=True)
            (output_dir / "adapter_model.safetensors").unlink(missing_ok=True)
        if not cfg.use_lora or cfg.merge_adapter:
            tokenizer.save_pretrained(output_dir)
        provenance = {"labels": str(cfg.labels), "label_field": cfg.label_field, "examples": len(examples),
                      "alpha": cfg.alpha, "beta": cfg.beta, "train_teacher": cfg.train_teacher,
                      "restrict_to_digits": cfg.restrict_to_digits, "max_length": cfg.max_length,
                      "max_reference_tokens": cfg.max_reference_tokens, "use_lora": cfg.use_lora,
                      "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha,
                      "lora_target_modules": list(cfg.lora_target_modules), "lora_layers": cfg.lora_layers,
                      "train_top_layers": cfg.train_top_layers,
                      "learning_rate": training_args.learning_rate, "epochs": training_args.num_train_epochs,
                      "max_steps": training_args.max_steps,
                      "effective_batch_size": training_args.per_device_train_batch_size
                      * training_args.gradient_accumulation_steps * training_args.world_size,
                      "final_loss": next((h["train_loss"] for h in reversed(trainer.state.log_history)
                                          if "train_loss" in h), None)}
        role, policy = judge_role_of(cfg, [])
        atomic_write_json(output_dir / JUDGE_CONFIG_NAME,
                          {**judge.judge_config(), "role": role, "policy": policy, "training": provenance})
        atomic_write_json(output_dir / "train_log.json", trainer.state.log_history)
        publish_directory(output_dir, final_dir)
    trainer.accelerator.wait_for_everyone()
    return final_dir


def _last_checkpoint(training_args) -> str | None:
    """Resume from the newest checkpoint in the output dir unless the user asked for something else."""
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    return last_complete_checkpoint(training_args.output_dir)


def load_scalar_rows(cfg: JudgeTrainingConfig) -> list[dict]:
    """Validated rows for a scalar head: instruction, reference, response, group, kind (``pool`` for an answer, else
    an augmentation row), model and a 0-9 ``score_field``."""
    rows = []
    for line, row in iter_records(cfg.labels):
        item = {name: require_str(row, name, cfg.labels, line, allow_empty=name == "response")
                for name in ("instruction", "reference", "response")}
        score = require_finite(row.get(cfg.score_field), cfg.labels, line, cfg.score_field) \
            if cfg.score_field in row else None
        if score is None or not 0 <= score <= 9:
            raise RecordError(cfg.labels, line, cfg.score_field, f"expected a number in 0-9, got {row.get(cfg.score_field)}")
        item.update(score=score, group=str(row.get("group", item["instruction"])), kind=str(row.get("kind", HONEST)),
                    model=row.get("model"))
        rows.append(item)
        if cfg.max_examples is not None and len(rows) >= cfg.max_examples:
            break
    if not rows:
        raise RecordError(cfg.labels, None, None, "no labelled rows")
    return rows


def judge_role_of(cfg: JudgeTrainingConfig, rows: list[dict]) -> tuple[str, str]:
    """``(role, policy)`` for the judge directory: as configured, or read from who wrote the labelled answers."""
    models = {r["model"] for r in rows if r.get("kind", HONEST) == HONEST and r.get("model")}
    role = cfg.judge_role
    if role == "auto":
        role = OWN_SAMPLES if len(models) <= 1 else OTHER_MODELS
    policy = cfg.judge_policy or (next(iter(models)) if role == OWN_SAMPLES and len(models) == 1 else cfg.base_model)
    return role, policy


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def head_designs(cfg: JudgeTrainingConfig) -> tuple[HeadDesign, list[HeadDesign]]:
    """The single design the settings give, and the designs of ``cv_grid`` (empty without cross-validation)."""
    base = HeadDesign(name="configured", layers=tuple(cfg.head_layers or [cfg.head_layer]),
                      weight_decay=cfg.head_weight_decay, loss=cfg.head_loss, pair_margin=cfg.pair_margin,
                      max_length_ratio=cfg.max_length_ratio, augment_pair_weight=cfg.augment_pair_weight,
                      floor_pairs=cfg.floor_pairs, relevance_cap_quantile=cfg.relevance_cap_quantile)
    grid = [HeadDesign.from_dict(entry, base, i) for i, entry in enumerate(cfg.cv_grid or [])] if cfg.cv_folds else []
    names = [d.name for d in grid]
    if len(set(names)) != len(names):
        raise ConfigError(f"cv_grid: design names must differ, got {names}")
    return base, grid


def train_scalar_judge(cfg: JudgeTrainingConfig, output_dir: str | Path, seed: int = 0) -> Path:
    """``head: scalar``: cache the frozen model's states (student and, with ``beta > 0``, teacher prompts), choose
    the design by cross-validation when ``cv_folds`` is set (``selfj_rlhf.training.head_selection``), fit it on
    every row and publish a judge directory holding the head, its length fit and score map, its role, the CV table
    (``cv.json``) and a generated ``PROVENANCE.md``. A finished directory is not trained again."""
    import numpy as np

    output_dir = Path(output_dir)
    if (output_dir / JUDGE_CONFIG_NAME).is_file():
        print(f"{output_dir} already holds a trained judge; remove it to train again")
        return output_dir
    validate_model_spec(cfg.base_model)
    base_design, grid = head_designs(cfg)
    rows = load_scalar_rows(cfg)
    role, policy = judge_role_of(cfg, rows)
    judge = SelfJudge.from_pretrained(cfg.base_model, template=cfg.template, max_length=cfg.max_length)
    layers = judge.model.config.num_hidden_layers
    highest = max(layer for design in [base_design, *grid] for layer in design.layers)
    if highest > layers:
        raise ConfigError(f"head layer {highest} is above the model's {layers} layers")
    # the layers above the highest head layer never run, as when the judge scores
    max_layer = highest if highest < layers else None
    cache = Path(cfg.feature_cache) / cfg.base_model.replace("/", "_")
    instructions, responses = [r["instruction"] for r in rows], [r["response"] for r in rows]
    student = score_position_features(judge, instructions, responses, cache=cache, max_layer=max_layer)
    head_cfg = ScalarHeadConfig(distill=cfg.beta > 0, student_weight=cfg.alpha, distill_weight=cfg.beta, seed=seed)
    teacher = None
    if head_cfg.distill:
        teacher_judge = SelfJudge(judge.model, judge.tokenizer, judge.template, cfg.max_length + TEACHER_EXTRA_TOKENS,
                                  base_model=cfg.base_model)
        teacher = score_position_features(teacher_judge, instructions, responses, [r["reference"] for r in rows],
                                          cache=cache, max_layer=max_layer).states
    tokens = student.response_tokens
    relevance = None
    if any(d.relevance_cap_quantile is not None for d in grid or [base_design]):  # the designs that train
        relevance = cached_relevance(judge, instructions, responses, cache / "relevance")
    cv = None
    design = base_design
    if grid:
        table = cross_validate(grid, rows, student.states, tokens, head_cfg, cfg.cv_folds, seed, teacher,
                               relevance=relevance)
        design, resistant = select_design(grid, table, rows, cfg.cv_max_attack_rate)
        if not resistant:
            print(f"no design keeps content-free, off-topic and restated rows below an honest answer within "
                  f"cv_max_attack_rate={cfg.cv_max_attack_rate} out of fold; chosen by Spearman alone: {design.name}")
        cv = {"folds": cfg.cv_folds, "seed": seed, "metric": "within-prompt Spearman of out-of-fold scores with the "
              "teacher label, honest answers", "chosen": design.name, "max_attack_rate": cfg.cv_max_attack_rate,
              "max_attack_rate_met": resistant,
              "designs": {name: {k: v for k, v in entry.items() if k != "out_of_fold_scores"}
                          for name, entry in table.items()}}
    everything = np.ones(len(rows), dtype=bool)
    fitted = fit_head_design(design, rows, student.states, tokens, everything, head_cfg, teacher, relevance)
    kept = fitted.rows
    labels = np.array([r["score"] for r in rows])
    score_map = ScoreMap.fit(fitted.predict(student.states[kept], None if relevance is None else relevance[kept]),
                             labels[kept])
    scalar = SelfJudge(judge.model, judge.tokenizer, judge.template, cfg.max_length, base_model=cfg.base_model,
                       head=fitted.head, length_fit=fitted.length_fit if cfg.length_control else None,
                       score_map=score_map, relevance_gate=fitted.gate,
                       echo_guard=EchoGuard() if cfg.echo_guard else None)
    provenance = {"labels": str(cfg.labels), "labels_sha256": file_sha256(cfg.labels), "score_field": cfg.score_field,
                  "examples": int(kept.sum()), "prompts": len({r["group"] for r in rows}),
                  "answers": sum(r["kind"] == HONEST for r in rows), "design": design.to_dict(),
                  "head_layers": list(fitted.head.layers), "alpha": cfg.alpha, "beta": cfg.beta, "max_length": cfg.max_length,
                  "truncated_share": float(student.truncated.mean()), "seed": seed,
                  "config": asdict(cfg)}
    if cv is not None:
        provenance["cv"] = {"folds": cfg.cv_folds, "chosen": design.name,
                            "spearman_within_prompt": cv["designs"][design.name]["spearman_within_prompt"],
                            "fold_std": cv["designs"][design.name]["fold_std"]}
    for stale in output_dir.parent.glob(f".{output_dir.name}.*.tmp"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    staging = output_dir.with_name(f".{output_dir.name}.{os.getpid()}.tmp")
    scalar.save_pretrained(staging, extra={"role": role, "policy": policy, "training": provenance})
    if cv is not None:
        atomic_write_json(staging / "cv.json", cv)
    atomic_write_text(staging / "PROVENANCE.md", provenance_markdown(
        output_dir.name, role, policy, provenance, cv, directory_hash(staging),
        None if fitted.gate is None else fitted.gate.to_dict(),
        None if scalar.echo_guard is None else scalar.echo_guard.to_dict()))
    return publish_directory(staging, output_dir)


def provenance_markdown(name: str, role: str, policy: str, provenance: dict, cv: dict | None, content_hash: str,
                        gate: dict | None = None, guard: dict | None = None) -> str:
    """The judge directory's PROVENANCE.md, generated from what trained it."""
    job = (f"ranks the own samples of `{policy}` (best-of-n, rejection sampling, DPO pairs, the GRPO reward)"
           if role == OWN_SAMPLES else f"ranks other models' answers (an AlpacaEval annotator, model ranking) on `{policy}`")
    design = provenance["design"]
    lines = [f"# {name}: provenance", "",
             f"A SELF-J judge that {job}: a scalar head on the frozen `{provenance['config']['base_model']}` "
             f"(layers {', '.join(map(str, provenance['head_layers']))}{', one head per layer, averaged' if len(provenance['head_layers']) > 1 else ''}), "
             f"read at the score position of the reference-free `{provenance['config']['template']}` judge prompt "
             f"(up to {provenance['max_length']} tokens). Role `{role}`, policy `{policy}`; content hash "
             f"`{content_hash}`.", "",
             "## Data", "",
             f"- Labels: `{provenance['labels']}` (sha256 `{provenance['labels_sha256'][:16]}`), column "
             f"`{provenance['score_field']}`: {provenance['answers']} answers to {provenance['prompts']} prompts, "
             f"{provenance['examples']} rows trained on (with the augmentation rows, off-topic, injected, "
             f"content-free, restated, echoed and padded answers: {design['augment']}).",
             "- No grade or preference field is read: the labels come from the SELF-J teacher that sees the reference.",
             "", "## Design", "",
             f"- {design['name']}: loss {design['loss']}, pair margin {design['pair_margin']}, weight decay "
             f"{design['weight_decay'] if design['weight_decay'] is not None else 'picked on held-back prompts'}."]
    if gate is not None:
        lines.append(f"- Relevance gate (selfj_rlhf.judge.relevance): {gate['weight']:.3f} x min(relevance, "
                     f"{gate['cap']:.3f}) added to the head's score; relevance over the answer's first "
                     f"{gate['max_tokens']} tokens, the instruction cut to {gate['max_instruction_tokens']}.")
    if guard is not None:
        lines.append(f"- Echo guard (selfj_rlhf.judge.echo_guard): an answer with at least "
                     f"{guard['min_copied']:.0%} of its word {guard['n']}-grams in the instruction and at least {guard['min_coverage']:.0%} of "
                     f"the instruction's in it scores {guard['floor']:g}; not trained.")
    if cv is not None:
        kinds = sorted({k for entry in cv["designs"].values() for k in entry.get("at_or_above_honest", {})})
        lines += ["", f"## Cross-validation ({cv['folds']} folds by prompt, training prompts only)", "",
                  "Within-prompt Spearman of the out-of-fold scores with the teacher label (honest answers), and per "
                  "augmentation kind the share of (augmentation row, honest answer of its prompt) pairs where the "
                  "augmentation row scores at least as high.", "",
                  f"| design | within-prompt Spearman | per fold | fold std |{''.join(f' {k} |' for k in kinds)}",
                  "|---|---:|---|---:|" + "---:|" * len(kinds)]
        for design_name, entry in cv["designs"].items():
            mark = " **(chosen)**" if design_name == cv["chosen"] else ""
            rates = "".join(f" {entry['at_or_above_honest'][k]:.1%} |" if k in entry.get("at_or_above_honest", {})
                            else " - |" for k in kinds)
            lines.append(f"| {design_name}{mark} | {entry['spearman_within_prompt']:.3f} | "
                         f"{', '.join(f'{v:.3f}' for v in entry['folds'])} | {entry['fold_std']:.3f} |{rates}")
    lines += ["", "## Config", "", "```json", json.dumps(provenance["config"], indent=2, default=str), "```", ""]
    return "\n".join(lines)
