"""The SELF-J loss against a hand computation on fixed logits: CE terms, KL direction, detach."""

import math

import pytest
import torch

from selfj_rlhf.training.distill import DistillCollator, selfj_distill_loss

TEACHER = [[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]]
STUDENT = [[0.5, 0.1, 2.0], [1.0, 1.0, 1.0]]
TARGETS = [1, 2]


def softmax(row):
    exps = [math.exp(x) for x in row]
    return [e / sum(exps) for e in exps]


def hand_parts():
    ce_t = sum(-math.log(softmax(r)[t]) for r, t in zip(TEACHER, TARGETS)) / 2
    ce_s = sum(-math.log(softmax(r)[t]) for r, t in zip(STUDENT, TARGETS)) / 2
    kl_ts = sum(sum(p * (math.log(p) - math.log(q)) for p, q in zip(softmax(t), softmax(s)))
                for t, s in zip(TEACHER, STUDENT)) / 2
    kl_st = sum(sum(q * (math.log(q) - math.log(p)) for p, q in zip(softmax(t), softmax(s)))
                for t, s in zip(TEACHER, STUDENT)) / 2
    return ce_t, ce_s, kl_ts, kl_st


def test_loss_matches_hand_computation():
    ce_t, ce_s, kl_ts, kl_st = hand_parts()
    loss, parts = selfj_distill_loss(torch.tensor(TEACHER), torch.tensor(STUDENT), torch.tensor(TARGETS), 0.3, 2.0)
    assert float(parts["ce_teacher"]) == pytest.approx(ce_t, rel=1e-6)
    assert float(parts["ce_student"]) == pytest.approx(ce_s, rel=1e-6)
    assert float(parts["kl"]) == pytest.approx(kl_ts, rel=1e-6)  # KL(teacher || student) ...
    assert abs(kl_ts - kl_st) > 1e-3  # ... which is not the reverse direction
    assert float(loss) == pytest.approx(ce_t + 0.3 * ce_s + 2.0 * kl_ts, rel=1e-6)


def test_teacher_is_detached_inside_kl():
    teacher = torch.tensor(TEACHER, requires_grad=True)
    student = torch.tensor(STUDENT, requires_grad=True)
    loss, _ = selfj_distill_loss(teacher, student, torch.tensor(TARGETS), alpha=0.0, beta=1.0, teacher_weight=0.0)
    loss.backward()
    assert teacher.grad is None or torch.count_nonzero(teacher.grad) == 0
    assert torch.count_nonzero(student.grad) > 0
    # with the teacher CE on, the teacher's gradient is exactly the CE gradient (nothing from the KL)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    loss, _ = selfj_distill_loss(teacher, torch.tensor(STUDENT), torch.tensor(TARGETS), alpha=0.3, beta=2.0)
    loss.backward()
    reference = torch.tensor(TEACHER, requires_grad=True)
    torch.nn.functional.cross_entropy(reference, torch.tensor(TARGETS)).backward()
    assert torch.allclose(teacher.grad, reference.grad)


def test_no_distillation_ablation():
    ce_t, ce_s, _, _ = hand_parts()
    loss, _ = selfj_distill_loss(torch.tensor(TEACHER), torch.tensor(STUDENT), torch.tensor(TARGETS), 0.3, 0.0)
    assert float(loss) == pytest.approx(ce_t + 0.3 * ce_s, rel=1e-6)


def test_collator_left_pads_both_prompts():
    batch = DistillCollator(pad_token_id=0)([
        {"teacher_input_ids": [5, 6, 7], "student_input_ids": [5, 7], "label": 3},
        {"teacher_input_ids": [8], "student_input_ids": [8, 9, 4], "label": 9},
    ])
    assert batch["teacher_input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["student_attention_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert batch["teacher_position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert batch["labels"].tolist() == [3, 9]
