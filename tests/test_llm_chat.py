"""Reading a reasoning model's output (C24): chat() splits <think> from <answer>; pretty printing."""
import pytest
import torch

from rlcore.llm.chat import chat, format_chat, save_for_local_runners
from rlcore.llm.models import tiny_model
from rlcore.llm.sft import SFTConfig, train_sft


@pytest.fixture(scope="module")
def parrot():
    """A tiny model that has memorised one answer to one question (SFT until it repeats it)."""
    torch.set_num_threads(1)
    model, tok = tiny_model(seed=0, n_layer=1, d_model=32)
    pairs = [("What is 2 + 3?", "<think>\nones 2+3=5 write 5\n</think>\n<answer>5</answer>")] * 4
    train_sft(model, tok, pairs, SFTConfig(max_steps=80, batch_size=4, learning_rate=1e-2))
    return model, tok


def test_chat_separates_thinking_and_answer(parrot):
    model, tok = parrot
    out = chat(model, tok, "What is 2 + 3?", template=None, max_new_tokens=40)
    assert out["raw"].startswith("<think>")
    assert out["thinking"] == "ones 2+3=5 write 5"
    assert out["answer"] == "5" and out["well_formed"] and out["finished"]
    text = format_chat(out, color=False)
    assert "User: What is 2 + 3?" in text and "  ones 2+3=5 write 5" in text and "Answer: 5" in text
    assert "\033[" in format_chat(out, color=True)


def test_chat_reports_unfinished_thinking(parrot):
    model, tok = parrot
    out = chat(model, tok, "What is 2 + 3?", template=None, max_new_tokens=6)
    assert not out["finished"] and out["answer"] is None and not out["well_formed"]
    assert out["thinking"] is not None and out["thinking"] in "ones 2+3=5 write 5"
    assert "cut at max_new_tokens" in format_chat(out, color=False)
    with pytest.raises(ValueError, match="temperature"):
        chat(model, tok, "x", temperature=-1.0)


def test_chat_sampling_is_seeded(parrot):
    model, tok = parrot
    a = chat(model, tok, "What is 7 + 1?", template=None, max_new_tokens=20, temperature=1.5, seed=3)
    b = chat(model, tok, "What is 7 + 1?", template=None, max_new_tokens=20, temperature=1.5, seed=3)
    assert a["raw"] == b["raw"]


def test_save_for_local_runners(parrot, tmp_path):
    model, tok = parrot
    cmd = save_for_local_runners(model, tok, tmp_path / "m")
    assert (tmp_path / "m" / "config.json").exists() and "convert_hf_to_gguf.py" in cmd
