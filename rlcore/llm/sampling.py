"""Sampling completions from a causal LM, and their per-token log-probabilities.

:func:`generate` is the book's teaching sampler: an explicit decoding loop over
``model(..., past_key_values=..., use_cache=True)`` that draws ``G`` completions per prompt
(eq-grpo-objective needs a *group* of outputs per question). Prompts are **left**-padded so that
every row's next token sits in the last column; ``position_ids`` are computed from the attention
mask so padding does not shift positions. A row that emits EOS is finished: afterwards it emits the
pad token, which ``completion_mask`` masks out.

The returned log-probabilities are those of the distribution the tokens were drawn from before
top-p truncation, ``log_softmax(logits / T)`` -- exactly what :func:`token_logprobs` recomputes in
one differentiable forward pass (the quantity ``log pi_theta(o_t | q, o_<t)`` of eq-token-ratio).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Rollout:
    """A batch of ``N = len(prompts) * num_generations`` sampled completions.

    Rows ``[i*G:(i+1)*G]`` belong to prompt ``i``.
    """

    prompts: list
    """The N prompt strings (each prompt repeated G times)."""
    prompt_ids: torch.Tensor
    """``[N, P]`` token ids, left-padded."""
    prompt_mask: torch.Tensor
    """``[N, P]`` 1 on real prompt tokens, 0 on padding."""
    completion_ids: torch.Tensor
    """``[N, L]`` generated ids, right-padded with the pad token."""
    completion_mask: torch.Tensor
    """``[N, L]`` 1 on generated tokens up to and including EOS."""
    logprobs: torch.Tensor
    """``[N, L]`` ``log_softmax(logits / T)`` of each sampled token (0 where masked)."""
    completions: list
    """The N decoded completions (special tokens stripped)."""
    terminated: torch.Tensor
    """``[N]`` bool: the completion ended with EOS (otherwise it was truncated at max_new_tokens)."""
    num_generations: int = 1
    """G, the group size."""

    @property
    def lengths(self) -> torch.Tensor:
        """``[N]`` number of generated tokens (EOS included)."""
        return self.completion_mask.sum(dim=1)

    def __len__(self) -> int:
        return len(self.completions)


def _eos_ids(model, tokenizer) -> list[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update(int(i) for i in (gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]))
    if not ids:
        raise ValueError("the tokenizer has no eos_token_id; set tokenizer.eos_token before sampling")
    return sorted(ids)


def encode_prompts(tokenizer, prompts: list[str], device=None, add_special_tokens: bool = False):
    """Tokenise and left-pad ``prompts``; returns ``(prompt_ids [n, P], prompt_mask [n, P])``."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    if any(len(r) == 0 for r in rows):
        raise ValueError("every prompt must encode to at least one token; got an empty prompt")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among the real (unmasked) tokens of its row; padding gets 0."""
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probability reaches ``top_p``."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum - sorted_logits.softmax(dim=-1) >= top_p  # mass before this token already >= top_p
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def _rollout(tokenizer, prompts, G, ids, mask, completion_ids, completion_mask, logprobs, finished) -> Rollout:
    """The :class:`Rollout` of a finished decoding loop (decodes the completions, repeats the prompts G times)."""
    completions = tokenizer.batch_decode(
        [row[m.bool()].tolist() for row, m in zip(completion_ids, completion_mask)], skip_special_tokens=True)
    return Rollout(prompts=[p for p in prompts for _ in range(G)], prompt_ids=ids, prompt_mask=mask,
                   completion_ids=completion_ids, completion_mask=completion_mask, logprobs=logprobs,
                   completions=completions, terminated=finished, num_generations=G)


def _sampler_setup(model, tokenizer):
    """``(device, eos ids tensor, pad id, was_training)``; puts the model in eval mode for sampling."""
    device = next(model.parameters()).device
    eos = torch.tensor(_eos_ids(model, tokenizer), device=device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(eos[0])
    was_training = model.training
    model.eval()
    return device, eos, pad_id, was_training


def check_sampling_args(prompts, num_generations: int, max_new_tokens: int, temperature: float,
                        top_p: float) -> list[str]:
    """Validate a sampler's arguments (one clear error each); returns ``prompts`` as a list of strings."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt string")
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be strings (apply the chat/prompt template first)")
    if not isinstance(num_generations, int) or num_generations < 1:
        raise ValueError(f"num_generations must be a positive integer, got {num_generations!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for argmax decoding), got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
    return prompts


@torch.no_grad()
def generate(model, tokenizer, prompts, num_generations: int = 1, max_new_tokens: int = 64, temperature: float = 1.0,
             top_p: float = 1.0, greedy: bool = False, generator: torch.Generator | None = None,
             add_special_tokens: bool = False) -> Rollout:
    """Sample ``num_generations`` completions for each prompt with a KV cache; returns a :class:`Rollout`.

    ``temperature`` scales the logits (``T -> 0`` approaches greedy; use ``greedy=True`` for argmax),
    ``top_p < 1`` samples from the nucleus. ``generator`` (a ``torch.Generator`` on the model's
    device) makes sampling reproducible independently of the global RNG.
    """
    prompts = check_sampling_args(prompts, num_generations, max_new_tokens, temperature, top_p)

    device, eos, pad_id, was_training = _sampler_setup(model, tokenizer)
    G = num_generations

    # Prefill each distinct prompt once, then copy its KV cache G times.
    ids, mask = encode_prompts(tokenizer, prompts, device, add_special_tokens)
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    logits = out.logits[:, -1, :].float()
    if G > 1:
        cache.batch_repeat_interleave(G)
        logits = logits.repeat_interleave(G, dim=0)
        ids, mask = ids.repeat_interleave(G, dim=0), mask.repeat_interleave(G, dim=0)
    N = ids.shape[0]
    attn = mask.clone()
    next_pos = mask.sum(dim=1, keepdim=True)  # position of the first generated token

    tokens, logps = [], []
    finished = torch.zeros(N, dtype=torch.bool, device=device)
    alive = torch.ones(N, dtype=torch.bool, device=device)  # row still generating at this step
    alive_steps = []
    for t in range(max_new_tokens):
        scaled = logits / temperature
        logp_all = F.log_softmax(scaled, dim=-1)
        if greedy:
            tok = scaled.argmax(dim=-1)
        else:
            filtered = _top_p_filter(scaled, top_p) if top_p < 1 else scaled
            tok = torch.multinomial(filtered.softmax(dim=-1), 1, generator=generator).squeeze(1)
        alive = ~finished
        tok = torch.where(alive, tok, torch.full_like(tok, pad_id))
        tokens.append(tok)
        logps.append(torch.where(alive, logp_all.gather(1, tok[:, None]).squeeze(1), torch.zeros_like(logits[:, 0])))
        alive_steps.append(alive)
        finished = finished | (alive & torch.isin(tok, eos))
        if bool(finished.all()) or t == max_new_tokens - 1:
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        out = model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos, past_key_values=cache,
                    use_cache=True)
        cache = out.past_key_values
        logits = out.logits[:, -1, :].float()
        next_pos = next_pos + 1

    completion_ids = torch.stack(tokens, dim=1)
    completion_mask = torch.stack(alive_steps, dim=1).long()
    logprobs = torch.stack(logps, dim=1)
    if was_training:
        model.train()
    return _rollout(tokenizer, prompts, G, ids, mask, completion_ids, completion_mask, logprobs, finished)


