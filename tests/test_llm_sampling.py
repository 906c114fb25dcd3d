"""The teaching sampler (KV cache, left padding, EOS) and token_logprobs on the tiny model."""
import pytest
import torch

from rlcore.llm.models import tiny_model
from rlcore.llm.sampling import encode_prompts, generate, generate_hf, token_logprobs

PROMPTS = ["1+2=", "a longer prompt: 33+44="]


@pytest.fixture(scope="module")
def digits():
    # small vocabulary (27 tokens): EOS is sampled often, so early-stopping rows are exercised
    return tiny_model(seed=1, vocab="digits")


@pytest.fixture(scope="module")
def ascii_sharp():
    # At initialisation a tiny Llama is close to the identity (the residual stream dominates), so
    # greedy decoding just repeats the last prompt character. Larger layer weights make it
    # produce varied text, a sharper test of the KV-cache bookkeeping.
    model, tok = tiny_model(seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.mul_(8)
    return model, tok


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_match_one_forward_pass(digits, temperature):
    model, tok = digits
    ro = generate(model, tok, ["1+2=", "33+4=", "9*9*9="], num_generations=6, max_new_tokens=30,
                  temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert ro.terminated.any() and not ro.terminated.all()  # both kinds of rows are present
    lp = token_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask, temperature)
    assert (lp - ro.logprobs).abs().max() < 1e-4
    # and these are log-probs under the temperature-scaled distribution, not T=1
    other = token_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask, 1.3)
    assert (other - ro.logprobs).abs().max() > 1e-2


def test_rollout_layout_and_eos(digits):
    model, tok = digits
    G = 5
    ro = generate(model, tok, ["1+2=", "33+4="], num_generations=G, max_new_tokens=30,
                  generator=torch.Generator().manual_seed(1))
    N, L = ro.completion_ids.shape
    assert N == 2 * G and len(ro.completions) == N and ro.prompts == ["1+2="] * G + ["33+4="] * G
    assert ro.prompt_ids.shape == ro.prompt_mask.shape and ro.logprobs.shape == (N, L)
    # left padding: the shorter prompt's mask starts with zeros, every row ends with a real token
    assert ro.prompt_mask[0, 0] == 0 and torch.all(ro.prompt_mask[:, -1] == 1)
    for i in range(N):
        ids, m = ro.completion_ids[i], ro.completion_mask[i]
        n = int(m.sum())
        assert torch.all(m[:n] == 1) and torch.all(m[n:] == 0)  # mask is a prefix
        assert torch.all(ids[n:] == tok.pad_token_id) and torch.all(ro.logprobs[i, n:] == 0)
        if ro.terminated[i]:
            assert ids[n - 1] == tok.eos_token_id and not (ids[: n - 1] == tok.eos_token_id).any()
        else:
            assert n == 30 and not (ids == tok.eos_token_id).any()
        assert ro.completions[i] == tok.decode(ids[:n], skip_special_tokens=True)
    assert torch.equal(ro.lengths, ro.completion_mask.sum(1))


def test_greedy_matches_hf_generate(ascii_sharp):
    model, tok = ascii_sharp
    ro = generate(model, tok, PROMPTS, max_new_tokens=12, greedy=True)
    ids, mask = encode_prompts(tok, PROMPTS)
    hf = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[:, ids.shape[1]:]
    for i in range(len(PROMPTS)):
        n = int(ro.completion_mask[i].sum())
        assert ro.completion_ids[i, :n].tolist() == hf[i, :n].tolist()
    assert len(set(ro.completion_ids[0].tolist())) > 1  # not a degenerate single-token output


def test_left_padding_does_not_change_results(ascii_sharp):
    model, tok = ascii_sharp
    batched = generate(model, tok, PROMPTS, max_new_tokens=10, greedy=True)
    alone = generate(model, tok, PROMPTS[:1], max_new_tokens=10, greedy=True)
    assert batched.prompt_mask[0].sum() < batched.prompt_mask.shape[1]  # it was padded
    assert batched.completions[0] == alone.completions[0]
    n = int(alone.completion_mask[0].sum())
    assert (batched.logprobs[0, :n] - alone.logprobs[0, :n]).abs().max() < 1e-4


