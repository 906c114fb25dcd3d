"""The CPU-fast LLM path: the same quantities as :mod:`rlcore.llm.sampling`, computed with less work.

The teaching versions (:func:`rlcore.llm.sampling.generate`, :func:`rlcore.llm.sampling.token_logprobs`)
stay the ones the book explains line by line. This module holds drop-in replacements, each tested for
equivalence with them (``tests/test_llm_fast.py``), and the switches the trainers use:

* :func:`token_logprobs_fast` -- the log-probabilities of ``[N, L]`` completion tokens with

  - **prefix reuse**: the rows of a GRPO batch share ``N / G`` distinct prompts; each distinct prompt is
    run through the model once and its KV cache is expanded to its ``G`` rows, then only the completion
    tokens are run on top of it. The expansion is an ordinary (differentiable) indexing, so the gradient
    still flows into the prompt's keys and values: loss *and* gradient equal the simple path's;
  - **logits only at completion positions, in chunks**: the LM head and the log-softmax are applied to
    ``chunk_size`` rows at a time under activation checkpointing, so the ``[N, L, V]`` float32 logits
    (64 x 64 x 49 152 x 4 bytes = 0.8 GB for one GRPO batch of SmolLM2) never exist at once, not even
    for the backward pass, which recomputes each chunk.
* :func:`generate_fast` -- the decoding loop of :func:`rlcore.llm.sampling.generate` with

  - **sampling by inverting the CDF** at one uniform number per row, instead of ``torch.multinomial``,
    which draws one exponential random number per vocabulary entry (49 152 per row for SmolLM2);
  - the log-probability of the sampled token as ``z_tok - logsumexp(z)`` (no ``[N, V]`` log-softmax);
  - a **static KV cache**: keys and values are written into preallocated memory instead of being
    concatenated (a ``DynamicCache`` copies the whole cache at every step);
  - rows that emitted EOS leave the batch;
  - the KV cache of each prompt computed once and shared by its ``G`` rows (as in the teaching sampler).

  Same ``Rollout``; greedy decoding gives the same tokens as the teaching sampler, sampled decoding the
  same distribution (a different stream of random numbers, so not the same tokens).
* :func:`autocast` -- bfloat16 autocast on the CPU where the processor has bf16 instructions
  (:func:`bf16_supported`), float32 otherwise; on CUDA, bf16 where the GPU supports it.
* :func:`apply_lora` -- LoRA adapters through ``peft`` (the maintained library), for SFT, GRPO and
  distillation; the full-parameter path stays the default.
"""
from __future__ import annotations

import contextlib
import copy
import weakref
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .sampling import Rollout, _positions, _rollout, _sampler_setup, _top_p_filter, check_sampling_args, encode_prompts

__all__ = [
    "bf16_supported",
    "autocast",
    "chunked_token_logprobs",
    "token_logprobs_fast",
    "generate_fast",
    "apply_lora",
    "merge_lora",
    "trainable_parameters",
    "available_memory_bytes",
    "estimate_training_memory",
    "check_fits_in_memory",
]


