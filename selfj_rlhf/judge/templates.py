"""Judge prompt templates, as data, and their safe rendering.

A template turns (instruction, response[, reference]) into the judge prompt. The prompt ends exactly
where the rating begins, so the judge's next-token distribution over the digits 0-9 *is* its rating.

Rendering never runs ``str.format`` over user text: the template's own placeholders are substituted in
one regex pass, so an instruction containing ``{}`` or ``{reference}`` stays literal text. The
response is replaced by a random sentinel and the rendered prompt is split around it into
``(prefix, suffix)``: the caller tokenizes the response separately, which lets truncation cut only the
response (never the template tail or the score position) and lets n responses share one prefix.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from ..core.errors import ConfigError

_PLACEHOLDER = re.compile(r"\{(instruction|reference|response|input)\}")
_SENTINEL = f"\x00SELFJ-RESPONSE-{uuid.uuid4().hex}\x00"


@dataclass(frozen=True)
class JudgeTemplate:
    """One judge prompt format.

    Attributes:
        name: preset name, stored in a judge directory's ``selfj_config.json``.
        reference_free: user-turn text with ``{instruction}`` and the response slot.
        with_reference: the same with ``{reference}`` as well.
        response_slot: placeholder name of the judged response (``response``; ``input`` in the released code).
        wrapper: ``"chat"`` applies the judge tokenizer's chat template with a generation prompt;
            any other string is a raw wrapper with a ``{prompt}`` placeholder (no chat template).
        system_prompt: optional system message for ``"chat"`` wrappers.
    """

    name: str
    reference_free: str
    with_reference: str
    response_slot: str = "response"
    wrapper: str = "chat"
    system_prompt: str | None = None

    def body(self, with_reference: bool) -> str:
        return self.with_reference if with_reference else self.reference_free


# Verbatim rating prompts of the released SELF-J judge (an interoperability fact: keep byte-exact,
# including the space before the blank line). The released judge wraps them WizardLM-style.
SELFJ_ORIGINAL = JudgeTemplate(
    name="selfj-original",
    reference_free=(
        "Please act as a precise judge and evaluate the quality of the answer to question. Rate the answer from 0 "
        "to 9, where a higher value means a better answer. Please respond with an integer between 0 and 9. "
        "\n\n[Question]\n{instruction}\n\n[Answer]\n{input}"
    ),
    with_reference=(
        "Please act as a precise judge and evaluate the quality of the answer to question. Rate the answer from 0 "
        "to 9, where a higher value means a better answer. Please refer to the reference answer to make your "
        "judgement. Respond with an integer between 0 and 9. \n\n[Question]\n{instruction}\n\n[Reference]\n"
        "{reference}\n\n[Answer]\n{input}"
    ),
    response_slot="input",
    wrapper="{prompt}\n\n### Response:",
)

# Our default: the same rating task through the judge's own chat template, with the answer delimited
# and the rating request repeated after it, so the last thing the judge reads is the task, not the answer.
SELFJ_CHAT = JudgeTemplate(
    name="selfj-chat",
    reference_free=(
        "Please act as a precise judge and evaluate the quality of the answer to the question. Rate the answer "
        "from 0 to 9, where a higher value means a better answer.\n\n[Question]\n{instruction}\n\n"
        "[Answer]\n{response}\n[End of Answer]\n\n"
        "Rate the answer above from 0 to 9. Respond with a single digit."
    ),
    with_reference=(
        "Please act as a precise judge and evaluate the quality of the answer to the question. Rate the answer "
        "from 0 to 9, where a higher value means a better answer. Refer to the reference answer to make your "
        "judgement.\n\n[Question]\n{instruction}\n\n[Reference]\n{reference}\n[End of Reference]\n\n"
        "[Answer]\n{response}\n[End of Answer]\n\n"
        "Rate the answer above from 0 to 9. Respond with a single digit."
    ),
)

TEMPLATES: dict[str, JudgeTemplate] = {t.name: t for t in (SELFJ_CHAT, SELFJ_ORIGINAL)}
DEFAULT_TEMPLATE = SELFJ_CHAT.name


def get_template(template: str | JudgeTemplate) -> JudgeTemplate:
    if isinstance(template, JudgeTemplate):
        return template
    try:
        return TEMPLATES[template]
    except KeyError:
        raise ConfigError(f"unknown judge template '{template}' (known: {', '.join(sorted(TEMPLATES))})") from None


def _substitute(text: str, values: dict[str, str]) -> str:
    """Replace the known placeholders present in ``values``, in one pass; other braces stay as they are."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), text)


def render_judge_prompt(template: JudgeTemplate, instruction: str, reference: str | None, tokenizer) -> tuple[str, str]:
    """Render the judge prompt around an empty response slot and return ``(prefix, suffix)``.

    The full judge prompt for a response ``r`` is ``prefix + r + suffix``; its last token is the one
    right before the rating digit.
    """
    with_reference = reference is not None
    values = {"instruction": instruction, template.response_slot: _SENTINEL}
    if with_reference:
        values["reference"] = reference
    content = _substitute(template.body(with_reference), values)
    if template.wrapper == "chat":
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"judge template '{template.name}' needs a chat template, but the judge tokenizer has none; "
                "use the raw-wrapper preset 'selfj-original' or set tokenizer.chat_template"
            )
        messages = [{"role": "user", "content": content}]
        if template.system_prompt:
            messages.insert(0, {"role": "system", "content": template.system_prompt})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = template.wrapper.replace("{prompt}", content)
    if text.count(_SENTINEL) != 1:
        raise ValueError(f"judge template '{template.name}': the rendered prompt lost its response slot")
    prefix, suffix = text.split(_SENTINEL)
    return prefix, suffix
