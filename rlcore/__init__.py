"""rlcore: reinforcement learning from the policy gradient theorem to DeepSeek-R1, from scratch in PyTorch.

Submodules are imported lazily so ``import rlcore`` stays fast:

* ``rlcore.utils``     seeding, quick mode, validation
* ``rlcore.tabular``   exact computations on tabular MDPs
* ``rlcore.returns``   returns and advantage estimators (k-step, GAE, group-normalised)
* ``rlcore.kl``        KL estimators k1, k2, k3
* ``rlcore.losses``    DQN / REINFORCE / TRPO / PPO losses
* ``rlcore.envs``      Gymnasium environments, vector envs, videos
* ``rlcore.networks``  MLPs, policy heads, value and Q networks
* ``rlcore.training``  history, logs, plots, atomic checkpoints
* ``rlcore.algos``     DQN, REINFORCE, TRPO, PPO, GRPO on control tasks
* ``rlcore.parallel``  independent training runs (seeds, settings) in a pool, one process per core
* ``rlcore.llm``       GRPO / PPO / SFT / distillation for language models
"""
from .utils import pick, quick_mode, seed_everything

__version__ = "0.1.0"
__all__ = ["pick", "quick_mode", "seed_everything", "__version__"]
