"""Supervised fine-tuning on chain-of-thought traces: R1's cold start (coverage C21).

DeepSeek-R1 starts RL from a checkpoint fine-tuned on a *small* set of clean, readable
chain-of-thought examples ("cold-start data"), instead of from the raw base model as in
R1-Zero. Here the traces are written by a program: column-wise arithmetic with carries and
borrows spelled out, inside ``<think> ... </think>``, then ``<answer> ... </answer>``;
optionally followed by a "Wait, let me check" verification sentence (the reflection
behaviour RL is said to discover, here taught directly).

The loss (eq-sft-loss) is next-token cross-entropy on the completion tokens only::

    L_SFT(theta) = - 1/|C| sum_{t in C} log pi_theta(x_t | x_<t)

where ``C`` are the completion positions (the EOS included); prompt and padding positions
carry label ``-100`` (PyTorch's ``ignore_index``), so the model is not trained to reproduce
the question or the template.

:func:`train_sft` is DDP-aware: when ``torch.distributed`` is initialised with more than one
process, the model is wrapped in ``DistributedDataParallel`` (gradients are all-reduced,
averaged over ranks) and each rank takes a disjoint slice of every global batch.
"""
from __future__ import annotations

import math
import random
import re
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..lifecycle import (GracefulInterrupt, check_max_grad_norm, check_resume_config, clip_grad_norm,
                         load_run_checkpoint, prepare_run)
from ..training import History, JSONLLogger, rng_state, save_checkpoint, set_rng_state
from ..utils import check_positive, seed_everything

__all__ = [
    "IGNORE_INDEX",
    "cot_trace",
    "sft_dataset",
    "MIXED_LEXICON",
    "mix_languages",
    "encode_pair",
    "collate_sft",
    "sft_loss",
    "sft_loss_fast",
    "SFTConfig",
    "RESUME_SAFE_CHANGES",
    "train_sft",
]

IGNORE_INDEX = -100
"""Label of positions that do not count in the loss (prompt tokens and padding)."""

_PLACES = ["ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands"]


def _place(k: int) -> str:
    return _PLACES[k] if k < len(_PLACES) else f"10^{k}s"


# ============================================================== programmatic traces
def _parse_expression(example) -> tuple[list[int], list[str]]:
    """Operands and operators of an arithmetic question (from ``meta`` if present, else the prompt text)."""
    meta = getattr(example, "meta", None) or {}
    if "operands" in meta and "ops" in meta:
        return [int(x) for x in meta["operands"]], list(meta["ops"])
    text = example if isinstance(example, str) else example.prompt
    m = re.search(r"-?\d+(?:\s*[-+*]\s*-?\d+)+", text)
    if m is None:
        raise ValueError(f"no arithmetic expression like '12 + 34' found in {text!r}; cot_trace handles + - * questions")
    tokens = re.findall(r"(?<=\d)\s*[-+*]|-?\d+", m.group(0))
    nums = [int(t) for t in tokens[0::2]]
    ops = [t.strip() for t in tokens[1::2]]
    return nums, ops


def _digits(n: int) -> list[int]:
    return [int(c) for c in reversed(str(abs(n)))]


def _addition_steps(nums: list[int], compact: bool = False) -> list[str]:
    cols = max(len(_digits(n)) for n in nums)
    lines, carry = [], 0
    for k in range(cols):
        ds = [(_digits(n)[k] if k < len(_digits(n)) else 0) for n in nums]
        total = sum(ds) + carry
        new_carry = total // 10
        if compact:
            terms = "+".join(str(d) for d in ds) + (f"+{carry}" if carry else "")
            lines.append(f"{_place(k)} {terms}={total} write {total % 10}" + (f" carry {new_carry}" if new_carry else ""))
        else:
            terms = " + ".join(str(d) for d in ds) + (f" + carry {carry}" if carry else "")
            tail = f", write {total % 10} and carry {new_carry}." if new_carry else f", write {total}."
            lines.append(f"Add the {_place(k)}: {terms} = {total}{tail}")
        carry = new_carry
    if carry:
        lines.append(f"write carry {carry}" if compact else f"Bring down the last carry {carry}.")
    return lines


