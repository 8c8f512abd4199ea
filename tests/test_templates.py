from types import SimpleNamespace

import pytest

from selfj_rlhf.core.errors import ConfigError
from selfj_rlhf.judge.templates import SELFJ_ORIGINAL, get_template, render_judge_prompt

RELEASED_REFERENCE_FREE = (
    "Please act as a precise judge and evaluate the quality of the answer to question. Rate the answer from 0 to 9, "
    "where a higher value means a better answer. Please respond with an integer between 0 and 9. \n\n[Question]\n"
    "{instruction}\n\n[Answer]\n{input}"
)
RELEASED_WITH_REFERENCE = (
    "Please act as a precise judge and evaluate the quality of the answer to question. Rate the answer from 0 to 9, "
    "where a higher value means a better answer. Please refer to the reference answer to make your judgement. "
    "Respond with an integer between 0 and 9. \n\n[Question]\n{instruction}\n\n[Reference]\n{reference}\n\n"
    "[Answer]\n{input}"
)

RAW = SimpleNamespace(chat_template=None)  # raw wrappers never touch the tokenizer


def test_original_preset_is_byte_exact():
    assert SELFJ_ORIGINAL.reference_free == RELEASED_REFERENCE_FREE
    assert SELFJ_ORIGINAL.with_reference == RELEASED_WITH_REFERENCE
    prefix, suffix = render_judge_prompt(SELFJ_ORIGINAL, "Q?", None, RAW)
    expected = RELEASED_REFERENCE_FREE.replace("{instruction}", "Q?").replace("{input}", "ANSWER")
    assert prefix + "ANSWER" + suffix == expected + "\n\n### Response:"
    assert suffix == "\n\n### Response:"


def test_with_reference_rendering():
    prefix, suffix = render_judge_prompt(SELFJ_ORIGINAL, "Q?", "REF", RAW)
    assert prefix.endswith("[Reference]\nREF\n\n[Answer]\n")
    assert "Please refer to the reference answer" in prefix


@pytest.mark.parametrize("hostile", ["{}", "{reference}", "{input}", "{instruction}", "{prompt}", "{{x}}", "{0}"])
def test_user_text_cannot_break_template(hostile):
    prefix, suffix = render_judge_prompt(SELFJ_ORIGINAL, f"say {hostile} now", f"ref {hostile}", RAW)
    assert f"say {hostile} now" in prefix and f"ref {hostile}" in prefix
    assert suffix == "\n\n### Response:"


def test_chat_template_ends_at_score_position(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    prefix, suffix = render_judge_prompt(get_template("selfj-chat"), "Why?", None, tokenizer)
    assert prefix.startswith("<|im_start|>system")
    assert suffix.endswith("<|im_start|>assistant\n")
    assert "[End of Answer]" in suffix and "Respond with a single digit." in suffix


def test_chat_template_required():
    with pytest.raises(ValueError, match="needs a chat template"):
        render_judge_prompt(get_template("selfj-chat"), "Why?", None, RAW)


def test_unknown_template():
    with pytest.raises(ConfigError, match="unknown judge template"):
        get_template("nope")
