"""SELF-J self-distillation: one model as a with-reference teacher and a reference-free student.

Each example is one response seen through two judge prompts: the teacher prompt (with the reference
answer) and the student prompt (without it), plus a quality class 0-9. At the score position:

    loss = CE(teacher, class) + alpha * CE(student, class) + beta * KL(teacher || student)

with the teacher distribution detached inside the KL, so the KL term trains the reference-free student
towards the teacher and never the other way (the released SELF-J code: alpha = 0.3, beta = 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..core.errors import ConfigError
from ..core.tensors import left_pad
from ..judge.directory import ROLES


def selfj_distill_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, targets: torch.Tensor,
                       alpha: float = 0.3, beta: float = 2.0, teacher_weight: float = 1.0,
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The SELF-J loss on score-position logits ``[B, V]`` (V = vocabulary or the 10 digits).

    ``targets`` index into the last dimension (the digit token ids for full-vocabulary logits).
    Returns the loss and its detached parts.
    """
    ce_teacher = F.cross_entropy(teacher_logits, targets)
    ce_student = F.cross_entropy(student_logits, targets)
    teacher_logp = F.log_softmax(teacher_logits.detach(), dim=-1)
    student_logp = F.log_softmax(student_logits, dim=-1)
    kl = F.kl_div(student_logp, teacher_logp, log_target=True, reduction="batchmean")  # KL(teacher || student)
    loss = teacher_weight * ce_teacher + alpha * ce_student + beta * kl
    return loss, {"ce_teacher": ce_teacher.detach(), "ce_student": ce_student.detach(), "kl": kl.detach()}