def token_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                   completion_mask: torch.Tensor, temperature: float = 1.0, return_entropy: bool = False):
    """``log_softmax(logits / T)`` of each completion token in one (differentiable) forward pass.

    Returns ``[N, L]`` (0 where ``completion_mask`` is 0), and with ``return_entropy=True`` also the
    per-token entropy ``[N, L]`` of the same temperature-scaled distribution (detached).
    Only the last ``L + 1`` positions' logits are materialised (``logits_to_keep``), which matters
    for a 49 k-token vocabulary.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if prompt_ids.shape != prompt_mask.shape or completion_ids.shape != completion_mask.shape:
        raise ValueError("ids and masks must have matching shapes")
    L = completion_ids.shape[1]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attn = torch.cat([prompt_mask, completion_mask], dim=1).long()
    # Finished rows' trailing pads are masked; they come after every real token, so the
    # real tokens' positions and attention are those the sampler used.
    out = model(input_ids=input_ids, attention_mask=attn, position_ids=_positions(attn), use_cache=False,
                logits_to_keep=L + 1)
    logits = out.logits[:, :-1, :].float() / temperature  # logits at position t predict token t+1
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, completion_ids[..., None]).squeeze(-1) * completion_mask
    if not return_entropy:
        return logp
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1) * completion_mask
    return logp, entropy


@torch.no_grad()
def generate_hf(model, tokenizer, prompts, num_generations: int = 1, max_new_tokens: int = 64, temperature: float = 1.0,
                top_p: float = 1.0, greedy: bool = False, generator: torch.Generator | None = None,
                add_special_tokens: bool = False) -> Rollout:
    """Drop-in for :func:`generate` built on ``model.generate`` (faster on GPU, e.g. with
    ``model.generation_config.cache_implementation = "static"``); returns the same :class:`Rollout`.

    HF's sampler draws from the global torch RNG, so ``generator`` is only used to seed it
    (``torch.manual_seed`` of a number drawn from ``generator``) when given.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt string")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for argmax decoding), got {temperature!r}")
    device = next(model.parameters()).device
    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    ids, mask = encode_prompts(tokenizer, prompts, device, add_special_tokens)
    if generator is not None:
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)))
    sample_kw = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                         num_return_sequences=num_generations, pad_token_id=pad_id, eos_token_id=eos,
                         output_logits=True, return_dict_in_generate=True, **sample_kw)
    completion_ids = out.sequences[:, ids.shape[1]:]
    logits = torch.stack(out.logits, dim=1).float() / temperature  # raw logits, before any processor
    logp = F.log_softmax(logits, dim=-1).gather(-1, completion_ids[..., None]).squeeze(-1)
    is_eos = torch.isin(completion_ids, torch.tensor(eos, device=device))
    # a token is generated if no EOS came strictly before it
    completion_mask = (is_eos.long().cumsum(1) - is_eos.long() == 0).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, pad_id)
    terminated = (is_eos & completion_mask.bool()).any(dim=1)
    G = num_generations
    completions = tokenizer.batch_decode(
        [row[m.bool()].tolist() for row, m in zip(completion_ids, completion_mask)], skip_special_tokens=True)
    return Rollout(prompts=[p for p in prompts for _ in range(G)], prompt_ids=ids.repeat_interleave(G, 0),
                   prompt_mask=mask.repeat_interleave(G, 0), completion_ids=completion_ids,
                   completion_mask=completion_mask, logprobs=logp * completion_mask, completions=completions,
                   terminated=terminated, num_generations=G)
