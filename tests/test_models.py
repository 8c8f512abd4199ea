import pytest

from selfj_rlhf.core.errors import ModelSpecError
from selfj_rlhf.core.models import resolve_model_path


def test_unknown_alias_is_a_clear_error():
    with pytest.raises(ModelSpecError, match="unknown model 'smollm-9000'"):
        resolve_model_path("smollm-9000")


def test_hub_ids_and_directories_pass_through(tmp_path):
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ModelSpecError):
        resolve_model_path("")