@dataclass
class JudgeTrainingConfig:
    """What to train: the labels, the base model, the loss and the adapter."""

    labels: str = field(default="runs/labels/labels.jsonl", metadata={"help": "labels.jsonl from recipes/label.py."})
    base_model: str = field(default="smollm2-135m-instruct", metadata={"help": "Model to turn into a judge."})
    template: str = field(default="selfj-chat", metadata={"help": "Judge template preset."})
    label_field: str = field(default="label", metadata={
        "help": "Class column: label (combined), label_selfeval or label_similarity (ablations)."})
    alpha: float = field(default=0.3, metadata={"help": "Weight of the student (reference-free) CE."})
    beta: float = field(default=2.0, metadata={"help": "Weight of KL(teacher || student); 0 turns distillation off."})
    train_teacher: bool = field(default=True, metadata={
        "help": "Include the teacher CE (False with beta=0 trains a plain reference-free judge)."})
    restrict_to_digits: bool = field(default=False, metadata={
        "help": "CE and KL over the 10 digit logits instead of the full vocabulary (the released code: full)."})
    max_length: int = field(default=1024, metadata={"help": "Longest judge prompt; responses are truncated."})
    max_reference_tokens: int | None = field(default=None, metadata={
        "help": "Cut references to this many tokens in the teacher prompt, so a long reference never squeezes "
                "the response out of it (and training stays affordable)."})
    use_lora: bool = field(default=True, metadata={"help": "LoRA adapter (False: full fine-tuning)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                           metadata={"help": "Modules that get LoRA adapters."})
    lora_layers: list[int] | None = field(default=None, metadata={
        "help": "Only these layer indices get adapters (e.g. the upper layers, to cut backward cost)."})
    train_top_layers: int = field(default=0, metadata={
        "help": "Train only the top k decoder layers (LoRA on them), on cached outputs of the frozen layers "
                "below, which then run once per prompt instead of once per step: several times cheaper epochs "
                "on a CPU. Single process; not with lora_layers. 0: off."})
    merge_adapter: bool = field(default=False, metadata={"help": "Save the adapter merged into the base weights."})
    max_examples: int | None = field(default=None, metadata={"help": "Use only the first N labelled responses."})
    head: str = field(default="digit", metadata={
        "help": "digit: the SELF-J digit judge (LoRA, the settings above). scalar: a linear head on one layer's "
                "score-position state of the frozen model (selfj_rlhf.training.scalar_head), trained on cached states; "
                "alpha / beta weigh the student and distillation terms, beta 0 trains the student alone."})
    head_layer: int = field(default=18, metadata={"help": "scalar: the decoder layer the head reads."})
    head_layers: list[int] | None = field(default=None, metadata={
        "help": "scalar: a layer ensemble instead of head_layer: one head per listed layer, their scores averaged "
                "(saved as one linear map over those layers' states; the layers above the highest never run)."})
    cv_folds: int = field(default=0, metadata={
        "help": "scalar: choose the design by K-fold cross-validation grouped by prompt over cv_grid, on the training "
                "labels only (the highest within-prompt Spearman with the teacher label); 0: train the one design "
                "given by head_layer(s), head_weight_decay and head_loss."})
    cv_grid: list[dict] | None = field(default=None, metadata={
        "help": "scalar, with cv_folds: the designs to compare, each a mapping of any of layers (a number or a "
                "list: a layer ensemble), weight_decay, loss, pair_margin, max_length_ratio, augment (false: the "
                "augmentation label rows, off-topic, injected, content-free, restated and padded, do not train it), "
                "augment_pair_weight, floor_pairs, relevance_cap_quantile and name; unset keys come from the "
                "single-design settings."})
    cv_max_attack_rate: float | None = field(default=0.1, metadata={
        "help": "scalar, with cv_folds: choose only among designs whose content-free, off-topic and restated label "
                "rows score at or above an honest answer of their prompt, out of fold, at most this often (the "
                "attack probe's threshold); when none does, the highest Spearman is chosen and cv.json says the "
                "rate was not met. Unset: Spearman alone."})
    judge_role: str = field(default="auto", metadata={
        "help": "The judge's job, recorded in selfj_config.json: own_samples (ranks one policy's samples), "
                "other_models (ranks other models' answers), or auto: own_samples when every labelled answer comes "
                "from one model, other_models otherwise."})
    judge_policy: str | None = field(default=None, metadata={
        "help": "The policy the judge is for (recorded in selfj_config.json); unset: the one model that wrote the "
                "labelled answers, else base_model."})
    head_loss: str = field(default="expected_mse", metadata={"help": "scalar: expected_mse | pairwise | mse+pairwise."})
    pair_margin: float = field(default=1.0, metadata={"help": "scalar, pairwise: smallest label gap of a pair."})
    head_weight_decay: float | None = field(default=None, metadata={
        "help": "scalar: L2 on the head's standardised weights; unset picks it on held-back training questions."})
    max_length_ratio: float | None = field(default=None, metadata={
        "help": "scalar, pairwise: only pair answers whose lengths differ by at most this factor."})
    augment_pair_weight: float | None = field(default=None, metadata={
        "help": "scalar, pairwise: the share of the loss given to pairs with an augmentation row (off-topic, "
                "injected, content-free, restated, padded), the rest to pairs of honest answers; unset: every pair "
                "alike."})
    floor_pairs: bool = field(default=False, metadata={
        "help": "scalar, pairwise: pair every content-free, off-topic and restated label row with every honest "
                "answer of its prompt, whatever their label gap (they rank below every answer to it)."})
    relevance_cap_quantile: float | None = field(default=None, metadata={
        "help": "scalar: add the relevance gate (selfj_rlhf.judge.relevance: the answer's pointwise mutual "
                "information with the instruction under the base model, two more forwards per answer), capped at "
                "this quantile of the honest training answers' relevance, its weight learned with the head; unset: "
                "no gate."})
    score_field: str = field(default="score_label", metadata={
        "help": "scalar: the 0-9 label column (labels_pool.jsonl writes score_label)."})
    length_control: bool = field(default=True, metadata={
        "help": "scalar: fit a log-length trend on the training labels and save it (SelfJudge(length_control=True) "
                "and the reward's length_control subtract it)."})
    echo_guard: bool = field(default=False, metadata={
        "help": "Save an echo guard (selfj_rlhf.judge.echo_guard, its default thresholds) with the judge: an answer "
                "that copies its instruction back scores 0 whatever the model reads. Any judge kind."})
    feature_cache: str = field(default="runs/features", metadata={
        "help": "scalar: where the frozen model's states are cached (reused by reruns and other heads)."})

    def __post_init__(self):
        if self.judge_role not in ("auto", *ROLES):
            raise ConfigError(f"judge_role must be auto or one of {ROLES}, got '{self.judge_role}'")
        if self.cv_folds < 0 or self.cv_folds == 1:
            raise ConfigError(f"cv_folds must be 0 (no cross-validation) or >= 2, got {self.cv_folds}")
        if self.cv_folds and not self.cv_grid:
            raise ConfigError("cv_folds needs a cv_grid of designs to compare")
        if self.cv_max_attack_rate is not None and not 0 <= self.cv_max_attack_rate <= 1:
            raise ConfigError(f"cv_max_attack_rate must be in [0, 1], got {self.cv_max_attack_rate}")
        if self.cv_grid and not self.cv_folds:
            raise ConfigError("cv_grid is only read with cv_folds >= 2")
        if self.head_layers is not None and not self.head_layers:
            raise ConfigError("head_layers must list at least one layer (or be unset)")


class DistillCollator:
    """Left-pads teacher and student prompts separately (positions count real tokens only)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        teacher = left_pad([f["teacher_input_ids"] for f in features], self.pad_token_id)
        student = left_pad([f["student_input_ids"] for f in features], self.pad_token_id)
        return {**{f"teacher_{k}": v for k, v in teacher.items()}, **{f"student_{k}": v for k, v in student.items()},
                "labels": torch.tensor([f["label"] for f in features], dtype=torch.long)}


def make_distill_trainer_class():
    """Build the Trainer subclass lazily, so importing this module does not import transformers' Trainer."""
    from transformers import Trainer

    class SelfJDistillTrainer(Trainer):
        """transformers Trainer whose loss is the SELF-J teacher/student objective at the score position."""

        def __init__(self, *args, digit_ids: list[int], judge_config: JudgeTrainingConfig, **kwargs):
            super().__init__(*args, **kwargs)
            # our loss is a mean over the micro-batch (not a sum normalised by num_items_in_batch), so the
            # Trainer must divide it by the accumulation steps itself
            self.model_accepts_loss_kwargs = False
            self.digit_ids = torch.tensor(digit_ids, dtype=torch.long)
            self.judge_config = judge_config
            self._loss_parts: dict[str, list[float]] = {}

        def _score_logits(self, model, inputs: dict, prefix: str) -> torch.Tensor:
            batch = {k[len(prefix):]: v for k, v in inputs.items() if k.startswith(prefix)}
            logits = model(**batch, logits_to_keep=1, use_cache=False).logits[:, -1, :].float()
            if self.judge_config.restrict_to_digits:
                logits = logits[:, self.digit_ids.to(logits.device)]
            return logits

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            cfg = self.judge_config
            labels = inputs["labels"]
            targets = labels if cfg.restrict_to_digits else self.digit_ids.to(labels.device)[labels]
            student = self._score_logits(model, inputs, "student_")
            if cfg.train_teacher:
                teacher = self._score_logits(model, inputs, "teacher_")
            elif cfg.beta > 0:  # the teacher only provides KL targets: no graph needed
                with torch.no_grad():
                    teacher = self._score_logits(model, inputs, "teacher_")
            else:
                teacher = student.detach()
            loss, parts = selfj_distill_loss(teacher, student, targets, cfg.alpha, cfg.beta,
                                             teacher_weight=1.0 if cfg.train_teacher else 0.0)
            if not cfg.train_teacher and cfg.beta == 0:  # no teacher was run: its parts would only echo the student
                parts = {"ce_student": parts["ce_student"]}
            for name, value in parts.items():
                self._loss_parts.setdefault(name, []).append(float(value))
            return (loss, {"student_logits": student}) if return_outputs else loss

        def log(self, logs: dict, *args, **kwargs):
            for name, values in self._loss_parts.items():
                if values:
                    logs[name] = sum(values) / len(values)
            self._loss_parts = {}
            super().log(logs, *args, **kwargs)

    return SelfJDistillTrainer