def test_first_token_frequencies_follow_softmax(digits):
    model, tok = digits
    T, n = 0.8, 4000
    ids, mask = encode_prompts(tok, ["12+3="])
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids, attention_mask=mask).logits[0, -1] / T, -1)
    ro = generate(model, tok, ["12+3="], num_generations=n, max_new_tokens=1, temperature=T,
                  generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(ro.completion_ids[:, 0], minlength=probs.numel()).double() / n
    bound = 4.5 * torch.sqrt(probs * (1 - probs) / n) + 1e-3
    assert torch.all((freq - probs.double()).abs() < bound)
    torch.testing.assert_close(ro.logprobs[:, 0], torch.log(probs)[ro.completion_ids[:, 0]])


def test_top_p_samples_only_from_nucleus(digits):
    model, tok = digits
    ids, mask = encode_prompts(tok, ["12+3="])
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids, attention_mask=mask).logits[0, -1], -1)
    sorted_p, order = probs.sort(descending=True)
    k = int((sorted_p.cumsum(0) < 0.5).sum()) + 1  # smallest set with mass >= 0.5
    nucleus = set(order[:k].tolist())
    ro = generate(model, tok, ["12+3="], num_generations=500, max_new_tokens=1, top_p=0.5,
                  generator=torch.Generator().manual_seed(0))
    assert set(ro.completion_ids[:, 0].tolist()) <= nucleus
    assert len(set(ro.completion_ids[:, 0].tolist())) == k or k > 5


def test_sampling_is_reproducible_with_a_generator(digits):
    model, tok = digits
    a = generate(model, tok, PROMPTS, num_generations=3, max_new_tokens=8, generator=torch.Generator().manual_seed(5))
    b = generate(model, tok, PROMPTS, num_generations=3, max_new_tokens=8, generator=torch.Generator().manual_seed(5))
    c = generate(model, tok, PROMPTS, num_generations=3, max_new_tokens=8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_token_logprobs_is_differentiable(digits):
    model, tok = digits
    ro = generate(model, tok, PROMPTS, num_generations=2, max_new_tokens=5, generator=torch.Generator().manual_seed(0))
    lp, ent = token_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask,
                             return_entropy=True)
    lp.sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    assert torch.all(ent >= 0) and torch.all(ent <= torch.log(torch.tensor(float(len(tok)))) + 1e-5)


def test_bad_arguments(digits):
    model, tok = digits
    with pytest.raises(ValueError, match="temperature"):
        generate(model, tok, PROMPTS, temperature=0.0)
    with pytest.raises(ValueError, match="num_generations"):
        generate(model, tok, PROMPTS, num_generations=0)
    with pytest.raises(ValueError, match="prompts"):
        generate(model, tok, [])
    with pytest.raises(ValueError, match="top_p"):
        generate(model, tok, PROMPTS, top_p=0.0)


def test_hf_generate_drop_in(digits, ascii_sharp):
    model, tok = ascii_sharp
    ours = generate(model, tok, PROMPTS, max_new_tokens=10, greedy=True)
    theirs = generate_hf(model, tok, PROMPTS, max_new_tokens=10, greedy=True)
    assert theirs.completions == ours.completions
    model, tok = digits
    ro = generate_hf(model, tok, PROMPTS, num_generations=4, max_new_tokens=30, temperature=0.7,
                     generator=torch.Generator().manual_seed(0))
    assert ro.completion_ids.shape[0] == 8 and ro.prompts[:4] == [PROMPTS[0]] * 4
    assert ro.terminated.any()
    lp = token_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask, 0.7)
    assert (lp - ro.logprobs).abs().max() < 1e-4
