"""The CPU-fast LLM path (rlcore.llm.fast) against the teaching path (rlcore.llm.sampling), lever by lever.

Tolerances: float32 results agree to 1e-5 (relative 1e-4 for gradients); bf16 autocast is compared with
float32 at the tolerance bf16's 8-bit mantissa allows (log-probs within 0.1 nats, gradient cosine > 0.99).
"""
import math

import pytest
import torch

from rlcore.llm.fast import (apply_lora, autocast, bf16_supported, chunked_token_logprobs, generate_fast,
                             token_logprobs_fast, trainable_parameters)
from rlcore.llm.grpo import GRPOConfig, grpo_loss, train_grpo
from rlcore.llm.models import tiny_model
from rlcore.llm.sampling import generate, token_logprobs
from rlcore.returns import group_normalized_advantages

PROMPTS = ["1+2=", "a longer prompt: 33+44=", "9*9="]


def _sharp(seed=0, vocab="arithmetic"):
    # larger layer weights: varied text instead of the near-identity of a fresh tiny Llama
    model, tok = tiny_model(seed=seed, vocab=vocab)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.mul_(6)
    return model, tok


@pytest.fixture(scope="module")
def digits():
    return _sharp(seed=1, vocab="digits")


def _grads(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fast_logprobs_equal_simple_values_and_gradients(digits, temperature):
    model, tok = digits
    ro = generate(model, tok, ["1+2=", "33+4=", "9*9*9="], num_generations=4, max_new_tokens=20,
                  temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert not ro.terminated.all() and ro.terminated.any()
    adv = group_normalized_advantages(torch.arange(len(ro), dtype=torch.float32) % 3, group_size=4)

    def loss_and_grad(fn, **kw):
        model.zero_grad(set_to_none=True)
        lp, ent = fn(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask, temperature,
                     return_entropy=True, **kw)
        loss, _ = grpo_loss(lp, lp.detach(), None, adv, ro.completion_mask)
        loss.backward()
        return lp.detach(), ent, _grads(model)

    lp0, ent0, g0 = loss_and_grad(token_logprobs)
    for kw in ({}, {"chunk_size": 7}, {"share_prefix": False}):
        lp1, ent1, g1 = loss_and_grad(token_logprobs_fast, **kw)
        assert (lp1 - lp0).abs().max() < 1e-5, kw
        assert (ent1 - ent0).abs().max() < 1e-5, kw
        assert (g1 - g0).norm() <= 1e-4 * g0.norm(), kw
    assert g0.norm() > 0


def test_prefix_sharing_runs_each_prompt_once(digits):
    model, tok = digits
    ro = generate(model, tok, ["1+2=", "33+4="], num_generations=5, max_new_tokens=6,
                  generator=torch.Generator().manual_seed(0))
    widths = []
    hook = model.model.register_forward_pre_hook(
        lambda m, args, kw: widths.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        token_logprobs_fast(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask)
    finally:
        hook.remove()
    P, L = ro.prompt_ids.shape[1], ro.completion_ids.shape[1]
    assert widths[0] == (2, P)  # two distinct prompts, not ten rows
    assert widths[1] == (10, L - 1)


def test_chunked_logprobs_never_build_the_full_logits():
    torch.manual_seed(0)
    M, H, V = 50, 8, 1000
    hidden = torch.randn(M, H, requires_grad=True)
    weight = torch.randn(V, H, requires_grad=True)
    ids = torch.randint(0, V, (M,))
    ref = torch.log_softmax(hidden @ weight.T, -1).gather(1, ids[:, None]).squeeze(1)
    (gh, gw) = torch.autograd.grad(ref.sum(), (hidden, weight))
    biggest = []

    def pack(t):
        biggest.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, _ = chunked_token_logprobs(hidden, weight, ids, chunk_size=10)
    (h2, w2) = torch.autograd.grad(lp.sum(), (hidden, weight))
    assert torch.allclose(lp, ref, atol=1e-5) and torch.allclose(h2, gh, atol=1e-5) and torch.allclose(w2, gw, atol=1e-5)
    assert max(biggest) < M * V / 2  # nothing of the size of the full [M, V] logits is kept for backward


def test_fast_sampler_greedy_equals_teaching_sampler():
    model, tok = _sharp()
    a = generate(model, tok, PROMPTS, num_generations=2, max_new_tokens=15, greedy=True)
    b = generate_fast(model, tok, PROMPTS, num_generations=2, max_new_tokens=15, greedy=True)
    assert a.completions == b.completions
    assert torch.equal(a.completion_mask, b.completion_mask) and torch.equal(a.terminated, b.terminated)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert (a.logprobs - b.logprobs).abs().max() < 1e-5


def test_fast_sampler_logprobs_match_one_forward_pass(digits):
    model, tok = digits
    ro = generate_fast(model, tok, ["1+2=", "33+4="], num_generations=6, max_new_tokens=25, temperature=0.8,
                       generator=torch.Generator().manual_seed(3))
    assert ro.terminated.any() and not ro.terminated.all()  # rows leave the batch early: bookkeeping exercised
    lp = token_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask, 0.8)
    assert (lp - ro.logprobs).abs().max() < 1e-4
    for i in range(len(ro)):
        n = int(ro.completion_mask[i].sum())
        assert ro.completions[i] == tok.decode(ro.completion_ids[i, :n], skip_special_tokens=True)
        assert torch.all(ro.completion_ids[i, n:] == tok.pad_token_id)


def test_fast_sampler_same_distribution_as_teaching_sampler(digits):
    # first token after a prompt: both samplers' frequencies agree with the model's probabilities
    model, tok = digits
    n = 3000
    with torch.no_grad():
        ids, mask = _enc(tok, "1+2=")
        probs = torch.softmax(model(input_ids=ids, attention_mask=mask).logits[0, -1].float(), -1)
    top = probs.argsort(descending=True)[:5]
    expected = torch.cat([probs[top], (1 - probs[top].sum())[None]]) * n
    for sampler in (generate, generate_fast):
        ro = sampler(model, tok, ["1+2="], num_generations=n, max_new_tokens=1, generator=torch.Generator().manual_seed(7))
        first = ro.completion_ids[:, 0]
        counts = torch.stack([(first == t).sum() for t in top] + [(~torch.isin(first, top)).sum()]).float()
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 20.5, (sampler.__name__, chi2)  # chi-square, 5 degrees of freedom, p = 0.001


def _enc(tok, text):
    from rlcore.llm.sampling import encode_prompts

    return encode_prompts(tok, [text])


def test_fast_sampler_is_reproducible_and_validates(digits):
    model, tok = digits
    a = generate_fast(model, tok, PROMPTS[:2], num_generations=3, max_new_tokens=8, generator=torch.Generator().manual_seed(5))
    b = generate_fast(model, tok, PROMPTS[:2], num_generations=3, max_new_tokens=8, generator=torch.Generator().manual_seed(5))
    assert a.completions == b.completions
    with pytest.raises(ValueError, match="temperature"):
        generate_fast(model, tok, PROMPTS, temperature=0)
    with pytest.raises(ValueError, match="empty"):
        generate_fast(model, tok, [])


@pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16")
def test_bf16_autocast_numerics_close_to_fp32():
    model, tok = _sharp(seed=2)
    ro = generate(model, tok, PROMPTS, num_generations=2, max_new_tokens=12, generator=torch.Generator().manual_seed(0))
    adv = torch.tensor([1.0, -1.0] * 3)

    def run(bf16):
        model.zero_grad(set_to_none=True)
        with autocast("cpu", enabled=bf16):
            lp = token_logprobs_fast(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask)
            loss, _ = grpo_loss(lp, lp.detach(), None, adv, ro.completion_mask)
        loss.backward()
        return lp.detach(), _grads(model)

    lp32, g32 = run(False)
    lp16, g16 = run(True)
    assert lp16.dtype == torch.float32  # log-softmax and the loss stay in float32
    assert (lp16 - lp32).abs().max() < 0.1
    cos = float(torch.nn.functional.cosine_similarity(g16, g32, dim=0))
    assert cos > 0.99, cos
    assert not torch.equal(lp16, lp32)  # bf16 really was used


def test_autocast_is_a_no_op_when_disabled():
    with autocast("cpu", enabled=False):
        assert not torch.is_autocast_enabled("cpu")


def test_lora_through_peft_trains_only_adapters():
    model, tok = tiny_model(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora = apply_lora(model, r=4)
    params = trainable_parameters(lora)
    assert params and all("lora_" in n for n, p in lora.named_parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in lora.parameters())
    assert sum(p.numel() for p in params) < 0.2 * n_all
    cfg = GRPOConfig(steps=2, prompts_per_step=2, num_generations=4, max_new_tokens=6, learning_rate=1e-2,
                     template=None, progress_bar=False, lora_r=4, fast=True)
    data = ["1+1=", "2+2=", "3+3="]
    res = train_grpo(cfg, tiny_model(seed=0)[0], tok, data, [lambda p, c, **k: [float(len(x)) for x in c]])
    base = res.model.get_base_model() if hasattr(res.model, "get_base_model") else res.model
    assert any("lora_" in n for n, _ in res.model.named_parameters())
    del base, before


def test_grpo_fast_path_matches_simple_path_first_step():
    # one step, same seed: the fast sampler draws other tokens, so compare the update from the same rollout
    model, tok = _sharp(seed=3, vocab="digits")
    ro = generate(model, tok, ["1+2=", "4+5="], num_generations=4, max_new_tokens=10,
                  generator=torch.Generator().manual_seed(0))
    adv = group_normalized_advantages(ro.lengths.float(), group_size=4)
    grads = []
    for fn in (token_logprobs, token_logprobs_fast):
        model.zero_grad(set_to_none=True)
        lp = fn(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask)
        loss, _ = grpo_loss(lp, lp.detach(), None, adv, ro.completion_mask, loss_type="dr_grpo")
        loss.backward()
        grads.append(_grads(model))
    assert math.isclose(float(grads[0].norm()), float(grads[1].norm()), rel_tol=1e-4)


def test_sft_loss_fast_equals_sft_loss_value_and_gradient():
    from rlcore.llm.sft import collate_sft, sft_loss, sft_loss_fast

    model, tok = _sharp(seed=4)
    batch = collate_sft(tok, [("What is 1+2? ", "<think>1+2=3</think><answer>3</answer>"), ("2*3=", "6")])
    grads, losses = [], []
    for fast in (False, True):
        model.zero_grad(set_to_none=True)
        if fast:
            loss = sft_loss_fast(model, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk_size=5)
        else:
            loss = sft_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                            batch["labels"])
        loss.backward()
        losses.append(loss.item())
        grads.append(_grads(model))
    assert math.isclose(losses[0], losses[1], rel_tol=1e-6)
    assert (grads[0] - grads[1]).norm() <= 1e-4 * grads[0].norm()


def test_train_sft_fast_bf16_lora_runs_and_lowers_the_loss():
    from rlcore.llm.sft import SFTConfig, train_sft

    model, tok = tiny_model(seed=0)
    pairs = [("1+1=", "2"), ("2+2=", "4"), ("3+3=", "6"), ("4+4=", "8")] * 2
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    hist = train_sft(model, tok, pairs, SFTConfig(max_steps=20, batch_size=4, learning_rate=1e-2, fast=True,
                                                  bf16=True, lora_r=4))
    assert hist["loss"][-1] < hist["loss"][0]
    # the base weights did not move: only the adapters trained
    checked = 0
    for n, p in model.named_parameters():
        key = n.replace("base_model.model.", "").replace(".base_layer", "")
        if "lora_" not in n and key in frozen:
            assert torch.equal(p, frozen[key]), n
            checked += 1
    assert checked == len(frozen)


def test_shared_template_prefix_is_computed_once_and_changes_nothing():
    model, tok = _sharp(seed=5)
    template = "Solve the question and answer with a number. Q: "
    prompts = [template + q for q in ("1+2=", "a longer one: 33+44=", "9*9=")]
    widths = []
    hook = model.model.register_forward_pre_hook(
        lambda m, args, kw: widths.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        b = generate_fast(model, tok, prompts, num_generations=2, max_new_tokens=12, greedy=True)
    finally:
        hook.remove()
    a = generate(model, tok, prompts, num_generations=2, max_new_tokens=12, greedy=True)
    assert widths[0] == (1, len(template))  # the template once, not once per prompt
    assert a.completions == b.completions and torch.equal(a.completion_ids, b.completion_ids)
    assert (a.logprobs - b.logprobs).abs().max() < 1e-5
    # the rollout's middle-padded prompts score the same with both log-prob functions
    lp_simple = token_logprobs(model, b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask)
    lp_fast = token_logprobs_fast(model, b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask)
    assert (lp_simple - b.logprobs).abs().max() < 1e-4 and (lp_fast - b.logprobs).abs().max() < 1e-4


@pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16")
def test_bf16_sampler_uses_current_weights():
    model, tok = _sharp(seed=6)
    a = generate_fast(model, tok, PROMPTS, max_new_tokens=10, greedy=True, bf16=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # another model
    b = generate_fast(model, tok, PROMPTS, max_new_tokens=10, greedy=True, bf16=True)
    assert a.completions != b.completions  # the bf16 copy was refreshed
    lp = token_logprobs(model, b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask)
    m = b.completion_mask.bool()
    assert (lp - b.logprobs)[m].abs().mean() < 0.05  # bf16 log-probs close to float32 on average


def test_a_run_that_cannot_fit_is_refused_before_it_starts(monkeypatch):
    import rlcore.llm.fast as fast_mod
    from rlcore.llm.sft import SFTConfig, train_sft

    model, tok = tiny_model(seed=0)
    est = fast_mod.estimate_training_memory(model, rows=32, seq_len=100, bf16=True, sample_rows=32, sample_len=100)
    assert est["total"] == sum(v for k, v in est.items() if k != "total") and est["activations"] > 0
    # the same step in float32 keeps twice the activations; LoRA shrinks the optimizer state
    assert fast_mod.estimate_training_memory(model, 32, 100)["activations"] == 2 * est["activations"]
    assert fast_mod.estimate_training_memory(model, 32, 100, lora=True)["gradients_and_adam"] < est["gradients_and_adam"]

    monkeypatch.setattr(fast_mod, "available_memory_bytes", lambda device=None: 2**16)  # a 64 kB machine
    calls = []

    def reward(prompts, completions, **kw):
        calls.append(1)
        return [0.0] * len(completions)

    with pytest.raises(MemoryError, match=r"needs about .* GB.*micro_batch_size"):
        train_grpo(GRPOConfig(steps=1, prompts_per_step=2, num_generations=2, max_new_tokens=4, template=None,
                              progress_bar=False), model, tok, ["1+1="], [reward])
    assert not calls  # refused before sampling anything
    with pytest.raises(MemoryError, match="batch_size"):
        train_sft(model, tok, [("1+1=", "2")], SFTConfig(max_steps=1, batch_size=1))


def test_grpo_fast_bf16_samples_from_the_bf16_copy_not_under_autocast(monkeypatch):
    import rlcore.llm.grpo as grpo_mod

    seen = []

    def spy(*args, **kw):
        seen.append((kw.get("bf16"), torch.is_autocast_enabled("cpu")))
        return generate_fast(*args, **kw)

    monkeypatch.setattr(grpo_mod, "generate_fast", spy)
    model, tok = tiny_model(seed=0)
    train_grpo(GRPOConfig(steps=1, prompts_per_step=2, num_generations=2, max_new_tokens=4, template=None,
                          progress_bar=False, fast=True, bf16=True), model, tok, ["1+1=", "2+2="],
               [lambda p, c, **k: [float(len(x)) for x in c]])
    assert seen == [(True, False)]  # autocast would re-cast every weight at every decoding step
