"""Every classic algorithm can run the same greedy evaluation (``eval_every`` / ``eval_episodes``).

It is the success criterion of ``benchmarks/classic_control.py``, so it must (1) evaluate after the update
that crosses each ``eval_every`` mark, (2) use ``rlcore.algos.evaluate`` with deterministic actions on
separate environments seeded ``seed + 100000``, and (3) leave training untouched: the same seed gives the
same training episodes and weights with or without evaluations.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rlcore.algos import evaluate, get_algorithm

SMALL = {
    "ppo": dict(num_envs=2, num_steps=128, total_timesteps=1024),
    "trpo": dict(num_envs=2, num_steps=128, total_timesteps=1024),
    "reinforce": dict(episodes_per_update=4, total_timesteps=600),
    "grpo": dict(num_groups=1, group_size=4, total_timesteps=600),
    "dqn": dict(total_timesteps=600, learning_starts=100, buffer_size=1000),
}


def _train(algo, **kw):
    module = get_algorithm(algo)
    if hasattr(module, "default_config"):
        cfg = module.default_config("CartPole-v1", seed=3, **SMALL[algo], **kw)
    else:
        from rlcore.algos import config_class
        cfg = config_class(module)(env_id="CartPole-v1", seed=3, **SMALL[algo], **kw)
    return module, module.train(cfg, progress=False)


@pytest.mark.parametrize("algo", ["ppo", "trpo", "reinforce", "grpo", "dqn"])
def test_evaluations_leave_training_unchanged(algo):
    _, plain = _train(algo, eval_every=0)
    module, evaluated = _train(algo, eval_every=256, eval_episodes=2)
    assert "eval_return" in evaluated.history and "eval_return" not in plain.history
    np.testing.assert_array_equal(plain.history["episode_return"], evaluated.history["episode_return"])
    for a, b in zip(plain.agent.state_dict().values(), evaluated.agent.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("algo", ["ppo", "trpo"])
def test_evaluation_after_each_crossed_mark_with_the_shared_evaluator(algo):
    module, res = _train(algo, eval_every=300, eval_episodes=3)
    # rollouts of 256 steps: the marks 300, 600, 900 are crossed by the updates ending at 512, 768, 1024
    assert list(res.history.steps("eval_return")) == [512, 768, 1024]
    # the last evaluation is exactly rlcore.algos.evaluate of the final agent, deterministic, on seed + 100000
    last = evaluate(lambda o: module.act(res.agent, o), "CartPole-v1", 3, seed=3 + 100_000)
    assert res.history["eval_return"][-1] == pytest.approx(float(last.mean()))


@pytest.mark.parametrize("algo", ["ppo", "trpo", "grpo"])
@pytest.mark.parametrize("field,value", [("eval_every", -1), ("eval_episodes", 0), ("eval_every", 2.5)])
def test_bad_evaluation_settings_are_refused(algo, field, value):
    module = get_algorithm(algo)
    cfg = module.default_config("CartPole-v1", **{field: value})
    with pytest.raises(ValueError, match=field):
        module.train(cfg, progress=False)