def _subtraction_steps(a: int, b: int) -> list[str]:
    # a >= b >= 0: column subtraction with borrows
    da, db = _digits(a), _digits(b)
    lines, borrow = [], 0
    for k in range(len(da)):
        x = da[k] - borrow
        y = db[k] if k < len(db) else 0
        head = f"Subtract the {_place(k)}: " + (f"{da[k]} minus the borrowed 1 is {x}, and " if borrow else "")
        if x < y:
            lines.append(f"{head}{x} is less than {y}, so borrow 1: {x + 10} - {y} = {x + 10 - y}.")
            borrow = 1
        else:
            lines.append(f"{head}{x} - {y} = {x - y}.")
            borrow = 0
    return lines


def _multiplication_steps(a: int, b: int) -> list[str]:
    lines, partial = [], []
    for k, d in enumerate(_digits(b)):
        p = abs(a) * d * 10**k
        partial.append(p)
        lines.append(f"Multiply {abs(a)} by the {_place(k)} digit {d}: {abs(a)} * {d * 10**k} = {p}.")
    if len(partial) > 1:
        lines.append(f"Add the partial products: {' + '.join(map(str, partial))} = {sum(partial)}.")
    return lines


def cot_trace(example, prefilled_think: bool = True, self_check: bool = False, style: str = "words") -> str:
    """A clean chain-of-thought completion for an arithmetic question (C21's cold-start data).

    ``example`` is a :class:`rlcore.llm.tasks.Example` (or a question string) with a
    two-operand ``+``/``-``/``*`` question or a chain of ``+``. Returns the text the model should
    generate after the prompt: the column-by-column reasoning in words, ``</think>``, then
    ``<answer>N</answer>``. With ``prefilled_think=True`` (the R1-Zero template ends with
    ``<think>``) the completion starts inside the think block; otherwise it opens it.
    ``self_check`` appends a "Wait, let me check" verification by the inverse operation.
    The result is checked against ``example.answer`` when available. ``style="compact"``
    writes additions tersely (``tens 4+8+1=13 write 3 carry 1``), about a third of the
    tokens, for the tiny CPU model; other operations always use words.
    """
    if style not in ("words", "compact"):
        raise ValueError(f"style must be 'words' or 'compact', got {style!r}")
    nums, ops = _parse_expression(example)
    expr = " ".join([str(nums[0])] + [f"{o} {n}" for o, n in zip(ops, nums[1:])])
    if all(o == "+" for o in ops) and all(n >= 0 for n in nums):
        result = sum(nums)
        lines = _addition_steps(nums, compact=style == "compact")
        rest = "" if len(nums) == 2 else f", which is {' + '.join(map(str, nums[:-1]))}"
        check = f"Wait, let me check: {result} - {nums[-1]} = {result - nums[-1]}{rest}. Correct."
    elif ops == ["-"] and min(nums) >= 0:
        a, b = nums
        result = a - b
        if a >= b:
            lines = _subtraction_steps(a, b)
        else:
            lines = [f"{a} is smaller than {b}, so compute {b} - {a} and make it negative."] + _subtraction_steps(b, a)
        check = f"Wait, let me check: {result} + {b} = {a}. Correct."
    elif ops == ["*"]:
        a, b = nums
        result = a * b
        lines = _multiplication_steps(a, b)
        if (a < 0) != (b < 0) and result != 0:
            lines.append("One factor is negative, so the product is negative.")
        check = (f"Wait, let me check: {result} / {b} = {a}. Correct." if b != 0
                 else "Wait, let me check: anything times 0 is 0. Correct.")
    else:
        # fallback: evaluate left to right, one operation per line (Python precedence for *)
        result = int(eval(expr, {"__builtins__": {}}))  # noqa: S307 - digits and + - * only (regex above)
        lines = [f"Evaluate {expr} step by step."]
        check = f"Wait, let me check: {expr} = {result}. Correct."
    answer = getattr(example, "answer", None)
    if answer is not None and str(answer).strip() not in (str(result), f"{result}.0"):
        raise ValueError(f"cot_trace computed {expr} = {result} but the example's answer is {answer!r}")
    if style == "compact" and all(o == "+" for o in ops):
        body = lines + (["wait, check: " + check.split(": ", 1)[1]] if self_check else [])
    else:
        body = [f"We need {expr}."] + lines + [f"So {expr} = {result}."] + ([check] if self_check else [])
    think = "\n".join(body)
    prefix = "" if prefilled_think else "<think>"
    return f"{prefix}\n{think}\n</think>\n<answer>{result}</answer>"


