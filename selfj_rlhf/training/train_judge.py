"""Train a SELF-J judge from labels.jsonl: build teacher/student examples, wrap LoRA, run the trainer,
and save a judge directory that ``SelfJudge.from_pretrained`` loads."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import ConfigError, RecordError
from ..core.io import atomic_write_json, last_complete_checkpoint, require_finite, require_str
from ..core.models import load_causal_lm, validate_model_spec
from ..data.datasets import iter_records
from ..judge.features import score_position_features
from ..judge.head import LengthControl, ScoreMap
from ..judge.self_judge import SelfJudge
from ..judge.templates import get_template
from .distill import DistillCollator, JudgeTrainingConfig, make_distill_trainer_class
from .scalar_head import ScalarHeadConfig, train_scalar_head
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
    """Train and save the judge into ``training_args.output_dir``; returns that directory."""
    from datasets import Dataset

    if cfg.alpha < 0 or cfg.beta < 0:
        raise ConfigError(f"alpha and beta must be >= 0, got alpha={cfg.alpha}, beta={cfg.beta}")
    get_template(cfg.template)
    validate_model_spec(cfg.base_model)
    rows = load_label_rows(cfg)
    # fp32 master weights on CPU; on GPU, training_args.bf16 decides the compute dtype
    model, tokenizer = load_causal_lm(cfg.base_model, dtype="float32", device="cpu")
    judge = SelfJudge(model, tokenizer, cfg.template, cfg.max_length, base_model=cfg.base_model)
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
    output_dir = Path(training_args.output_dir)
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
        atomic_write_json(output_dir / "selfj_config.json",
                          {**judge.judge_config(), "training": provenance})
        atomic_write_json(output_dir / "train_log.json", trainer.state.log_history)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def _last_checkpoint(training_args) -> str | None:
    """Resume from the newest checkpoint in the output dir unless the user asked for something else."""
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    return last_complete_checkpoint(training_args.output_dir)


def load_scalar_rows(cfg: JudgeTrainingConfig) -> list[dict]:
    """Validated rows for a scalar head: instruction, reference, response, group and a 0-9 ``score_field``."""
    rows = []
    for line, row in iter_records(cfg.labels):
        item = {name: require_str(row, name, cfg.labels, line, allow_empty=name == "response")
                for name in ("instruction", "reference", "response")}
        score = require_finite(row.get(cfg.score_field), cfg.labels, line, cfg.score_field) \
            if cfg.score_field in row else None
        if score is None or not 0 <= score <= 9:
            raise RecordError(cfg.labels, line, cfg.score_field, f"expected a number in 0-9, got {row.get(cfg.score_field)}")
        item.update(score=score, group=str(row.get("group", item["instruction"])))
        rows.append(item)
        if cfg.max_examples is not None and len(rows) >= cfg.max_examples:
            break
    if not rows:
        raise RecordError(cfg.labels, None, None, "no labelled rows")
    return rows


def train_scalar_judge(cfg: JudgeTrainingConfig, output_dir: str | Path, seed: int = 0) -> Path:
    """``head: scalar``: cache the frozen model's states (student and, with ``beta > 0``, teacher prompts), fit
    the head (``selfj_rlhf.training.scalar_head``) and save a judge directory holding the head and its settings."""
    import numpy as np

    validate_model_spec(cfg.base_model)
    head_cfg = ScalarHeadConfig(layer=cfg.head_layer, loss=cfg.head_loss, distill=cfg.beta > 0,
                                student_weight=cfg.alpha, distill_weight=cfg.beta, pair_margin=cfg.pair_margin,
                                max_length_ratio=cfg.max_length_ratio, weight_decay=cfg.head_weight_decay, seed=seed)
    rows = load_scalar_rows(cfg)
    judge = SelfJudge.from_pretrained(cfg.base_model, template=cfg.template, max_length=cfg.max_length)
    layers = judge.model.config.num_hidden_layers
    if cfg.head_layer > layers:
        raise ConfigError(f"head_layer {cfg.head_layer} is above the model's {layers} layers")
    cache = Path(cfg.feature_cache) / cfg.base_model.replace("/", "_")
    instructions, responses = [r["instruction"] for r in rows], [r["response"] for r in rows]
    student = score_position_features(judge, instructions, responses, cache=cache)
    teacher = None
    if head_cfg.distill:
        teacher_judge = SelfJudge(judge.model, judge.tokenizer, judge.template, cfg.max_length + TEACHER_EXTRA_TOKENS,
                                  base_model=cfg.base_model)
        teacher = score_position_features(teacher_judge, instructions, responses, [r["reference"] for r in rows],
                                          cache=cache).states[:, cfg.head_layer, :].astype(np.float32)
    labels = [r["score"] for r in rows]
    states = student.states[:, cfg.head_layer, :].astype(np.float32)
    head, info = train_scalar_head(head_cfg, states, labels,
                                   [r["group"] for r in rows], student.response_tokens, teacher)
    length_fit = LengthControl.fit(labels, student.response_tokens) if cfg.length_control else None
    scalar = SelfJudge(judge.model, judge.tokenizer, judge.template, cfg.max_length, base_model=cfg.base_model,
                       head=head, length_fit=length_fit, score_map=ScoreMap.fit(head.predict(states), labels))
    output_dir = Path(output_dir)
    provenance = {"labels": str(cfg.labels), "score_field": cfg.score_field, "examples": len(rows),
                  "head_layer": cfg.head_layer, "head_loss": cfg.head_loss, "alpha": cfg.alpha, "beta": cfg.beta,
                  "max_length": cfg.max_length, "truncated_share": float(student.truncated.mean()), **info}
    scalar.save_pretrained(output_dir, extra={"training": provenance})
    return output_dir
