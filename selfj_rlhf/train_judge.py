"""Train a SELF-J judge from labels.jsonl: build teacher/student examples, wrap LoRA, run the trainer,
and save a judge directory that ``SelfJudge.from_pretrained`` loads."""

from __future__ import annotations

from pathlib import Path

from .distill import DistillCollator, JudgeTrainingConfig, make_distill_trainer_class
from .errors import ConfigError, RecordError
from .io import atomic_write_json, iter_records, last_complete_checkpoint, require_finite, require_str


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

    return [{"teacher_input_ids": judge.encode(r["instruction"], r["response"], cut(r["reference"])).input_ids,
             "student_input_ids": judge.encode(r["instruction"], r["response"]).input_ids,
             "label": r["label"]} for r in rows]


def lora_config(cfg: JudgeTrainingConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), layers_to_transform=cfg.lora_layers,
                      bias="none", task_type="CAUSAL_LM")


def train_judge(cfg: JudgeTrainingConfig, training_args) -> Path:
    """Train and save the judge into ``training_args.output_dir``; returns that directory."""
    from datasets import Dataset

    from .judge import SelfJudge
    from .models import load_causal_lm, validate_model_spec
    from .templates import get_template

    if cfg.alpha < 0 or cfg.beta < 0:
        raise ConfigError(f"alpha and beta must be >= 0, got alpha={cfg.alpha}, beta={cfg.beta}")
    get_template(cfg.template)
    validate_model_spec(cfg.base_model)
    rows = load_label_rows(cfg)
    # fp32 master weights on CPU; on GPU, training_args.bf16 decides the compute dtype
    model, tokenizer = load_causal_lm(cfg.base_model, dtype="float32", device="cpu")
    judge = SelfJudge(model, tokenizer, cfg.template, cfg.max_length, base_model=cfg.base_model)
    examples = build_examples(judge, rows, cfg.max_reference_tokens)
    model.train()
    if cfg.use_lora:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(cfg))
    training_args.remove_unused_columns = False
    trainer_class = make_distill_trainer_class()
    trainer = trainer_class(model=model, args=training_args, train_dataset=Dataset.from_list(examples),
                            data_collator=DistillCollator(tokenizer.pad_token_id), digit_ids=judge.digit_ids,
                            judge_config=cfg)
    resume = _last_checkpoint(training_args)
    trainer.train(resume_from_checkpoint=resume)
    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        trained = trainer.model
        if cfg.use_lora and cfg.merge_adapter:
            merged = trainer.accelerator.unwrap_model(trained).merge_and_unload()
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