# ============================================================== bf16 autocast
def bf16_supported(device: torch.device | str = "cpu") -> bool:
    """Whether bfloat16 matrix multiplies are native on ``device`` (CPU: AVX512-BF16 or AMX; CUDA: Ampere+)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:  # oneDNN's own test for native bf16 (AVX512-BF16 / AMX); private but stable since torch 1.12
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - very old or unusual builds
        return False


def autocast(device: torch.device | str = "cpu", enabled: bool = True):
    """``torch.autocast(device, bfloat16)`` when ``enabled`` and :func:`bf16_supported`, else a no-op.

    Parameters and optimizer state stay float32 (mixed precision): matrix multiplies run in bf16,
    reductions such as softmax and the loss in float32. On a CPU without bf16 instructions bf16 would be
    emulated and slower, so the context does nothing there.
    """
    device = torch.device(device)
    if enabled and bf16_supported(device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ============================================================== log-probs, chunked
def _head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, temperature: float,
                   want_entropy: bool):
    """LM head + log-softmax + gather for one chunk: ``hidden [n, H]`` -> ``(logp [n], entropy [n])``."""
    logits = F.linear(hidden, weight.to(hidden.dtype)).float() / temperature  # [n, V]
    logp_all = logits.log_softmax(dim=-1)
    logp = logp_all.gather(-1, ids[:, None]).squeeze(-1)
    if not want_entropy:
        return logp, torch.zeros_like(logp)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def chunked_token_logprobs(hidden: torch.Tensor, lm_head_weight: torch.Tensor, ids: torch.Tensor,
                           temperature: float = 1.0, chunk_size: int = 1024, want_entropy: bool = False):
    """``log_softmax(hidden @ W^T / T)[ids]`` for ``hidden [M, H]``, ``ids [M]``, ``chunk_size`` rows at a time.

    Each chunk runs under activation checkpointing when gradients are on: only its ``[chunk, V]``
    logits exist at any moment, in the forward and in the backward pass (which recomputes them).
    Returns ``(logp [M], entropy [M])`` (entropy detached; zeros unless ``want_entropy``).
    """
    if hidden.dim() != 2 or ids.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [M, H] and ids [M]; got {tuple(hidden.shape)} and {tuple(ids.shape)}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    grad = torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad)
    logps, ents = [], []
    for s in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[s:s + chunk_size], ids[s:s + chunk_size]
        if grad:
            lp, en = checkpoint(_head_logprobs, h, lm_head_weight, t, temperature, want_entropy, use_reentrant=False)
        else:
            lp, en = _head_logprobs(h, lm_head_weight, t, temperature, want_entropy)
        logps.append(lp)
        ents.append(en)
    return torch.cat(logps), torch.cat(ents).detach()


def _unwrap(model):
    """The ``*ForCausalLM`` inside a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _distinct_prompt_rows(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
    """``(first_row_of_each_distinct_prompt [U], inverse [N])`` for consecutive equal rows (a GRPO group)."""
    key = torch.cat([prompt_ids, prompt_mask], dim=1)
    if key.shape[0] == 1:
        return torch.zeros(1, dtype=torch.long, device=key.device), torch.zeros(1, dtype=torch.long, device=key.device)
    new = torch.ones(key.shape[0], dtype=torch.bool, device=key.device)
    new[1:] = (key[1:] != key[:-1]).any(dim=1)
    inverse = new.long().cumsum(0) - 1
    return new.nonzero().squeeze(1), inverse


def token_logprobs_fast(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                        completion_mask: torch.Tensor, temperature: float = 1.0, return_entropy: bool = False,
                        chunk_size: int = 1024, share_prefix: bool = True):
    """Drop-in for :func:`rlcore.llm.sampling.token_logprobs` (same values and gradients, less compute).

    Rows with the same prompt must be adjacent (as in a :class:`~rlcore.llm.sampling.Rollout`, where
    rows ``i*G..(i+1)*G-1`` share prompt ``i``); each distinct prompt is run once (``share_prefix``).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if prompt_ids.shape != prompt_mask.shape or completion_ids.shape != completion_mask.shape:
        raise ValueError("ids and masks must have matching shapes")
    if prompt_ids.shape[0] != completion_ids.shape[0]:
        raise ValueError(f"{prompt_ids.shape[0]} prompt rows for {completion_ids.shape[0]} completion rows")
    lm = _unwrap(model)
    backbone = lm.get_decoder()
    head_w = lm.get_output_embeddings().weight
    N, L = completion_ids.shape
    if share_prefix:
        first, inverse = _distinct_prompt_rows(prompt_ids, prompt_mask)
    else:
        first = inverse = torch.arange(N, device=prompt_ids.device)
    p_ids, p_mask = prompt_ids[first], prompt_mask[first]  # [U, P]
    # 1. each distinct prompt once; the hidden state at its last position predicts completion token 0
    pre = backbone(input_ids=p_ids, attention_mask=p_mask, position_ids=_positions(p_mask), use_cache=True)
    cache = pre.past_key_values
    h_last = pre.last_hidden_state[:, -1]  # [U, H]
    if first.shape[0] != N:
        # expand each prompt's keys/values to its rows; indexing is differentiable, so gradients reach the prompt
        cache.reorder_cache(inverse)
        h_last = h_last[inverse]
    # 2. the completion tokens on top of the shared prefix
    attn = torch.cat([prompt_mask, completion_mask], dim=1).long()
    pos = _positions(attn)[:, prompt_ids.shape[1]:]
    hidden = h_last[:, None]
    if L > 1:
        out = backbone(input_ids=completion_ids[:, :-1], attention_mask=attn[:, :-1], position_ids=pos[:, :-1],
                       past_key_values=cache, use_cache=True)
        hidden = torch.cat([hidden, out.last_hidden_state], dim=1)  # [N, L, H]: position t predicts token t
    # 3. LM head + log-softmax at completion positions only, in chunks
    logp, entropy = chunked_token_logprobs(hidden.reshape(N * L, -1), head_w, completion_ids.reshape(-1),
                                           temperature, chunk_size, want_entropy=return_entropy)
    mask = completion_mask.to(logp.dtype)
    logp = logp.view(N, L) * mask
    if not return_entropy:
        return logp
    return logp, entropy.view(N, L) * mask


# ============================================================== fast sampler
def _sample_inverse_cdf(scaled: torch.Tensor, lse: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from ``softmax(scaled)`` by inverting its CDF at one uniform number per row.

    Exact in distribution, and one random number per row instead of one per vocabulary entry:
    ``torch.multinomial`` draws ``V`` exponentials per row, which on a CPU costs more than the softmax.
    """
    cdf = (scaled - lse[:, None]).exp().cumsum(dim=-1)  # [N, V]
    u = torch.rand(scaled.shape[0], 1, generator=generator, device=scaled.device) * cdf[:, -1:]
    tok = torch.searchsorted(cdf, u, right=True).squeeze(1)
    return tok.clamp(max=scaled.shape[-1] - 1)  # u == total (probability 0) or rounding at the top


def _static_cache(model, prefix_cache, rows: torch.Tensor, max_len: int):
    """A ``StaticCache`` for ``len(rows)`` rows and ``max_len`` positions, filled with ``prefix_cache[rows]``.

    Writing each new token's keys/values into preallocated memory avoids the ``torch.cat`` of a
    ``DynamicCache``, which copies the whole cache at every decoding step (a third of a SmolLM2 step on CPU).
    """
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=max_len)
    for i, layer in enumerate(prefix_cache.layers):
        cache.layers[i].update(layer.keys.index_select(0, rows), layer.values.index_select(0, rows))
    return cache


