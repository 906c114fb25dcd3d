"""PPO for language models (C14, C15) on the tiny CPU model: runs, learns a critic, resumes exactly."""
import math

import pytest
import torch

from rlcore.llm.models import tiny_model
from rlcore.llm.ppo import PPOLMConfig, ValueHead, train_ppo_lm
from rlcore.llm.tasks import arithmetic_dataset


def shifted_digit_reward(prompts, completions, **kwargs):
    """1 + share of digits: a sequence score with a non-zero mean the critic must learn."""
    return [1.0 + sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def _cfg(**kw):
    base = dict(total_steps=12, batch_prompts=4, num_generations=2, max_new_tokens=12, template=None,
                learning_rate=1e-3, value_learning_rate=3e-2, minibatch_size=8, update_epochs=2, seed=0)
    base.update(kw)
    return PPOLMConfig(**base)


@pytest.fixture(scope="module")
def data():
    return arithmetic_dataset(32, digits=1, seed=0)


@pytest.mark.slow
def test_ppo_lm_runs_and_value_loss_decreases(data, tmp_path):
    torch.set_num_threads(1)
    model, tok = tiny_model(seed=0, n_layer=1, d_model=32)
    res = train_ppo_lm(_cfg(log_path=str(tmp_path / "log.jsonl")), model, tok, data, [shifted_digit_reward])
    h = res.history
    for key in ("loss", "pg_loss", "value_loss", "reward", "kl_ref", "clip_frac", "time_per_step_s", "peak_mem_gb",
                "completion_length", "grad_norm"):
        assert key in h and all(math.isfinite(v) for v in h[key]), key
    assert (h["time_per_step_s"] > 0).all() and (h["peak_mem_gb"] > 0).all()
    v = h["first_value_loss"]  # value loss on the first minibatch of each fresh rollout (not yet fitted)
    assert v[-3:].mean() < 0.3 * v[:3].mean(), v
    assert (tmp_path / "log.jsonl").read_text().count("\n") == 12
    assert isinstance(res.model, ValueHead)


def test_ppo_lm_resume_is_exact(data, tmp_path):
    torch.set_num_threads(1)
    cfg_full = _cfg(total_steps=4)
    m1, tok = tiny_model(seed=0, n_layer=1, d_model=32)
    full = train_ppo_lm(cfg_full, m1, tok, data, [shifted_digit_reward])

    ck = str(tmp_path / "ppo.pt")
    m2, _ = tiny_model(seed=0, n_layer=1, d_model=32)
    train_ppo_lm(_cfg(total_steps=2, checkpoint_path=ck), m2, tok, data, [shifted_digit_reward])
    m3, _ = tiny_model(seed=0, n_layer=1, d_model=32)  # fresh model: everything comes from the checkpoint
    resumed = train_ppo_lm(_cfg(total_steps=4, checkpoint_path=ck, resume=True), m3, tok, data, [shifted_digit_reward])
    assert list(resumed.history.steps("reward")) == [1, 2, 3, 4]
    assert resumed.history["reward"] == pytest.approx(full.history["reward"], abs=1e-6)
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_ppo_lm_options_kl_in_loss_bootstrap_separate_critic(data):
    torch.set_num_threads(1)
    model, tok = tiny_model(seed=1, n_layer=1, d_model=32)
    res = train_ppo_lm(_cfg(total_steps=3, kl_in="loss", separate_critic=True, beta=0.1),
                       model, tok, data, [shifted_digit_reward])
    assert "kl_loss" in res.history and all(math.isfinite(x) for x in res.history["kl_loss"])
    # the separate critic has its own trunk that was trained away from the policy's
    assert res.model.critic is not None
    p = dict(res.model.policy.named_parameters())
    c = dict(res.model.critic.named_parameters())
    assert any(not torch.equal(p[k], c[k]) for k in p)
    # truncation="bootstrap": cut-off sequences carry no score, GAE bootstraps from V
    res = train_ppo_lm(_cfg(total_steps=2, truncation="bootstrap"), model, tok, data, [shifted_digit_reward])
    assert all(math.isfinite(x) for x in res.history["loss"])


def test_ppo_lm_config_errors():
    with pytest.raises(ValueError, match="kl_in"):
        PPOLMConfig(kl_in="both")
    with pytest.raises(ValueError, match="truncation"):
        PPOLMConfig(truncation="maybe")
    with pytest.raises(ValueError, match="total_steps"):
        PPOLMConfig(total_steps=0)


def test_ppo_lm_fast_sampler_trains_and_is_reproducible(data):
    """fast=True samples with generate_fast (the GRPO CPU path): the run trains and the same seed repeats it."""
    torch.set_num_threads(1)
    runs = []
    for _ in range(2):
        model, tok = tiny_model(seed=0, n_layer=1, d_model=32)
        runs.append(train_ppo_lm(_cfg(total_steps=3, fast=True), model, tok, data, [shifted_digit_reward]))
    h = runs[0].history
    assert all(math.isfinite(v) for v in h["loss"]) and len(h["reward"]) == 3
    assert runs[0].history["reward"] == pytest.approx(runs[1].history["reward"], abs=0)
    for (k, a), (_, b) in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="fast"):
        _cfg(fast="yes")


def test_ppo_lm_checkpoint_without_the_fast_field_resumes(data, tmp_path):
    """A checkpoint written before ``PPOLMConfig.fast`` existed resumes with the default (the teaching sampler);
    one that asks for the other sampler is refused."""
    torch.set_num_threads(1)
    ck = str(tmp_path / "ppo.pt")
    m, tok = tiny_model(seed=0, n_layer=1, d_model=32)
    train_ppo_lm(_cfg(total_steps=1, checkpoint_path=ck), m, tok, data, [shifted_digit_reward])
    state = torch.load(ck, weights_only=False)
    del state["config"]["fast"]
    torch.save(state, ck)
    m, _ = tiny_model(seed=0, n_layer=1, d_model=32)
    res = train_ppo_lm(_cfg(total_steps=2, checkpoint_path=ck, resume=True), m, tok, data, [shifted_digit_reward])
    assert list(res.history.steps("reward")) == [1, 2]
    with pytest.raises(ValueError, match="fast"):
        train_ppo_lm(_cfg(total_steps=3, checkpoint_path=ck, resume=True, fast=True), m, tok, data,
                     [shifted_digit_reward])
