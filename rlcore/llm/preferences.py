"""Human-feedback machinery: preference data, the Bradley–Terry model and reward models (RLHF stage 2).

RLHF (Christiano et al. 2017; Stiennon et al. 2020; Ouyang et al. 2022) does not get a reward function
from the task: it asks people which of two completions of the same prompt they prefer, fits a reward
model to those comparisons, and then optimises the policy against the learned reward (PPO,
:mod:`rlcore.llm.ppo`) or directly on the comparisons (DPO, :mod:`rlcore.llm.dpo`).

The preference model (eq-bradley-terry; Bradley & Terry 1952) links a scalar reward to comparisons::

    P(y_w > y_l | x) = sigma( r(x, y_w) - r(x, y_l) ),      sigma(z) = 1 / (1 + e^{-z})

Only reward *differences* between completions of one prompt are identified: ``r(x, y) + c(x)`` gives the
same probabilities for any shift ``c(x)`` (eq-bt-shift).

The reward-model loss (eq-reward-model-loss) is the negative log-likelihood of the observed labels::

    L_R(phi) = - 1/B sum_i log sigma( r_phi(x_i, y_w,i) - r_phi(x_i, y_l,i) )

with the gradient (eq-bt-gradient), with ``d_i = r_phi(x_i, y_w,i) - r_phi(x_i, y_l,i)``::

    dL_R / dr_phi(x_i, y_w,i) = - sigma(-d_i) / B = - dL_R / dr_phi(x_i, y_l,i)

so a pair the model already orders confidently (``d_i >> 0``) contributes almost nothing. An optional
centring term (eq-reward-centering; Eisenstein et al. 2023) pins the free shift::

    L_center(phi) = 1/B sum_i ( r_phi(x_i, y_w,i) + r_phi(x_i, y_l,i) )^2

:class:`RewardModel` is a causal-LM backbone (SmolLM2 or the tiny model, optionally LoRA adapters
through :func:`rlcore.llm.fast.apply_lora`) with a linear head reading the last hidden state at the
last real token of ``prompt + completion + EOS`` (InstructGPT's design).

A preference task with a known truth
-------------------------------------
Real human labels cannot be checked; here a programmed "rater" stands in for the humans, so every
experiment can compare what was learned with the truth. The gold reward of an arithmetic completion
(eq-gold-reward) is correctness minus a brevity cost::

    g(x, y) = 1[ the answer in y equals a(x) ]  -  lambda * |y|        (|y| in characters)

(the answer is read as :func:`rlcore.llm.rewards.lenient_accuracy_reward` reads it: the ``<answer>``
block if there is one, else the last number). The rater labels two completions by a Bradley–Terry coin
flip on the gold difference (eq-preference-labels)::

    P(a labelled chosen) = sigma( (g(x, a) - g(x, b)) / beta_label )

``beta_label`` is the rater's noise temperature: 0 gives noiseless labels (ties broken by a fair coin),
large values coin-flip labels. Labels drawn this way follow eq-bradley-terry exactly, with the true
reward ``r*(x, y) = g(x, y) / beta_label``.

The API is CLI-free; the trainers follow :mod:`rlcore.lifecycle` (checked paths, atomic checkpoints,
Ctrl-C saves and raises :class:`~rlcore.lifecycle.TrainingInterrupted`, ``resume=True`` continues exactly).
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..lifecycle import (GracefulInterrupt, check_max_grad_norm, check_resume_config, clip_grad_norm,
                         load_run_checkpoint, prepare_run)
from ..training import History, JSONLLogger, rng_state, save_checkpoint, set_rng_state
from ..utils import check_positive

__all__ = [
    "PreferencePair",
    "make_preference_pairs",
    "check_preference_pairs",
    "bradley_terry_prob",
    "bradley_terry_loss",
    "reward_centering_loss",
    "gold_reward",
    "ArithmeticGold",
    "label_pairs_bradley_terry",
    "sample_preference_pairs",
    "encode_prompt_completion",
    "RewardModel",
    "RewardModelConfig",
    "RESUME_SAFE_CHANGES",
    "train_reward_model",
    "reward_model_accuracy",
]


# ============================================================== preference data
@dataclass
class PreferencePair:
    """One comparison: for ``prompt``, the rater preferred ``chosen`` (y_w) over ``rejected`` (y_l)."""

    prompt: str
    """The text the policy continues (already formatted with any prompt template)."""
    chosen: str
    """The preferred completion y_w."""
    rejected: str
    """The dispreferred completion y_l."""
    meta: dict = field(default_factory=dict)
    """Anything known about the pair (e.g. the gold rewards and the labelling probability)."""

    def __post_init__(self):
        for name in ("prompt", "chosen", "rejected"):
            v = getattr(self, name)
            if not isinstance(v, str):
                raise TypeError(f"PreferencePair.{name} must be a string, got {type(v).__name__}")
            if not v.strip():
                raise ValueError(f"PreferencePair.{name} is empty; a comparison needs a prompt and two non-empty "
                                 f"completions: drop this pair or resample it")
        if self.chosen == self.rejected:
            raise ValueError(f"chosen and rejected are the same text ({self.chosen[:40]!r}); a comparison of a "
                             f"completion with itself carries no preference: drop this pair or resample it")


def make_preference_pairs(prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]) -> list[PreferencePair]:
    """:class:`PreferencePair` s from three parallel lists (one entry per comparison), each validated."""
    prompts, chosen, rejected = list(prompts), list(chosen), list(rejected)
    if not (len(prompts) == len(chosen) == len(rejected)):
        raise ValueError(f"got {len(prompts)} prompts, {len(chosen)} chosen and {len(rejected)} rejected "
                         f"completions; pass one prompt, one chosen and one rejected text per comparison")
    return [PreferencePair(p, c, r) for p, c, r in zip(prompts, chosen, rejected)]


def check_preference_pairs(pairs, what: str = "pairs") -> list[PreferencePair]:
    """A validated list of :class:`PreferencePair` from pairs, ``(prompt, chosen, rejected)`` tuples or
    ``{"prompt", "chosen", "rejected"}`` dicts (TRL's preference format); an empty list is refused."""
    if isinstance(pairs, (PreferencePair, str)):
        raise TypeError(f"{what} must be a list of preference pairs, not a single {type(pairs).__name__}")
    out = []
    for i, p in enumerate(pairs):
        if isinstance(p, PreferencePair):
            out.append(p)
        elif isinstance(p, Mapping):
            missing = [k for k in ("prompt", "chosen", "rejected") if k not in p]
            if missing:
                raise ValueError(f"{what}[{i}] lacks {missing}; a preference dict needs prompt, chosen and rejected")
            out.append(PreferencePair(p["prompt"], p["chosen"], p["rejected"], dict(p.get("meta", {}))))
        elif isinstance(p, (tuple, list)) and len(p) == 3:
            out.append(PreferencePair(*p))
        else:
            raise TypeError(f"{what}[{i}] is a {type(p).__name__}; pass PreferencePair objects, (prompt, chosen, "
                            f"rejected) tuples or dicts with those keys")
    if not out:
        raise ValueError(f"{what} is empty; build comparisons with label_pairs_bradley_terry(...) or "
                         f"make_preference_pairs(prompts, chosen, rejected)")
    return out


def _pairs_digest(pairs: Sequence[PreferencePair]) -> str:
    """A fingerprint of the texts, stored in checkpoints so a run cannot be resumed on other data."""
    h = hashlib.sha256()
    for p in pairs:
        for s in (p.prompt, p.chosen, p.rejected):
            h.update(s.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
    return h.hexdigest()


# ============================================================== Bradley–Terry
def bradley_terry_prob(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """``P(y_w > y_l) = sigma(r_w - r_l)`` (eq-bradley-terry), elementwise."""
    return torch.sigmoid(torch.as_tensor(r_chosen) - torch.as_tensor(r_rejected))


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Reward-model loss (eq-reward-model-loss): ``-mean(log sigma(r_chosen - r_rejected))``.

    ``r_chosen``, ``r_rejected``: ``[B]`` rewards of the preferred and dispreferred completions.
    ``logsigmoid`` keeps it finite for any margin (``log(sigmoid(z))`` underflows to ``-inf`` for z < -100).
    """
    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 1 or r_chosen.numel() == 0:
        raise ValueError(f"r_chosen and r_rejected must both be [B] with B >= 1; got {tuple(r_chosen.shape)} and "
                         f"{tuple(r_rejected.shape)}")
    margin = r_chosen - r_rejected  # [B]
    return -F.logsigmoid(margin).mean()


def reward_centering_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """``mean((r_chosen + r_rejected)^2)`` (eq-reward-centering; Eisenstein et al. 2023): pins the free shift of
    eq-bt-shift so rewards stay near 0 (added with a small weight, ``RewardModelConfig.center_rewards_coef``)."""
    return ((r_chosen + r_rejected) ** 2).mean()


# ============================================================== a task with a known truth
def gold_reward(completion: str, answer, length_penalty: float = 0.005) -> float:
    """The gold reward of an arithmetic completion (eq-gold-reward): ``1[correct] - length_penalty * len(completion)``.

    Correct means the answer as :func:`rlcore.llm.rewards.lenient_accuracy_reward` reads it (the
    ``<answer>`` block, else the last number) equals ``answer``. With the default 0.005 per character a
    correct answer is worth 200 characters: correctness dominates, and among equally correct answers the
    shorter wins.
    """
    from .rewards import lenient_accuracy_reward

    check_positive("length_penalty", length_penalty, allow_zero=True)
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a string, got {type(completion).__name__}")
    correct = lenient_accuracy_reward([""], [completion], [answer])[0]
    return float(correct) - length_penalty * len(completion)


@dataclass
class ArithmeticGold:
    """The programmed rater's reward ``gold_fn(prompt, completion) -> float`` (eq-gold-reward) for arithmetic prompts."""

    answers: dict
    """Prompt text (as the policy sees it, template included) -> reference answer."""
    length_penalty: float = 0.005
    """``lambda`` of eq-gold-reward: cost per character of the completion."""

    def __post_init__(self):
        check_positive("length_penalty", self.length_penalty, allow_zero=True)
        if not self.answers:
            raise ValueError("answers is empty; build the rater with ArithmeticGold.from_examples(examples, prompts)")

    @classmethod
    def from_examples(cls, examples: Sequence, prompts: Sequence[str] | None = None,
                      length_penalty: float = 0.005) -> "ArithmeticGold":
        """From :class:`rlcore.llm.tasks.Example` s; ``prompts``: their formatted texts (default: ``ex.prompt``)."""
        examples = list(examples)
        prompts = [ex.prompt for ex in examples] if prompts is None else list(prompts)
        if len(prompts) != len(examples):
            raise ValueError(f"got {len(prompts)} prompts for {len(examples)} examples; pass one formatted prompt "
                             f"per example")
        return cls({p: ex.answer for p, ex in zip(prompts, examples)}, length_penalty)

    def __call__(self, prompt: str, completion: str) -> float:
        if prompt not in self.answers:
            raise KeyError(f"the rater knows no answer for the prompt {prompt[:60]!r}; build it from the same "
                           f"formatted prompts the completions were sampled for")
        return gold_reward(completion, self.answers[prompt], self.length_penalty)


def _as_rng(rng) -> np.random.Generator:
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.Generator):
        return rng
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def label_pairs_bradley_terry(prompts: Sequence[str], completions_a: Sequence[str], completions_b: Sequence[str],
                              gold_fn: Callable[[str, str], float], beta_label: float = 0.1,
                              rng: np.random.Generator | int | None = None) -> list[PreferencePair]:
    """Label each ``(prompt, a, b)`` by a Bradley–Terry coin flip on the gold rewards (eq-preference-labels).

    ``a`` is chosen with probability ``sigma((g(a) - g(b)) / beta_label)``; ``beta_label = 0`` labels by the
    gold order without noise (a tie by a fair coin). Pairs whose two texts are identical or one is
    empty carry no preference and are dropped (compare ``len`` of the result with the input's).
    ``meta`` of each pair records ``gold_chosen``, ``gold_rejected`` and ``p_chosen`` (the label's probability).
    ``rng``: a NumPy ``Generator`` or a seed (``None``: fresh entropy); one uniform number is drawn per input
    pair, dropped or not, so a pair's label depends only on the seed and its position.
    """
    prompts, completions_a, completions_b = list(prompts), list(completions_a), list(completions_b)
    if not (len(prompts) == len(completions_a) == len(completions_b)):
        raise ValueError(f"got {len(prompts)} prompts, {len(completions_a)} completions_a and {len(completions_b)} "
                         f"completions_b; pass one prompt and two completions per comparison")
    check_positive("beta_label", beta_label, allow_zero=True)
    if not callable(gold_fn):
        raise TypeError("gold_fn must be a callable gold_fn(prompt, completion) -> float, e.g. ArithmeticGold")
    gen = _as_rng(rng)
    out = []
    for p, a, b in zip(prompts, completions_a, completions_b):
        u = gen.random()  # one draw per input pair, kept or not: the labels of the others do not depend on the drops
        if a == b or not a.strip() or not b.strip():
            continue
        ga, gb = float(gold_fn(p, a)), float(gold_fn(p, b))
        if not (math.isfinite(ga) and math.isfinite(gb)):
            raise ValueError(f"gold_fn returned {ga!r} and {gb!r} for a pair; the gold reward must be finite")
        if beta_label == 0:
            p_a = 0.5 if ga == gb else float(ga > gb)
        else:
            p_a = 1.0 / (1.0 + math.exp(-max(min((ga - gb) / beta_label, 700.0), -700.0)))
        if u < p_a:
            out.append(PreferencePair(p, a, b, {"gold_chosen": ga, "gold_rejected": gb, "p_chosen": p_a}))
        else:
            out.append(PreferencePair(p, b, a, {"gold_chosen": gb, "gold_rejected": ga, "p_chosen": 1.0 - p_a}))
    return out


def sample_preference_pairs(model, tokenizer, prompts: Sequence[str], n_per_prompt: int = 1,
                            max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0,
                            generator: torch.Generator | None = None, fast: bool = True, bf16: bool = False,
                            batch_prompts: int = 16) -> tuple[list[str], list[str], list[str]]:
    """Two sampled completions per comparison: ``(prompts, completions_a, completions_b)``, each of length
    ``len(prompts) * n_per_prompt`` (prompt ``i``'s comparisons are consecutive), ready for
    :func:`label_pairs_bradley_terry`.

    Samples ``2 * n_per_prompt`` completions per prompt from ``model`` with
    :func:`rlcore.llm.fast.generate_fast` (``fast=True``) or the teaching sampler
    :func:`rlcore.llm.sampling.generate`, ``batch_prompts`` prompts at a time; ``generator`` makes it
    reproducible. Identical or empty completions are kept here (the labeller drops them).
    """
    from .fast import generate_fast
    from .sampling import check_sampling_args, generate

    prompts = check_sampling_args(prompts, 1, max_new_tokens, temperature, top_p)
    if isinstance(n_per_prompt, bool) or not isinstance(n_per_prompt, int) or n_per_prompt < 1:
        raise ValueError(f"n_per_prompt must be an integer >= 1, got {n_per_prompt!r}")
    if isinstance(batch_prompts, bool) or not isinstance(batch_prompts, int) or batch_prompts < 1:
        raise ValueError(f"batch_prompts must be an integer >= 1, got {batch_prompts!r}")
    G = 2 * n_per_prompt
    out_p, out_a, out_b = [], [], []
    for s in range(0, len(prompts), batch_prompts):
        chunk = prompts[s:s + batch_prompts]
        if fast:
            ro = generate_fast(model, tokenizer, chunk, num_generations=G, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, generator=generator, bf16=bf16)
        else:
            ro = generate(model, tokenizer, chunk, num_generations=G, max_new_tokens=max_new_tokens,
                          temperature=temperature, top_p=top_p, generator=generator)
        for i, p in enumerate(chunk):
            group = ro.completions[i * G:(i + 1) * G]
            for k in range(n_per_prompt):
                out_p.append(p)
                out_a.append(group[2 * k])
                out_b.append(group[2 * k + 1])
    return out_p, out_a, out_b


# ============================================================== tokenisation
def encode_prompt_completion(tokenizer, prompts: Sequence[str], completions: Sequence[str],
                             max_length: int | None = None, add_eos: bool = True, device=None):
    """Token ids of ``(prompt, completion)`` rows, laid out as the samplers lay them out.

    Returns ``(prompt_ids [N, P], prompt_mask [N, P], completion_ids [N, L], completion_mask [N, L])``:
    prompts **left**-padded, completions (plus EOS when ``add_eos``) **right**-padded, each tokenised on its
    own (as in :func:`rlcore.llm.sft.encode_pair`). Longer than ``max_length`` -> the completion is cut on
    the right. Rows with equal prompts get equal prompt rows (prefix reuse in
    :func:`rlcore.llm.fast.token_logprobs_fast` relies on it).
    """
    prompts, completions = list(prompts), list(completions)
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts for {len(completions)} completions; pass one prompt per completion")
    if not prompts:
        raise ValueError("no (prompt, completion) rows to encode")
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise ValueError("tokenizer has no eos_token_id; set tokenizer.eos_token or pass add_eos=False")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    cache: dict[str, list[int]] = {}
    p_rows, c_rows = [], []
    for p, c in zip(prompts, completions):
        if p not in cache:
            cache[p] = tokenizer(p, add_special_tokens=False)["input_ids"]
        pi = cache[p]
        ci = tokenizer(c, add_special_tokens=False)["input_ids"] + ([eos] if add_eos else [])
        if not pi:
            raise ValueError("every prompt must encode to at least one token; got an empty prompt")
        if max_length is not None:
            if len(pi) >= max_length:
                raise ValueError(f"a prompt has {len(pi)} tokens, not fewer than max_length={max_length}; raise "
                                 f"max_length")
            ci = ci[: max_length - len(pi)]
        if not ci:
            raise ValueError("a completion encodes to no token (empty and add_eos=False); pass non-empty completions")
        p_rows.append(pi)
        c_rows.append(ci)
    P, L = max(map(len, p_rows)), max(map(len, c_rows))
    n = len(p_rows)
    prompt_ids = torch.full((n, P), pad, dtype=torch.long)
    prompt_mask = torch.zeros((n, P), dtype=torch.long)
    completion_ids = torch.full((n, L), pad, dtype=torch.long)
    completion_mask = torch.zeros((n, L), dtype=torch.long)
    for i, (pi, ci) in enumerate(zip(p_rows, c_rows)):
        prompt_ids[i, P - len(pi):] = torch.tensor(pi)
        prompt_mask[i, P - len(pi):] = 1
        completion_ids[i, :len(ci)] = torch.tensor(ci)
        completion_mask[i, :len(ci)] = 1
    return prompt_ids.to(device), prompt_mask.to(device), completion_ids.to(device), completion_mask.to(device)


def _interleave(pairs: Sequence[PreferencePair]) -> tuple[list[str], list[str]]:
    """``[p1, p1, p2, p2, ...]`` and ``[c1, r1, c2, r2, ...]``: chosen rows even, rejected rows odd; the two rows
    of a pair share their prompt and sit side by side (prefix reuse)."""
    prompts = [p.prompt for p in pairs for _ in range(2)]
    texts = [t for p in pairs for t in (p.chosen, p.rejected)]
    return prompts, texts


# ============================================================== reward model
class RewardModel(nn.Module):
    """``r_phi(x, y)``: a causal-LM backbone and a linear head on the hidden state at the last real token.

    The input is ``prompt + completion + EOS`` (:func:`encode_prompt_completion`); the head reads the
    final hidden state (after the last norm) at the EOS, which has attended to the whole text. The LM head
    of the backbone is not used. ``lora_r > 0`` trains LoRA adapters of the backbone
    (:func:`rlcore.llm.fast.apply_lora`) and the head; otherwise every weight trains.
    The head starts with weights ``N(0, 1/(d+1))`` (drawn from ``seed``, the global RNG untouched) and bias 0
    (Stiennon et al. 2020), so the first rewards are small but their gradient already reaches the backbone.
    ``tokenizer`` (optional) is used by :meth:`rewards`, :meth:`score` and :meth:`as_reward_function` when
    they are not given one; ``max_length`` cuts long completions there.
    """

    def __init__(self, backbone: nn.Module, tokenizer=None, lora_r: int = 0, lora_alpha: float | None = None,
                 max_length: int | None = None, seed: int = 0):
        super().__init__()
        from .fast import _unwrap, apply_lora

        cfg = getattr(_unwrap(backbone), "config", None)
        if cfg is None or not hasattr(cfg, "hidden_size") or not hasattr(_unwrap(backbone), "get_decoder"):
            raise TypeError("RewardModel needs a transformers causal LM (with config.hidden_size and get_decoder())")
        if isinstance(lora_r, bool) or not isinstance(lora_r, int) or lora_r < 0:
            raise ValueError(f"lora_r must be an integer >= 0 (0 = train every weight), got {lora_r!r}")
        if lora_r and not hasattr(backbone, "peft_config"):
            backbone = apply_lora(backbone, r=lora_r, alpha=lora_alpha)
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_length = max_length
        d = cfg.hidden_size
        p = next(backbone.parameters())
        self.head = nn.Linear(d, 1, device=p.device, dtype=torch.float32)
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left as it was
            torch.manual_seed(seed)
            nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(d + 1))
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards ``[B]`` of rows ``input_ids [B, T]`` (padding anywhere: positions come from the mask)."""
        from .fast import _unwrap
        from .sampling import _positions

        decoder = _unwrap(self.backbone).get_decoder()
        h = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask),
                    use_cache=False).last_hidden_state  # [B, T, H]
        T = attention_mask.shape[1]
        last = (attention_mask.bool() * torch.arange(1, T + 1, device=attention_mask.device)).argmax(dim=1)  # [B]
        h_last = h[torch.arange(h.shape[0], device=h.device), last]  # [B, H]
        with torch.autocast(device_type=h.device.type, enabled=False):  # the head in float32 even under bf16
            return self.head(h_last.float()).squeeze(-1)  # [B]

    def rewards(self, prompts: Sequence[str], completions: Sequence[str], tokenizer=None,
                max_length: int | None = None) -> torch.Tensor:
        """Differentiable rewards ``[N]`` of ``(prompt, completion)`` texts (one forward pass); ``max_length``
        (default: the model's) cuts long completions."""
        tokenizer = self._tok(tokenizer)
        p_ids, p_mask, c_ids, c_mask = encode_prompt_completion(tokenizer, prompts, completions,
                                                                max_length or self.max_length,
                                                                device=self.head.weight.device)
        return self(torch.cat([p_ids, c_ids], dim=1), torch.cat([p_mask, c_mask], dim=1))

    @torch.no_grad()
    def score(self, prompts: Sequence[str], completions: Sequence[str], tokenizer=None,
              batch_size: int = 16) -> torch.Tensor:
        """Rewards ``[N]`` (float32, CPU, no gradient), ``batch_size`` rows at a time, in eval mode."""
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts for {len(completions)} completions")
        was_training = self.training
        self.eval()
        try:
            out = [self.rewards(prompts[s:s + batch_size], completions[s:s + batch_size], tokenizer).float().cpu()
                   for s in range(0, len(prompts), batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)

    def as_reward_function(self, tokenizer=None, batch_size: int = 16) -> Callable:
        """A TRL-style reward function ``f(prompts, completions, **kwargs) -> list[float]`` scoring with this model,
        for :func:`rlcore.llm.ppo.train_ppo_lm` or :func:`rlcore.llm.grpo.train_grpo` (RLHF's stage 3)."""
        tokenizer = self._tok(tokenizer)

        def reward_model(prompts, completions, **kwargs) -> list[float]:
            return self.score(prompts, completions, tokenizer, batch_size).tolist()

        return reward_model

    def _tok(self, tokenizer):
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise ValueError("no tokenizer: pass tokenizer=... or build the model as RewardModel(backbone, tokenizer)")
        return tokenizer


def reward_model_accuracy(model: RewardModel, pairs, tokenizer=None, batch_size: int = 16) -> float:
    """Share of pairs with ``r(x, chosen) > r(x, rejected)`` (a tie counts as wrong)."""
    pairs = check_preference_pairs(pairs)
    prompts, texts = _interleave(pairs)
    r = model.score(prompts, texts, tokenizer, batch_size)
    return float((r[0::2] > r[1::2]).float().mean())


# ============================================================== shared training loop
@dataclass
class _PairTrainingConfig:
    """Fields shared by :class:`RewardModelConfig` and :class:`rlcore.llm.dpo.DPOConfig`."""

    learning_rate: float = 1e-3
    """AdamW learning rate (1e-3 for the tiny random model; ~1e-5 for a pretrained 135M model, ~1e-4 with LoRA)."""
    epochs: int = 1
    """Passes over the pairs (ignored when ``max_steps`` is set)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides ``epochs``)."""
    batch_size: int = 8
    """Pairs per optimizer step (each pair is two sequences)."""
    max_length: int = 512
    """Maximum tokens of prompt + completion (+ EOS); longer completions are cut on the right."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps, then constant."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping (global norm): ``None`` or ``0`` turns clipping off, otherwise a finite number > 0.
    ``grad_norm`` (the norm before clipping) is logged either way."""
    seed: int = 0
    """Seed of the pair order (epoch ``e``'s order depends only on ``seed`` and ``e``) and of LoRA's init."""
    device: str | None = None
    """Device to train on; ``None`` keeps the model where it is."""
    bf16: bool = False
    """bfloat16 autocast for the forward pass where the processor supports it (weights stay float32)."""
    eval_every: int = 0
    """Evaluate (accuracy on the training pairs and on ``eval_pairs``) every this many steps; 0: only at the end."""
    eval_max_pairs: int = 256
    """Training pairs used for the training-set metrics (the first ones; all when fewer)."""
    eval_batch_size: int = 16
    """Pairs per forward pass in evaluation."""
    log_every: int = 1
    """Record metrics every this many steps."""
    log_path: str | None = None
    """JSONL metrics file."""
    checkpoint_path: str | None = None
    """Atomic checkpoint file; ``None`` disables."""
    checkpoint_every: int = 0
    """Save every this many steps (0: only at the end when ``checkpoint_path`` is set). A Ctrl-C (SIGINT) or
    SIGTERM also saves, at the end of the current step, then raises :class:`rlcore.lifecycle.TrainingInterrupted`."""
    resume: bool = False
    """Continue from ``checkpoint_path`` (it must exist) on the same pairs; the config may differ from the
    checkpoint's only in ``RESUME_SAFE_CHANGES``. The log is cut back to the checkpoint's step."""
    overwrite: bool = False
    """Replace an earlier run's checkpoint and log at the same paths; without it (and without ``resume``) a fresh
    run refuses to start over existing files."""

    def __post_init__(self):
        check_positive("learning_rate", self.learning_rate)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        for name, low in (("epochs", 1), ("batch_size", 1), ("max_length", 2), ("warmup_steps", 0),
                          ("eval_every", 0), ("eval_max_pairs", 1), ("eval_batch_size", 1), ("log_every", 1),
                          ("checkpoint_every", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise ValueError(f"max_steps must be None or an integer >= 1, got {self.max_steps!r}")
        check_max_grad_norm(self.max_grad_norm)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name in ("resume", "overwrite", "bf16"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.resume and self.overwrite:
            raise ValueError("resume=True and overwrite=True contradict each other; choose one")
        if self.resume and not self.checkpoint_path:
            raise ValueError("resume=True needs a checkpoint_path to resume from")

    def total_steps(self, n_pairs: int) -> int:
        """Optimizer steps of a run on ``n_pairs`` pairs."""
        return self.max_steps if self.max_steps is not None else self.epochs * math.ceil(n_pairs / self.batch_size)


_EXTEND = ("training continues to the new total (the learning rate depends only on the step and warmup_steps, and "
           "epoch e's order only on seed and e, so extending a run is the same as having asked for more steps at "
           "the start); the total may not be below the checkpoint's step")
_SAFE_COMMON = {
    "max_steps": _EXTEND,
    "epochs": _EXTEND,
    "checkpoint_every": "only how often the checkpoint is written",
    "checkpoint_path": "the run continues from, and saves to, the new path",
    "log_path": "later rows go to the new log (cut back to the checkpoint's step if it exists)",
    "log_every": "only which steps are logged",
    "eval_every": "only when the evaluation runs (it draws no random numbers and changes no weights)",
    "eval_batch_size": "only the evaluation's batching",
}


def _plain_config(cfg) -> dict:
    """The config as stored in a checkpoint: its plain fields, without the start flags (how to start, not what)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("resume", "overwrite")}


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def _pairs_seen(step: int, n: int, batch_size: int) -> int:
    """Pairs trained on after ``step`` steps (an epoch's last batch may be short)."""
    epochs, b = divmod(step, math.ceil(n / batch_size))
    return epochs * n + min(b * batch_size, n)


NEW_FIELDS = ("temperature",)
"""Config fields added after checkpoints were first written, whose defaults are the behaviour before they existed
(``DPOConfig.temperature = 1``): a checkpoint without them resumes as if it had stored the default."""


def _with_added_defaults(saved: Mapping, cls, names: Sequence[str]) -> dict:
    """``saved`` with each missing field of ``names`` that ``cls`` has filled in with its default."""
    from dataclasses import MISSING, fields

    defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
    return {**{n: defaults[n] for n in names if n in defaults and n not in saved}, **saved}


def _start(cfg, algo: str, safe: Mapping[str, str], pairs: Sequence[PreferencePair], required) -> dict | None:
    """Check the run's files (and read and compare the checkpoint to resume) before any work is done."""
    prepare_run(cfg.checkpoint_path, cfg.log_path, resume=cfg.resume, overwrite=cfg.overwrite)
    if not cfg.resume:
        return None
    ck = load_run_checkpoint(cfg.checkpoint_path, algo=algo, required=tuple(required) + ("pairs_digest",))
    check_resume_config(_with_added_defaults(ck["config"], type(cfg), NEW_FIELDS), _plain_config(cfg), safe,
                        path=cfg.checkpoint_path)
    total = cfg.total_steps(len(pairs))
    if int(ck["step"]) > total:
        raise ValueError(f"the checkpoint {cfg.checkpoint_path!r} is at step {int(ck['step'])}, beyond the {total} "
                         f"steps asked for; raise max_steps/epochs (a run cannot be shortened below its checkpoint)")
    if ck["pairs_digest"] != _pairs_digest(pairs):
        raise ValueError(f"the checkpoint {cfg.checkpoint_path!r} was trained on other preference pairs; resume "
                         f"with the same pairs in the same order, or start a fresh run")
    return ck


def _model_state(model: nn.Module) -> nn.Module:
    """The module whose ``state_dict`` a checkpoint holds: under a ``peft`` wrapper, the base model with its
    adapters injected (the same keys whether the caller passes the wrapper or the model it wrapped in place,
    so a run can be continued with either object)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _train_pairs(cfg, algo: str, model: nn.Module, params: list, pairs: Sequence[PreferencePair], ck: dict | None,
                 step_fn: Callable, eval_fn: Callable | None, extra_state: dict) -> History:
    """The loop of both pairwise trainers: AdamW over ``params``, checkpoints, interrupts, resume, logs.

    ``step_fn(indices: list[int]) -> (loss, metrics)`` for the batch ``[pairs[i] for i in indices]``;
    ``eval_fn() -> metrics`` runs every ``cfg.eval_every`` steps and at the end; ``extra_state`` is saved in
    every checkpoint.
    """
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    history = History()
    step = 0
    total = cfg.total_steps(len(pairs))
    steps_per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    if ck is not None:
        prefix = "base_model.model."  # checkpoints written before _model_state saved the peft wrapper's keys
        state = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in ck["model"].items()}
        _model_state(model).load_state_dict(state)
        optimizer.load_state_dict(ck["optimizer"])
        history.load_state_dict(ck["history"])
        step = int(ck["step"])
        set_rng_state(ck["rng"])
    logger = JSONLLogger(cfg.log_path, keep_until=step if cfg.resume else None)
    digest = _pairs_digest(pairs)

    def save():
        if cfg.checkpoint_path:
            save_checkpoint(cfg.checkpoint_path, {"model": _model_state(model).state_dict(), "optimizer": optimizer.state_dict(),
                                                  "history": history.state_dict(), "step": step, "rng": rng_state(),
                                                  "pairs_digest": digest, "algo": algo, "config": _plain_config(cfg),
                                                  **extra_state})

    def evaluate():
        was_training = model.training
        model.eval()
        try:
            return eval_fn()
        finally:
            model.train(was_training)

    t0 = time.perf_counter()
    model.train()
    with logger, GracefulInterrupt() as stop:
        while step < total:
            epoch, b = divmod(step, steps_per_epoch)
            idx = _epoch_order(len(pairs), cfg.seed, epoch)[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            lr = cfg.learning_rate * (min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
            for g in optimizer.param_groups:
                g["lr"] = lr
            loss, metrics = step_fn([int(i) for i in idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite {algo} loss at step {step}; lower learning_rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = clip_grad_norm(params, cfg.max_grad_norm)  # the norm before clipping
            optimizer.step()
            step += 1
            evaluating = eval_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total)
            if step % cfg.log_every == 0 or step == total or evaluating:
                metrics = {"loss": float(loss.detach()), **metrics, "grad_norm": grad_norm, "lr": lr,
                           "pairs_seen": _pairs_seen(step, len(pairs), cfg.batch_size),
                           "time_s": time.perf_counter() - t0}
                if evaluating:
                    metrics.update(evaluate())
                history.log(step, **metrics)
                logger.log(step, **metrics)
            saved = bool(cfg.checkpoint_path and cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
            if saved:
                save()
            if stop.requested:  # a signal arrived during this step: keep everything done so far
                if not saved:
                    save()
                model.eval()
                raise stop.interrupted(cfg.checkpoint_path, step)
        if cfg.checkpoint_path:
            save()
    model.eval()
    return history


# ============================================================== reward-model training
ALGO = "reward_model"
"""The ``"algo"`` tag of reward-model checkpoints (:func:`rlcore.lifecycle.load_run_checkpoint` refuses others)."""

RESUME_SAFE_CHANGES = dict(_SAFE_COMMON)
"""Fields of :class:`RewardModelConfig` that may differ between a checkpoint and the run resuming it, and what
changing each does; any other difference is refused (:func:`rlcore.lifecycle.check_resume_config`)."""

_CHECKPOINT_KEYS = ("model", "optimizer", "history", "step", "rng", "config")


@dataclass
class RewardModelConfig(_PairTrainingConfig):
    """Hyperparameters of reward-model training (eq-reward-model-loss); defaults suit the tiny CPU model.

    LoRA is chosen when the :class:`RewardModel` is built (``RewardModel(backbone, tok, lora_r=16)``).
    """

    center_rewards_coef: float = 0.0
    """Weight of :func:`reward_centering_loss` (eq-reward-centering), e.g. 0.01; 0 turns it off."""

    def __post_init__(self):
        super().__post_init__()
        check_positive("center_rewards_coef", self.center_rewards_coef, allow_zero=True)


def train_reward_model(cfg: RewardModelConfig, model: RewardModel, tokenizer, pairs,
                       eval_pairs=None) -> History:
    """Fit ``model`` to preference ``pairs`` by minimising eq-reward-model-loss; returns a :class:`History`.

    Each step takes ``batch_size`` pairs (a seeded permutation per epoch), scores the chosen and rejected
    completions in one forward pass (``2 * batch_size`` rows) and takes an AdamW step. Metrics per logged
    step: ``loss``, ``accuracy`` (share of the batch with ``r_w > r_l``), ``margin`` (mean ``r_w - r_l``),
    ``reward_mean``, ``grad_norm``, ``lr``, ``pairs_seen``, ``time_s``; at evaluations (every ``eval_every``
    steps and at the end) ``train_accuracy`` (on the first ``eval_max_pairs`` pairs) and, with ``eval_pairs``,
    ``eval_accuracy``, ``eval_loss``, ``eval_margin``.

    Run lifecycle (:mod:`rlcore.lifecycle`): paths checked before any work, earlier runs never overwritten
    silently, Ctrl-C/SIGTERM saves and raises :class:`~rlcore.lifecycle.TrainingInterrupted`, ``resume=True``
    continues exactly (same pairs required), each step logged once.
    """
    from .fast import autocast, check_fits_in_memory, estimate_training_memory, trainable_parameters

    if not isinstance(cfg, RewardModelConfig):
        raise TypeError(f"cfg must be a RewardModelConfig, got {type(cfg).__name__}")
    if not isinstance(model, RewardModel):
        raise TypeError(f"model must be a RewardModel (RewardModel(backbone, tokenizer)), got {type(model).__name__}")
    if tokenizer is None:
        tokenizer = model._tok(None)
    pairs = check_preference_pairs(pairs)
    eval_pairs = check_preference_pairs(eval_pairs, "eval_pairs") if eval_pairs is not None else None
    ck = _start(cfg, ALGO, RESUME_SAFE_CHANGES, pairs, _CHECKPOINT_KEYS)
    if cfg.device is not None:
        model.to(cfg.device)
    device = next(model.parameters()).device
    longest = max(len(tokenizer(p.prompt + max(p.chosen, p.rejected, key=len), add_special_tokens=False)["input_ids"])
                  for p in pairs[:256]) + 1
    check_fits_in_memory(estimate_training_memory(model.backbone, 2 * cfg.batch_size, min(longest, cfg.max_length),
                                                  bf16=cfg.bf16, lora=hasattr(model.backbone, "peft_config")),
                         f"lower batch_size (now {cfg.batch_size}) or max_length (now {cfg.max_length}), or build "
                         f"the RewardModel with LoRA adapters (lora_r=16)", device=device)

    def pair_rewards(batch):
        prompts, texts = _interleave(batch)
        with autocast(device, enabled=cfg.bf16):
            # [2B]: chosen at even rows, rejected at odd
            r = model.rewards(prompts, texts, tokenizer, cfg.max_length).float()
        return r[0::2], r[1::2]

    def step_fn(idx: list[int]):
        r_w, r_l = pair_rewards([pairs[i] for i in idx])
        loss = bradley_terry_loss(r_w, r_l)
        if cfg.center_rewards_coef:
            loss = loss + cfg.center_rewards_coef * reward_centering_loss(r_w, r_l)
        with torch.no_grad():
            m = {"accuracy": float((r_w > r_l).float().mean()), "margin": float((r_w - r_l).mean()),
                 "reward_mean": float(torch.cat([r_w, r_l]).mean())}
        return loss, m

    @torch.no_grad()
    def evaluate():
        out = {"train_accuracy": _accuracy_and_loss(pairs[:cfg.eval_max_pairs])[0]}
        if eval_pairs is not None:
            acc, loss, margin = _accuracy_and_loss(eval_pairs)
            out.update(eval_accuracy=acc, eval_loss=loss, eval_margin=margin)
        return out

    def _accuracy_and_loss(ps):
        r_w, r_l = [], []
        for s in range(0, len(ps), cfg.eval_batch_size):
            a, b = pair_rewards(ps[s:s + cfg.eval_batch_size])
            r_w.append(a)
            r_l.append(b)
        r_w, r_l = torch.cat(r_w), torch.cat(r_l)
        return (float((r_w > r_l).float().mean()), float(bradley_terry_loss(r_w, r_l)), float((r_w - r_l).mean()))

    return _train_pairs(cfg, ALGO, model, trainable_parameters(model), pairs, ck, step_fn, evaluate, {})