MIXED_LEXICON = {"ones": "个位", "tens": "十位", "hundreds": "百位", "thousands": "千位", "write": "写",
                 "carry": "进位", "wait": "等等", "check": "检查"}
"""English -> Chinese words of the compact traces, for cold-start data that mixes two languages (C22)."""


def mix_languages(trace: str, lexicon: dict[str, str] | None = None) -> str:
    """``trace`` with every whole word found in ``lexicon`` replaced (default :data:`MIXED_LEXICON`):
    a chain of thought that switches language mid-sentence, as R1-Zero's did."""
    lexicon = MIXED_LEXICON if lexicon is None else lexicon
    if not lexicon:
        return trace
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(lexicon, key=len, reverse=True))) + r")\b")
    return pattern.sub(lambda m: lexicon[m.group(1)], trace)


def sft_dataset(examples: Sequence, template: str = "r1_zero", tokenizer=None, self_check_rate: float = 0.0,
                seed: int = 0, style: str = "words") -> list[tuple[str, str]]:
    """``(prompt, completion)`` pairs: the formatted prompt and :func:`cot_trace` of each example.

    ``self_check_rate`` is the share of traces with the "Wait, let me check" sentence (chosen
    with a seeded RNG). ``template`` goes to :func:`rlcore.llm.tasks.format_prompt`
    (``None``: the bare question, as ``GRPOConfig(template=None)`` uses it); the completion
    opens ``<think>`` only when the template does not prefill it.
    """
    from .tasks import format_prompt

    if not 0.0 <= self_check_rate <= 1.0:
        raise ValueError(f"self_check_rate must lie in [0, 1], got {self_check_rate!r}")
    rng = random.Random(seed)
    prefilled = template == "r1_zero"
    pairs = []
    for ex in examples:
        if template is None:
            prompt = ex if isinstance(ex, str) else ex.prompt
        else:
            prompt = format_prompt(ex, template=template, tokenizer=tokenizer)
        pairs.append((prompt, cot_trace(ex, prefilled_think=prefilled, self_check=rng.random() < self_check_rate,
                                        style=style)))
    return pairs


# ============================================================== tokenisation and loss
def encode_pair(tokenizer, prompt: str, completion: str, max_length: int | None = None, add_eos: bool = True):
    """Token ids and labels of one pair: labels are ``-100`` on the prompt, the ids on the completion.

    Prompt and completion are tokenised separately (the model generates the completion
    tokens after the prompt tokens, so this is the split it sees at inference). EOS is
    appended so the model learns to stop. Too long -> the completion is cut on the right.
    """
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no eos_token_id; set tokenizer.eos_token or pass add_eos=False")
        c = c + [tokenizer.eos_token_id]
    if max_length is not None:
        if len(p) >= max_length:
            raise ValueError(f"prompt has {len(p)} tokens, not fewer than max_length={max_length}; raise max_length")
        c = c[: max_length - len(p)]
    return p + c, [IGNORE_INDEX] * len(p) + c


