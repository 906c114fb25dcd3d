"""RL for language models (chapters on GRPO, PPO-RLHF, R1-Zero, distillation).

Submodules (import them explicitly; nothing heavy is imported here):

* ``rlcore.llm.tasks``     synthetic arithmetic and Countdown tasks, the R1-Zero prompt template
* ``rlcore.llm.rewards``   rule-based rewards (accuracy, format, language consistency, Countdown,
  code), ``compute_rewards``, reflection metrics for the "aha moment"
* ``rlcore.llm.sandbox``   contained subprocess execution of generated Python code
* ``rlcore.llm.models``    model loading (offline SmolLM2, tiny random models)
* ``rlcore.llm.sampling``  batched generation with log-probabilities
* ``rlcore.llm.grpo``      GRPO loss variants and trainer
* ``rlcore.llm.ppo``       PPO for language models (value head, KL-in-reward, token-level GAE)
* ``rlcore.llm.sft``       supervised fine-tuning on chain-of-thought traces
* ``rlcore.llm.distill``   rejection sampling and distillation
* ``rlcore.llm.preferences`` / ``rlcore.llm.dpo``  preference data, reward models (Bradley–Terry); KL-optimum, DPO/IPO, best-of-n
"""