_TWINS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _bf16_twin(model):
    """A bfloat16 copy of ``model`` for sampling, kept between calls and refreshed from the current weights.

    Pure bf16 inference (weights stored in bf16) is about twice as fast as float32 on a CPU with bf16
    instructions; autocast would instead re-cast every weight at every decoding step.
    """
    twin = _TWINS.get(model)
    if twin is None:
        twin = copy.deepcopy(model).to(torch.bfloat16).eval()
        twin.requires_grad_(False)
        _TWINS[model] = twin
    else:
        with torch.no_grad():
            for dst, src in zip(twin.state_dict().values(), model.state_dict().values()):
                dst.copy_(src)
    return twin


def _prefill(model, tokenizer, prompts, device, add_special_tokens):
    """Run the prompts through ``model`` once, sharing their common token prefix (e.g. the R1 template).

    The common prefix is computed once; the rest of each prompt is left-padded after it, so padding may
    sit in the middle of a row (positions come from the mask, so this is invisible to the model).
    Returns ``(prompt_ids [n, P], prompt_mask [n, P], output with past_key_values and last logits)``.
    """
    rows = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    if any(len(r) == 0 for r in rows):
        raise ValueError("every prompt must encode to at least one token; got an empty prompt")
    c = 0
    shortest = min(len(r) for r in rows)
    while c < shortest - 1 and all(r[c] == rows[0][c] for r in rows):  # keep >= 1 token per row after it
        c += 1
    if len(rows) == 1 or c < 8:  # nothing worth sharing: the plain left-padded prefill
        ids, mask = encode_prompts(tokenizer, prompts, device, add_special_tokens)
        out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True, logits_to_keep=1)
        return ids, mask, out
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n, width = len(rows), max(len(r) for r in rows) - c
    head = torch.tensor(rows[0][:c], dtype=torch.long, device=device)[None]  # [1, c]
    tail = torch.full((n, width), pad_id, dtype=torch.long, device=device)
    tail_mask = torch.zeros((n, width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        tail[i, width - len(r) + c:] = torch.tensor(r[c:], dtype=torch.long)
        tail_mask[i, width - len(r) + c:] = 1
    pre = model(input_ids=head, use_cache=True, logits_to_keep=1)
    cache = pre.past_key_values
    cache.reorder_cache(torch.zeros(n, dtype=torch.long, device=device))  # the prefix, once per row
    mask = torch.cat([torch.ones((n, c), dtype=torch.long, device=device), tail_mask], dim=1)
    out = model(input_ids=tail, attention_mask=mask, position_ids=_positions(mask)[:, c:], past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    return torch.cat([head.expand(n, c), tail], dim=1), mask, out


@torch.no_grad()
def generate_fast(model, tokenizer, prompts, num_generations: int = 1, max_new_tokens: int = 64,
                  temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
                  generator: torch.Generator | None = None, add_special_tokens: bool = False,
                  bf16: bool = False) -> Rollout:
    """Drop-in for :func:`rlcore.llm.sampling.generate` (same arguments and :class:`Rollout`), faster on a CPU.

    ``bf16=True`` (where supported) samples from a bfloat16 copy of the weights, refreshed from ``model`` at
    each call; the returned log-probs are then those of the bf16 model. Prompts that share a token prefix
    (a template) have it computed once. Finished rows are dropped from the batch (their cache rows too),
    so the cost of a step shrinks as completions end.
    """
    prompts = check_sampling_args(prompts, num_generations, max_new_tokens, temperature, top_p)

    device, eos, pad_id, was_training = _sampler_setup(model, tokenizer)
    G = num_generations

    runner = _bf16_twin(model) if bf16 and bf16_supported(device) else model
    ids, mask, out = _prefill(runner, tokenizer, prompts, device, add_special_tokens)
    P = ids.shape[1]
    expand = torch.arange(len(prompts), device=device).repeat_interleave(G)
    cache = _static_cache(runner, out.past_key_values, expand, P + max_new_tokens)
    logits = out.logits[:, -1, :].float()[expand]
    ids, mask = ids[expand], mask[expand]
    N = ids.shape[0]
    tokens = torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((N, max_new_tokens), device=device)
    lengths = torch.zeros(N, dtype=torch.long, device=device)
    finished = torch.zeros(N, dtype=torch.bool, device=device)
    rows = torch.arange(N, device=device)  # batch row -> rollout row, for the rows still generating
    attn = torch.cat([mask, torch.zeros((N, max_new_tokens), dtype=mask.dtype, device=device)], dim=1)
    next_pos = mask.sum(dim=1, keepdim=True)
    for t in range(max_new_tokens):
        scaled = logits / temperature if temperature != 1.0 else logits
        if greedy:
            tok = scaled.argmax(dim=-1)
            lse = torch.logsumexp(scaled, dim=-1)
        elif top_p < 1:
            filtered = _top_p_filter(scaled, top_p)
            tok = _sample_inverse_cdf(filtered, torch.logsumexp(filtered, dim=-1), generator)
            lse = torch.logsumexp(scaled, dim=-1)
        else:
            lse = torch.logsumexp(scaled, dim=-1)
            tok = _sample_inverse_cdf(scaled, lse, generator)
        logp = scaled.gather(1, tok[:, None]).squeeze(1) - lse
        tokens[rows, t] = tok
        logprobs[rows, t] = logp
        lengths[rows] = t + 1
        done = torch.isin(tok, eos)
        finished[rows[done]] = True
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        if bool(done.any()):  # drop finished rows from the batch and the cache
            keep = (~done).nonzero().squeeze(1)
            rows, tok, attn, next_pos = rows[keep], tok[keep], attn[keep], next_pos[keep]
            cache.reorder_cache(keep)
        attn[:, P + t] = 1  # the token fed now is written at cache slot P + t
        out = runner(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos, past_key_values=cache,
                     use_cache=True)
        logits = out.logits[:, -1, :].float()
        next_pos = next_pos + 1

    width = int(lengths.max())
    steps = torch.arange(width, device=device)
    completion_mask = (steps[None, :] < lengths[:, None]).long()
    completion_ids = tokens[:, :width]
    logprobs = logprobs[:, :width] * completion_mask
    if was_training:
        model.train()
    return _rollout(tokenizer, prompts, G, ids, mask, completion_ids, completion_mask, logprobs, finished)


# ============================================================== LoRA through peft
def apply_lora(model, r: int = 16, alpha: float | None = None, dropout: float = 0.0,
               target_modules: Sequence[str] | str = "all-linear"):
    """Wrap ``model`` with LoRA adapters (``peft.get_peft_model``); only the adapters are trainable.

    ``alpha`` defaults to ``2 r``; ``target_modules="all-linear"`` adapts every linear layer except the
    LM head. Returns the ``PeftModel`` (it behaves like the model: same ``forward``, ``generate``).
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("LoRA needs peft: `pip install peft` (or `pip install -e '.[llm]'`)") from e
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
    cfg = LoraConfig(r=r, lora_alpha=2 * r if alpha is None else alpha, lora_dropout=dropout,
                     target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def merge_lora(model):
    """Fold the adapters into the base weights and return the plain model (``merge_and_unload``)."""
    merge = getattr(model, "merge_and_unload", None)
    return merge() if callable(merge) else model


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    """Parameters with ``requires_grad`` (all of them for full fine-tuning, the adapters under LoRA)."""
    return [p for p in model.parameters() if p.requires_grad]


# ============================================================== memory: refuse what cannot fit
def available_memory_bytes(device: torch.device | str | None = None) -> int | None:
    """Free memory where training runs: free GPU memory on CUDA, else ``MemAvailable`` of ``/proc/meminfo``
    (Linux); None where it cannot be read."""
    if device is not None and torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return None


def estimate_training_memory(model, rows: int, seq_len: int, bf16: bool = False, lora: bool = False,
                             sample_rows: int = 0, sample_len: int = 0) -> dict:
    """A deliberately generous estimate (bytes) of the peak memory of one training step of ``model``.

    * weights (float32), plus gradients and AdamW's two moments of the trainable parameters;
    * saved activations: per token and layer about ``16 d + 6 d_ff`` values (attention and MLP inputs,
      norms, the SwiGLU branches), in bf16 or float32, for ``rows x seq_len`` tokens of one micro-batch;
    * the sampler (when ``sample_rows``): a bf16 weight copy and the KV cache of ``sample_rows x sample_len``.
    """
    cfg = getattr(_unwrap(model), "config", None)
    layers = getattr(cfg, "num_hidden_layers", 12)
    d = getattr(cfg, "hidden_size", 768)
    d_ff = getattr(cfg, "intermediate_size", 4 * d)
    kv_dim = getattr(cfg, "num_key_value_heads", 1) * (d // max(getattr(cfg, "num_attention_heads", 1), 1))
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    trainable = sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
    if lora and trainable == params:  # adapters not attached yet: a few percent of the weights
        trainable = params // 50
    act_bytes = 2 if bf16 else 4
    out = {
        "weights": 4 * params,
        "gradients_and_adam": 12 * trainable,
        "activations": rows * seq_len * layers * (16 * d + 6 * d_ff) * act_bytes,
        "sampler": (2 * params + sample_rows * sample_len * layers * 2 * kv_dim * 4) if sample_rows else 0,
    }
    out["total"] = sum(out.values())
    return out


def check_fits_in_memory(estimate: dict, knobs: str, available: int | None = None, headroom: float = 0.9,
                         device: torch.device | str | None = None) -> None:
    """Raise ``MemoryError`` before training starts when ``estimate["total"]`` exceeds the available memory."""
    available = available_memory_bytes(device) if available is None else available
    if available is None or estimate["total"] <= headroom * available:
        return
    gb = 1024 ** 3
    parts = ", ".join(f"{k} {v / gb:.1f}" for k, v in estimate.items() if k != "total" and v)
    raise MemoryError(f"this run needs about {estimate['total'] / gb:.1f} GB ({parts} GB) but only "
                      f"{available / gb:.1f} GB are available; {knobs}")