def collate_sft(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int | None = None):
    """Right-padded batch: ``dict(input_ids, attention_mask, labels)`` (labels ``-100`` on prompt and padding)."""
    if len(pairs) == 0:
        raise ValueError("no (prompt, completion) pairs to collate")
    rows = [encode_pair(tokenizer, p, c, max_length) for p, c in pairs]
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked next-token cross-entropy (eq-sft-loss): logits at ``t`` predict ``labels[t+1]``;
    positions labelled ``-100`` are ignored; mean over the remaining (completion) tokens."""
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on [batch, time]")
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    if (shift_labels != IGNORE_INDEX).sum() == 0:
        raise ValueError("every label is -100: no completion tokens to train on (max_length too small?)")
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def sft_loss_fast(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                  chunk_size: int = 1024) -> torch.Tensor:
    """:func:`sft_loss` of ``model`` on a batch without the full ``[B, T, V]`` logits: the LM head and the
    log-softmax run only at positions whose next label is a completion token, ``chunk_size`` at a time
    (:func:`rlcore.llm.fast.chunked_token_logprobs`). Same value and gradient (tested)."""
    from .fast import _unwrap, chunked_token_logprobs

    if input_ids.shape != labels.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and labels {tuple(labels.shape)} differ in shape")
    shift_labels = labels[:, 1:]
    sel = shift_labels != IGNORE_INDEX  # [B, T-1]: position t predicts completion token t+1
    if sel.sum() == 0:
        raise ValueError("every label is -100: no completion tokens to train on (max_length too small?)")
    lm = _unwrap(model)
    hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    logp, _ = chunked_token_logprobs(hidden[:, :-1][sel], lm.get_output_embeddings().weight, shift_labels[sel],
                                     chunk_size=chunk_size)
    return -logp.mean()


# ============================================================== training
ALGO = "sft"
"""The ``"algo"`` tag of SFT checkpoints (:func:`rlcore.lifecycle.load_run_checkpoint` refuses others)."""

_EXTEND = ("training continues to the new total (the learning rate depends only on the step and warmup_steps, and "
           "epoch e's order only on seed and e, so extending a run is the same as having asked for more steps at "
           "the start); the total may not be below the checkpoint's step")
RESUME_SAFE_CHANGES = {
    "max_steps": _EXTEND,
    "epochs": _EXTEND,
    "checkpoint_every": "only how often the checkpoint is written",
    "checkpoint_path": "the run continues from, and saves to, the new path",
    "log_path": "later rows go to the new log (cut back to the checkpoint's step if it exists)",
    "log_every": "only which steps are logged",
}
"""Fields of :class:`SFTConfig` that may differ between a checkpoint and the run resuming it, and what changing
each does; any other difference is refused (:func:`rlcore.lifecycle.check_resume_config`)."""

_CHECKPOINT_KEYS = ("model", "optimizer", "history", "step", "tokens", "seq_tokens", "rng", "config")


@dataclass
class SFTConfig:
    """Hyperparameters of supervised fine-tuning (defaults suit the tiny CPU model)."""

    learning_rate: float = 1e-3
    """AdamW learning rate (1e-3 for the tiny random model; ~1e-5 for a pretrained 135M model)."""
    epochs: int = 1
    """Passes over the pairs (ignored when ``max_steps`` is set)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides ``epochs``)."""
    batch_size: int = 8
    """Pairs per optimizer step (the global batch; split across ranks under DDP)."""
    max_length: int = 1024
    """Maximum tokens of prompt + completion; longer completions are cut on the right."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps, then constant."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping (global norm): ``None`` or ``0`` turns clipping off, otherwise a finite number > 0.
    ``grad_norm`` (the norm before clipping) is logged either way."""
    seed: int = 0
    """Seed for shuffling (the order of epoch ``e`` depends only on ``seed`` and ``e``)."""
    device: str | None = None
    """Device to train on; ``None`` keeps the model where it is."""
    log_every: int = 1
    """Record metrics every this many steps."""
    log_path: str | None = None
    """JSONL metrics file (rank 0 only)."""
    checkpoint_path: str | None = None
    """Atomic checkpoint file (rank 0 writes); ``None`` disables."""
    checkpoint_every: int = 0
    """Save every this many steps (0: only at the end when ``checkpoint_path`` is set). A Ctrl-C (SIGINT) or
    SIGTERM also saves, at the end of the current step, then raises :class:`rlcore.lifecycle.TrainingInterrupted`."""
    resume: bool = False
    """Continue from ``checkpoint_path`` (it must exist); the config may differ from the checkpoint's only in
    :data:`RESUME_SAFE_CHANGES`. The log is cut back to the checkpoint's step."""
    overwrite: bool = False
    """Replace an earlier run's checkpoint and log at the same paths; without it (and without ``resume``) a fresh
    run refuses to start over existing files."""
    fast: bool = False
    """Compute the loss with :func:`sft_loss_fast` (logits only at completion positions, chunked)."""
    bf16: bool = False
    """bfloat16 autocast for the forward pass where the processor supports it (weights stay float32)."""
    lora_r: int = 0
    """LoRA rank through ``peft`` (0: train every parameter)."""
    lora_alpha: float | None = None
    """LoRA ``alpha`` (``None``: ``2 * lora_r``)."""

    def __post_init__(self):
        check_positive("learning_rate", self.learning_rate)
        if not isinstance(self.lora_r, int) or self.lora_r < 0:
            raise ValueError(f"lora_r must be an integer >= 0 (0 = full fine-tuning), got {self.lora_r!r}")
        for name in ("epochs", "batch_size", "max_length"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"max_steps must be None or an integer >= 1, got {self.max_steps!r}")
        check_max_grad_norm(self.max_grad_norm)
        for name, low in (("warmup_steps", 0), ("log_every", 1), ("checkpoint_every", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        for name in ("resume", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.resume and self.overwrite:
            raise ValueError("resume=True and overwrite=True contradict each other; choose one")
        if self.resume and not self.checkpoint_path:
            raise ValueError("resume=True needs a checkpoint_path to resume from")


def _plain_config(cfg: SFTConfig) -> dict:
    """The config as stored in a checkpoint: its plain fields, without the start flags (how to start, not what)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("resume", "overwrite")}


def _dist_info() -> tuple[bool, int, int]:
    """``(distributed, rank, world)``. Under ``torchrun``/``accelerate launch`` (``WORLD_SIZE`` > 1 in the
    environment) a process group not yet initialised is joined here (``env://``; NCCL for CUDA tensors and gloo
    for CPU ones where a GPU is visible, gloo otherwise), so a training script needs no set-up of its own."""
    import os

    import torch.distributed as dist

    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


def _agree_to_start(error: Exception | None, device: torch.device) -> None:
    """Under DDP: raise on every rank if any rank could not start (rank 0 checks the files), else return."""
    import torch.distributed as dist

    flag = torch.tensor([0.0 if error is None else 1.0], device=device)
    dist.all_reduce(flag)
    if error is not None:
        raise error
    if flag.item() > 0:
        raise RuntimeError("another rank could not start the run (its error says why: paths, checkpoint or "
                           "config); nothing was trained")


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def train_sft(model: nn.Module, tokenizer, pairs: Sequence[tuple[str, str]], cfg: SFTConfig | None = None,
              eval_fn: Callable[[nn.Module], dict] | None = None, eval_every: int = 0) -> History:
    """Fine-tune ``model`` on ``(prompt, completion)`` pairs with :func:`sft_loss`; returns a :class:`History`.

    Metrics per logged step: ``loss`` (mean over the step's completion tokens), ``tokens``
    (completion tokens trained on so far, summed over ranks), ``seq_tokens`` (all prompt +
    completion tokens through forward and backward so far: the compute count of
    :mod:`rlcore.llm.distill`), ``lr``, ``time_s``.
    ``eval_fn(model) -> dict`` runs every ``eval_every`` steps and at the end (rank 0 logs it).
    Under ``torch.distributed`` (initialised, world size > 1) the model is wrapped in DDP.

    Run lifecycle (:mod:`rlcore.lifecycle`): rank 0 checks the checkpoint and log paths before any work (an
    earlier run's files are kept unless ``resume`` or ``overwrite``); a Ctrl-C/SIGTERM (on any rank) ends the
    current step on every rank, rank 0 saves the checkpoint, and each rank raises
    :class:`~rlcore.lifecycle.TrainingInterrupted`; ``resume=True`` continues exactly, each step logged once.
    """
    cfg = cfg or SFTConfig()
    if not isinstance(cfg, SFTConfig):
        raise TypeError(f"cfg must be an SFTConfig, got {type(cfg).__name__}")
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs is empty; build them with sft_dataset(examples) or rejection_sample(...)")
    if not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
        raise TypeError("pairs must be (prompt, completion) tuples of strings")
    distributed, rank, world = _dist_info()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the world size {world}")
    from .fast import apply_lora, autocast, trainable_parameters

    # the run's files are checked (rank 0), and a checkpoint to resume read and compared, before any work is done;
    # under DDP every rank learns whether another could not start, so none waits forever in a collective
    steps_per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    start_error, ck = None, None
    try:
        if rank == 0:
            prepare_run(cfg.checkpoint_path, cfg.log_path, resume=cfg.resume, overwrite=cfg.overwrite)
        if cfg.resume:
            ck = load_run_checkpoint(cfg.checkpoint_path, algo=ALGO, required=_CHECKPOINT_KEYS)
            check_resume_config(ck["config"], _plain_config(cfg), RESUME_SAFE_CHANGES, path=cfg.checkpoint_path)
            if int(ck["step"]) > total:
                raise ValueError(f"the checkpoint {cfg.checkpoint_path!r} is at step {int(ck['step'])}, beyond the "
                                 f"{total} steps asked for; raise max_steps/epochs (a run cannot be shortened below "
                                 f"its checkpoint)")
    except Exception as exc:
        if not distributed:
            raise
        start_error = exc

    seed_everything(cfg.seed)
    if cfg.device is not None:
        model.to(cfg.device)
    device = next(model.parameters()).device
    if distributed:
        _agree_to_start(start_error, device)
    if cfg.lora_r and not hasattr(model, "peft_config"):
        # peft injects the adapters into ``model`` in place; the caller's object trains through them
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha)
    net = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    from .fast import check_fits_in_memory, estimate_training_memory

    longest = max(len(encode_pair(tokenizer, p, c, cfg.max_length)[0]) for p, c in pairs[:256])
    check_fits_in_memory(estimate_training_memory(model, cfg.batch_size // world, longest, bf16=cfg.bf16,
                                                  lora=bool(cfg.lora_r)),
                         f"lower batch_size (now {cfg.batch_size}) or max_length (now {cfg.max_length}), "
                         "or train LoRA adapters (lora_r=16)", device=device)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    history = History()
    step, tokens_seen, seq_tokens_seen = 0, 0, 0
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        history.load_state_dict(ck["history"])
        step, tokens_seen, seq_tokens_seen = int(ck["step"]), int(ck["tokens"]), int(ck["seq_tokens"])
        set_rng_state(ck["rng"])
    logger = JSONLLogger(cfg.log_path if rank == 0 else None, keep_until=step if cfg.resume else None)

    def save():
        if cfg.checkpoint_path and rank == 0:
            save_checkpoint(cfg.checkpoint_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                                  "history": history.state_dict(), "step": step, "tokens": tokens_seen,
                                                  "seq_tokens": seq_tokens_seen,
                                                  "rng": rng_state(), "algo": ALGO, "config": _plain_config(cfg)})

    t0 = time.perf_counter()
    net.train()
    with logger:
        # Ctrl-C / SIGTERM: finish the current step, save a checkpoint, raise TrainingInterrupted
        with GracefulInterrupt() as stop:
            while step < total:
                epoch, b = divmod(step, steps_per_epoch)
                order = _epoch_order(len(pairs), cfg.seed, epoch)
                idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                idx = idx[rank::world] if len(idx) >= world else idx[:1]  # each rank its own slice of the global batch
                batch = collate_sft(tokenizer, [pairs[int(i)] for i in idx], cfg.max_length)
                batch = {k: v.to(device) for k, v in batch.items()}
                lr = cfg.learning_rate * (min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                with autocast(device, enabled=cfg.bf16):
                    if cfg.fast and not distributed:
                        loss = sft_loss_fast(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
                    else:
                        logits = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     use_cache=False).logits
                        loss = sft_loss(logits, batch["labels"])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite SFT loss at step {step}; lower learning_rate")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # DDP all-reduces (averages) the gradients here
                grad_norm = clip_grad_norm(trainable_parameters(model), cfg.max_grad_norm)  # norm before clipping
                optimizer.step()
                # [completion tokens trained on, all tokens through forward+backward] (compute accounting), and
                # whether a stop was asked for (summed over ranks: every rank stops at the same step)
                n_tok = torch.tensor([float((batch["labels"][:, 1:] != IGNORE_INDEX).sum()),
                                      float(batch["attention_mask"].sum()), float(stop.requested)], device=device)
                loss_d = loss.detach().clone()
                if distributed:
                    import torch.distributed as dist

                    dist.all_reduce(n_tok)
                    dist.all_reduce(loss_d)
                    loss_d /= world
                tokens_seen += int(n_tok[0].item())
                seq_tokens_seen += int(n_tok[1].item())
                step += 1
                if step % cfg.log_every == 0 or step == total:
                    metrics = {"loss": float(loss_d), "grad_norm": grad_norm, "tokens": tokens_seen,
                               "seq_tokens": seq_tokens_seen, "lr": lr, "time_s": time.perf_counter() - t0}
                    if eval_fn is not None and eval_every and step % eval_every == 0:
                        metrics.update(eval_fn(model))
                    history.log(step, **metrics)
                    logger.log(step, **metrics)
                saved = bool(cfg.checkpoint_path and cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                if saved:
                    save()
                if n_tok[2].item() > 0:  # a signal arrived during this step: keep everything done so far
                    if not saved:
                        save()
                    model.eval()
                    raise stop.interrupted(cfg.checkpoint_path, step)
        if eval_fn is not None and not (eval_every and step % eval_every == 0):
            m = eval_fn(model)
            history.log(step, **m)
            logger.log(step, **m)
        if cfg.checkpoint_path:
            save()
    model.eval()
    return history
