"""Rejection sampling and distillation (C23): only verified samples are kept; the pipeline runs on the tiny model."""
import math

import pytest
import torch

from rlcore.llm.distill import (ComputeLedger, count_parameters, distill_vs_rl, grpo_step_flops,
                                rejection_sample, rl_steps_for_budget)
from rlcore.llm.sft import SFTConfig
from rlcore.llm.tasks import arithmetic_dataset


def _stub_teacher(examples):
    """Deterministic fake teacher: per question, sample j is right+well-formed (j=0), right but badly formatted
    (j=1), well-formed but wrong (j=2), or a duplicate of the good one (j=3)."""
    by_prompt = {ex.prompt: ex.answer for ex in examples}

    def generate_fn(prompts, g):
        out = []
        for p in prompts:
            q = next(q for q in by_prompt if q in p)
            a = by_prompt[q]
            wrong = str(int(a) + 1)
            cand = [f" add them</think><answer>{a}</answer>", f" add them <answer>{a}</answer>",
                    f" add them</think><answer>{wrong}</answer>", f" add them</think><answer>{a}</answer>"]
            out += [cand[j % 4] for j in range(g)]
        return out

    return generate_fn


def test_rejection_sampling_keeps_only_correct_and_well_formed():
    from rlcore.llm.rewards import accuracy_reward, format_reward

    exs = arithmetic_dataset(10, digits=2, seed=3)
    pairs, stats = rejection_sample(None, None, exs, num_samples=4, generate_fn=_stub_teacher(exs),
                                    max_per_prompt=None, return_stats=True)
    # j=0 and j=3 pass, j=3 is a duplicate of j=0 -> exactly one pair per question
    assert len(pairs) == len(exs) and stats.accepted == 2 * len(exs) and stats.samples == 4 * len(exs)
    assert stats.acceptance_rate == pytest.approx(0.5) and stats.prompts_solved == len(exs)
    for (prompt, comp), ex in zip(pairs, exs):
        assert ex.prompt in prompt and prompt.endswith("<think>")
        assert accuracy_reward([prompt], [comp], answer=[ex.answer]) == [1.0]
        assert format_reward([prompt], [comp], prefilled_think=True) == [1.0]
    # only the format filter: the wrong-but-formatted answer now passes too
    pairs_fmt = rejection_sample(None, None, exs, reward_funcs=[format_reward], num_samples=4,
                                 generate_fn=_stub_teacher(exs), max_per_prompt=None)
    assert len(pairs_fmt) == 2 * len(exs)
    with pytest.raises(ValueError, match="generate_fn returned"):
        rejection_sample(None, None, exs, num_samples=4, generate_fn=lambda p, g: ["x"])


def test_compute_accounting():
    n = 1000
    # one prompt of 10 tokens, 2 samples of 5 tokens, mu = 1, no reference model:
    # generation 10 + 2*5 = 20 forward tokens; training 2 * 15 tokens
    assert grpo_step_flops(n, 1, 2, 10, 5) == 2 * n * 20 + 6 * n * 30
    # with a reference model and mu = 2: + 2*15 forward (ref) + 2*15 forward (old), training doubles
    assert grpo_step_flops(n, 1, 2, 10, 5, num_iterations=2, beta=0.1) == 2 * n * (20 + 60) + 6 * n * 60
    per = grpo_step_flops(n, 1, 2, 10, 5)
    assert rl_steps_for_budget(3.5 * per, n, 1, 2, 10, 5) == 3
    led = ComputeLedger()
    led.forward(10, 7, "a")
    led.train(10, 3, "b")
    assert led.flops == 2 * 10 * 7 + 6 * 10 * 3 and set(led.breakdown()) == {"a", "b"}


@pytest.mark.slow
def test_distill_vs_rl_smoke_on_tiny_models():
    """The whole C23 pipeline on tiny models: a teacher SFT-ed on traces, rejection sampling, distillation,
    GRPO at matched compute; the numbers are not meaningful at this size, only that it runs and accounts."""
    from rlcore.llm.grpo import GRPOConfig
    from rlcore.llm.models import tiny_model
    from rlcore.llm.sft import sft_dataset, train_sft

    torch.set_num_threads(1)
    train = arithmetic_dataset(24, digits=1, seed=0)
    test = arithmetic_dataset(8, digits=1, seed=0, split="test")
    teacher, tok = tiny_model(seed=0, n_layer=1, d_model=48)
    train_sft(teacher, tok, sft_dataset(train, template=None, style="compact"),
              SFTConfig(max_steps=60, batch_size=8, learning_rate=5e-3))
    student, _ = tiny_model(seed=1, n_layer=1, d_model=16)
    out = distill_vs_rl(teacher, student, tok, train, test, num_samples=2, template=None, max_new_tokens=48,
                        sft_cfg=SFTConfig(max_steps=10, batch_size=8, learning_rate=5e-3),
                        grpo_cfg=GRPOConfig(prompts_per_step=2, num_generations=2, max_new_tokens=48, template=None,
                                            learning_rate=1e-3, progress_bar=False))
    assert out["n_params"]["teacher"] > out["n_params"]["student"] == count_parameters(student)
    for arm in ("distill", "rl"):
        assert 0.0 <= out[arm]["heldout_accuracy"] <= 1.0 and 0.0 <= out[arm]["format_rate"] <= 1.0
    assert out["rl"]["steps"] >= 1 and out["rl"]["flops"] > 0
    if out["distill"]["pairs"]:
        # RL was costed with max_new_tokens (an upper bound), so it never exceeds the distillation budget
        assert out["rl"]["flops"] <= out["distill"]["flops"] or out["rl"]["steps"] == 1
        assert all(math.isfinite(x) for x in out["distill"]["sft_loss"])
