"""CPU speed of rlcore's LLM path against Hugging Face: the sampler and one GRPO step, side by side.

Two parts, each on SmolLM2-135M-Instruct (offline, :func:`rlcore.llm.models.load_model`), the same
prompts (``[format_prompt(e) for e in arithmetic_dataset(8, seed=0)]``, the R1-Zero template), the
same number of new tokens and the same number of threads (``torch.set_num_threads(--threads)``):

1. ``sampler`` -- tokens per second of

   * rlcore's fast sampler :func:`rlcore.llm.fast.generate_fast`,
   * the teaching sampler :func:`rlcore.llm.sampling.generate`,
   * Hugging Face ``model.generate`` (``do_sample=True, temperature=1, top_k=0, top_p=1``,
     ``num_return_sequences=G``),

   at batch 64 = 8 prompts x G = 8, 64 new tokens. Tokens/s = generated tokens (up to and including EOS;
   HF's rows after EOS are padding and not counted) / wall time of the call that turns the prompt strings
   into completions (tokenisation and decoding included for every sampler). Each sampler gets one short
   warm-up call (4 new tokens, same batch), then ``--repeats`` timed calls, interleaved (rotating order)
   so that a change of machine load hits all samplers alike; the median tok/s is reported.
   float32: every sampler on the float32 model. bfloat16: rlcore ``generate_fast(..., bf16=True)`` (samples
   from a bf16 copy, refreshed from the float32 weights at each call, as in GRPO), HF and the teaching
   sampler on ``copy.deepcopy(model).to(torch.bfloat16)``.
   Target: rlcore fast >= 3x HF generate, in each dtype.

2. ``grpo`` -- seconds per GRPO step, rlcore ``train_grpo`` (``GRPOConfig(fast=True, bf16=True)``) vs
   TRL's ``GRPOTrainer`` (``bf16=True, use_cpu=True``): 8 prompts x G = 8 completions, 64 new tokens,
   beta = 0, loss_type "grpo", learning rate 1e-5 (constant, AdamW, no weight decay, grad-norm clip 1),
   num_iterations 1, temperature 1, top_p 1, rewards ``accuracy_reward`` + ``format_reward`` (the same
   functions for both; they receive ``answer`` and ``prefilled_think=True``). The dataset is exactly the
   8 prompts, so both trainers see the same prompts at every step. One optimizer step = one generation
   batch of 64 (TRL: ``per_device_train_batch_size=64, gradient_accumulation_steps=1,
   steps_per_generation=1``). ``--grpo-steps`` steps each (default 3); the first is a warm-up and the
   median of the others is reported. TRL steps are timed with a ``TrainerCallback``
   (``on_step_begin`` -> ``on_step_end``), rlcore's with its own ``step_time``. Every other TRL option
   keeps TRL's default -- notably ``gradient_checkpointing=True`` (``--trl-no-gradient-checkpointing``
   turns it off; rlcore never checkpoints the transformer blocks).
   Targets: rlcore s/step <= 0.34 x TRL's; rlcore peak RSS <= 6 GB and <= TRL's.

Each measurement runs in its own fresh subprocess (this script with the hidden ``--worker`` flag), so the
peak RSS of each GRPO side (``ru_maxrss`` of that process: model, optimizer, activations, imports) is
clean. Per-phase times (generation, rewards, log-prob forward, rest = backward + optimizer + bookkeeping)
are recorded for both trainers: rlcore's by wrapping the functions ``train_grpo`` calls, TRL's from its
own profiling contexts.

Writes ``benchmarks/results/llm_cpu_speed.json`` (metadata: command, git commit, CPU, threads, versions,
date, wall time; then ``sampler`` and ``grpo``, each with its targets) and prints a short table.

Run:  python benchmarks/llm_cpu_speed.py                        (both parts; needs trl + datasets: .[bench])
      python benchmarks/llm_cpu_speed.py --parts sampler
      python benchmarks/llm_cpu_speed.py --smoke                (tiny random model, 2x2 batch, 8 tokens, temp dir)
"""
from __future__ import annotations

import os

# Nothing may be downloaded: set before transformers / trl / datasets are imported (here or in a worker).
for _k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_k] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("sampler", "grpo")
WORKERS = ("sampler", "rlcore_grpo", "trl_grpo")
DTYPES = ("float32", "bfloat16")
SAMPLERS = ("rlcore_fast", "rlcore_teaching", "hf_generate")
SAMPLER_TARGET = 3.0  # rlcore fast tok/s >= 3x HF generate
GRPO_TIME_TARGET = 0.34  # rlcore s/step <= 0.34x TRL's
GRPO_RSS_TARGET_GB = 6.0  # rlcore peak RSS <= 6 GB (and <= TRL's)
GB = 1e9  # memory unit of the JSON: 10^9 bytes
WARMUP_NEW_TOKENS = 4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every measurement")
    p.add_argument("--prompts", type=int, default=8, help="distinct prompts per batch")
    p.add_argument("--num-generations", type=int, default=8, help="G, completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="timed sampler calls per sampler and dtype (>= 2)")
    p.add_argument("--dtypes", default=",".join(DTYPES), help=f"sampler dtypes, subset of {DTYPES}")
    p.add_argument("--grpo-steps", type=int, default=3, help="GRPO steps per trainer; the first is a warm-up")
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rlcore-micro-batch", type=int, default=16,
                   help="rlcore GRPO: completions per forward/backward (gradient accumulation; bounds activation memory)")
    p.add_argument("--skip-trl", action="store_true", help="GRPO part: time rlcore only")
    p.add_argument("--trl-no-gradient-checkpointing", action="store_true",
                   help="turn off TRL's default gradient_checkpointing=True (faster, much more memory)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llm_cpu_speed.json"))
    p.add_argument("--smoke", action="store_true",
                   help="tiny random model, 2 prompts x 2 generations, 8 new tokens, 1 thread, 2 GRPO steps; "
                        "writes to a temp dir (proves the script runs)")
    p.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    args.dtypes = [s.strip() for s in args.dtypes.split(",") if s.strip()]
    for name, vals, allowed in (("--parts", args.parts, PARTS), ("--dtypes", args.dtypes, DTYPES)):
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            p.error(f"{name} must be a non-empty subset of {allowed}, got {vals}")
    if args.smoke:
        args.threads, args.prompts, args.num_generations, args.max_new_tokens = 1, 2, 2, 8
        args.repeats, args.grpo_steps = 2, 2
    if args.repeats < 2:
        p.error("--repeats must be >= 2 (the median of at least two timed calls is reported)")
    if args.grpo_steps < 2:
        p.error("--grpo-steps must be >= 2 (the first step is a warm-up)")
    if args.num_generations < 2:
        p.error("--num-generations must be >= 2 (GRPO compares the completions of a group)")
    return args


# ====================================================================== helpers (any process)
def _git(*cmd) -> str | None:
    try:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=True).stdout.rstrip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    from rlcore.llm.results import cpu_model

    return cpu_model()


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / GB, 2)
    except (OSError, ValueError):
        pass
    return None


def _peak_rss_gb() -> float:
    """This process's peak resident set size (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _r(x, nd=4):
    return None if x is None else round(float(x), nd)


def metadata(args, argv) -> dict:
    import torch  # version and bf16 support only; no model is loaded in the parent process

    try:
        bf16_native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16_native = None
    dirty = _git("status", "--porcelain")
    load = os.getloadavg()
    meta = {
        "command": "python " + shlex.join([os.path.relpath(__file__, ROOT)] + list(argv)),
        "python_executable": sys.executable,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty_paths": dirty.splitlines() if dirty else [],
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_total_gb": _mem_total_gb(),
        "bf16_native_on_cpu": bf16_native,
        "threads": args.threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {pkg: _version(pkg) for pkg in
                     ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "numpy", "rlcore")},
        "loadavg_at_start": [round(x, 2) for x in load],
        "smoke": args.smoke,
        "memory_unit": "GB = 10^9 bytes; peak RSS = ru_maxrss of the measuring subprocess",
    }
    if load[0] > 0.5 * (os.cpu_count() or 1):
        meta["note"] = (f"the machine was busy at start (1-min load average {load[0]:.2f} on {os.cpu_count()} cores): "
                        "absolute times are inflated; the ratios, measured in the same run, are the comparison")
    return meta


# ====================================================================== workers (fresh subprocesses)
def _setup_worker(args):
    import torch

    torch.set_num_threads(args.threads)
    return torch


def _load(args):
    """``(model, tokenizer)`` in float32: SmolLM2 offline, or the tiny random model under --smoke."""
    from rlcore.llm.models import load_model, tiny_model

    if args.smoke:
        return tiny_model(seed=args.seed)
    return load_model(args.model, dtype="float32", device="cpu")


def _prompts(args) -> list[str]:
    from rlcore.llm.tasks import arithmetic_dataset, format_prompt

    return [format_prompt(e) for e in arithmetic_dataset(args.prompts, seed=args.seed)]


def worker_sampler(args) -> dict:
    torch = _setup_worker(args)
    import copy

    from rlcore.llm.fast import bf16_supported, generate_fast
    from rlcore.llm.sampling import _eos_ids, encode_prompts, generate

    model, tok = _load(args)
    prompts = _prompts(args)
    G, T = args.num_generations, args.max_new_tokens
    eos = _eos_ids(model, tok)
    eos_t = torch.tensor(eos)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos[0]

    def rollout_stats(ro):
        return int(ro.completion_mask.sum()), len(ro), float(ro.terminated.float().mean())

    def hf_generate(m, new_tokens):
        ids, mask = encode_prompts(tok, prompts, "cpu")
        with torch.no_grad():
            seq = m.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=new_tokens, num_return_sequences=G, pad_token_id=pad_id, eos_token_id=eos)
        comp = seq[:, ids.shape[1]:]
        is_eos = torch.isin(comp, eos_t).long()
        gen = (is_eos.cumsum(1) - is_eos) == 0  # generated: no EOS strictly before (EOS itself counted)
        tok.batch_decode([row[g].tolist() for row, g in zip(comp, gen)], skip_special_tokens=True)
        return int(gen.sum()), comp.shape[0], float((is_eos.bool() & gen).any(1).float().mean())

    out = {"bf16_native": bf16_supported("cpu"), "prompt_tokens": [len(tok(p)["input_ids"]) for p in prompts]}
    for dtype in args.dtypes:
        if dtype == "float32":
            m16 = None
            calls = {
                "rlcore_fast": lambda n: rollout_stats(generate_fast(model, tok, prompts, num_generations=G,
                                                                     max_new_tokens=n, temperature=1.0, top_p=1.0)),
                "rlcore_teaching": lambda n: rollout_stats(generate(model, tok, prompts, num_generations=G,
                                                                    max_new_tokens=n, temperature=1.0, top_p=1.0)),
                "hf_generate": lambda n: hf_generate(model, n),
            }
        else:
            m16 = copy.deepcopy(model).to(torch.bfloat16).eval()
            calls = {
                "rlcore_fast": lambda n: rollout_stats(generate_fast(model, tok, prompts, num_generations=G,
                                                                     max_new_tokens=n, temperature=1.0, top_p=1.0,
                                                                     bf16=True)),
                "rlcore_teaching": lambda n, m16=m16: rollout_stats(generate(m16, tok, prompts, num_generations=G,
                                                                             max_new_tokens=n, temperature=1.0,
                                                                             top_p=1.0)),
                "hf_generate": lambda n, m16=m16: hf_generate(m16, n),
            }
        rec = {name: {"seconds": [], "tokens": [], "tok_per_s": [], "terminated_frac": []} for name in SAMPLERS}
        for name in SAMPLERS:  # warm-up: short, same batch
            torch.manual_seed(args.seed)
            t0 = time.perf_counter()
            calls[name](WARMUP_NEW_TOKENS)
            rec[name]["warmup_seconds"] = _r(time.perf_counter() - t0)
        for rep in range(args.repeats):
            k = rep % len(SAMPLERS)
            for name in SAMPLERS[k:] + SAMPLERS[:k]:  # rotate the order: load drift hits all samplers alike
                torch.manual_seed(args.seed * 1000 + rep + 1)
                t0 = time.perf_counter()
                n_tok, rows, term = calls[name](T)
                dt = time.perf_counter() - t0
                r = rec[name]
                r["rows"] = rows
                r["seconds"].append(_r(dt))
                r["tokens"].append(n_tok)
                r["tok_per_s"].append(_r(n_tok / dt, 2))
                r["terminated_frac"].append(_r(term, 3))
                print(f"[sampler {dtype}] {name:16s} repeat {rep + 1}: {n_tok} tokens in {dt:.2f} s "
                      f"= {n_tok / dt:.1f} tok/s", flush=True)
        for r in rec.values():
            r["median_tok_per_s"] = _r(_median(r["tok_per_s"]), 2)
            r["mean_completion_length"] = _r(statistics.mean(r["tokens"]) / r["rows"], 2)
        if dtype == "bfloat16":  # share of rlcore's bf16 call spent refreshing its bf16 copy from the weights
            import rlcore.llm.fast as fast_mod

            if hasattr(fast_mod, "_bf16_twin"):
                t0 = time.perf_counter()
                fast_mod._bf16_twin(model)
                rec["rlcore_fast"]["bf16_copy_refresh_seconds"] = _r(time.perf_counter() - t0)
        out[dtype] = rec
        del m16, calls
    out["threads_used"] = torch.get_num_threads()
    out["peak_rss_gb"] = _r(_peak_rss_gb(), 3)
    return out


def _rlcore_phase_timers(grpo_mod):
    """Wrap the functions ``train_grpo`` looks up at call time; returns (per-step phase dicts, restore)."""
    steps: list[dict] = []
    originals = {}

    def wrap(attr, phase, starts_step):
        fn = getattr(grpo_mod, attr, None)
        if fn is None:
            return
        originals[attr] = fn

        def timed(*a, **kw):
            if starts_step:
                steps.append({})
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                if steps:
                    steps[-1][phase] = steps[-1].get(phase, 0.0) + time.perf_counter() - t0

        setattr(grpo_mod, attr, timed)

    wrap("generate_fast", "generate_s", True)
    wrap("compute_rewards", "rewards_s", False)
    wrap("token_logprobs_fast", "logprob_forward_s", False)

    def restore():
        for attr, fn in originals.items():
            setattr(grpo_mod, attr, fn)

    return steps, restore


def worker_rlcore_grpo(args) -> dict:
    torch = _setup_worker(args)
    import rlcore.llm.grpo as grpo_mod
    from rlcore.llm.grpo import GRPOConfig, train_grpo
    from rlcore.llm.rewards import accuracy_reward, format_reward
    from rlcore.llm.tasks import arithmetic_dataset

    model, tok = _load(args)
    train = arithmetic_dataset(args.prompts, seed=args.seed)  # exactly the prompts of one step
    cfg = GRPOConfig(steps=args.grpo_steps, prompts_per_step=args.prompts, num_generations=args.num_generations,
                     max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0, learning_rate=args.learning_rate,
                     weight_decay=0.0, max_grad_norm=1.0, beta=0.0, num_iterations=1, loss_type="grpo",
                     scale_rewards="group", template="r1_zero", prefill_think=True, seed=args.seed,
                     progress_bar=False, log_completions=0, fast=True, bf16=True,
                     micro_batch_size=args.rlcore_micro_batch)
    phases, restore = _rlcore_phase_timers(grpo_mod)
    try:
        res = train_grpo(cfg, model, tok, train, [accuracy_reward, format_reward])
    finally:
        restore()
    h = res.history
    times = [float(t) for t in h["step_time"]]
    for ph, t in zip(phases, times):
        ph["rest_s"] = t - sum(ph.values())  # backward, optimizer step, bookkeeping
    return {
        "step_times": [_r(t) for t in times],
        "phases_per_step": [{k: _r(v) for k, v in ph.items()} for ph in phases],
        "completion_length": [_r(x, 2) for x in h["completion_length"]] if "completion_length" in h else None,
        "reward": [_r(x, 3) for x in h["reward"]] if "reward" in h else None,
        "config": {"fast": cfg.fast, "bf16": cfg.bf16, "loss_type": cfg.loss_type, "beta": cfg.beta,
                   "num_iterations": cfg.num_iterations, "learning_rate": cfg.learning_rate,
                   "micro_batch_size": cfg.micro_batch_size, "optimizer": "torch.optim.AdamW (constant lr)"},
        "threads_used": torch.get_num_threads(),
        "peak_rss_gb": _r(_peak_rss_gb(), 3),
    }


def worker_trl_grpo(args) -> dict:
    torch = _setup_worker(args)
    import dataclasses
    import shutil

    import trl
    import trl.extras.profiling as trl_profiling
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    from rlcore.llm.rewards import accuracy_reward, format_reward
    from rlcore.llm.tasks import arithmetic_dataset, format_prompt

    model, tok = _load(args)
    rows = [{"prompt": format_prompt(ex, template="r1_zero"), "answer": ex.answer, "prefilled_think": True}
            for ex in arithmetic_dataset(args.prompts, seed=args.seed)]
    ds = Dataset.from_list(rows)

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step, and TRL's own profiling times (per name) inside it."""

        def __init__(self):
            self.times, self.phases, self._t0, self._cur = [], [], None, None

        def on_step_begin(self, a, state, control, **kw):
            self._cur = {}
            self._t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            self.times.append(time.perf_counter() - self._t0)
            self.phases.append(self._cur)
            self._cur = None

        def record(self, name, seconds):
            if self._cur is not None:
                self._cur[name] = self._cur.get(name, 0.0) + seconds

    timer = StepTimer()
    original_log = trl_profiling.ProfilingContext._log_metrics

    def log_metrics(self, duration):  # TRL only reports these to wandb/mlflow/trackio: keep them here
        timer.record(self.name.split(".", 1)[-1], duration)
        return original_log(self, duration)

    trl_profiling.ProfilingContext._log_metrics = log_metrics
    n = args.prompts * args.num_generations
    out_dir = tempfile.mkdtemp(prefix="llm_cpu_speed_trl_")
    kwargs = dict(
        output_dir=out_dir, max_steps=args.grpo_steps, seed=args.seed,
        # one optimizer step = one generation batch = prompts x G completions, in one forward/backward
        per_device_train_batch_size=n, num_generations=args.num_generations, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        beta=0.0, loss_type="grpo", scale_rewards="group", epsilon=0.2,
        learning_rate=args.learning_rate, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, bf16=True, use_cpu=True,
        report_to=[], logging_strategy="no", save_strategy="no", log_completions=False, disable_tqdm=True,
        use_vllm=False, dataloader_num_workers=0, remove_unused_columns=False, shuffle_dataset=True,
    )
    fields = {f.name for f in dataclasses.fields(TRLConfig)}
    # TRL's GRPOConfig defaults to checkpointing on; transformers >= 5.x calls it activation_checkpointing
    ckpt_field = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    kwargs[ckpt_field] = not args.trl_no_gradient_checkpointing
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise SystemExit(f"TRL {trl.__version__}'s GRPOConfig has no field(s) {unknown}; adapt the benchmark")
    cfg = TRLConfig(**kwargs)
    try:
        trainer = GRPOTrainer(model=model, reward_funcs=[accuracy_reward, format_reward], args=cfg, train_dataset=ds,
                              processing_class=tok, callbacks=[timer])
        trainer.train()
    finally:
        trl_profiling.ProfilingContext._log_metrics = original_log
        shutil.rmtree(out_dir, ignore_errors=True)
    phases = []
    for raw, t in zip(timer.phases, timer.times):
        ph = {"generate_s": raw.get("transformers.generate"), "rewards_s": raw.get("_calculate_rewards"),
              "logprob_forward_s": raw.get("compute_loss")}
        ph["rest_s"] = t - sum(v for v in ph.values() if v is not None)  # backward, optimizer, tokenising, advantages
        phases.append({"raw_trl_profiling": {k: _r(v) for k, v in raw.items()}, **{k: _r(v) for k, v in ph.items()}})
    a = trainer.args
    is_ckpt = getattr(trainer.model, "is_activation_checkpointing", None)
    if is_ckpt is None:
        is_ckpt = getattr(trainer.model, "is_gradient_checkpointing", None)
    return {
        "model_checkpointing_active_after_training": None if is_ckpt is None else bool(is_ckpt),
        "step_times": [_r(t) for t in timer.times],
        "phases_per_step": phases,
        "config": {"per_device_train_batch_size": a.per_device_train_batch_size, "num_generations": a.num_generations,
                   "generation_batch_size": a.generation_batch_size, "steps_per_generation": a.steps_per_generation,
                   "gradient_accumulation_steps": a.gradient_accumulation_steps, "num_iterations": a.num_iterations,
                   "loss_type": a.loss_type, "beta": a.beta, "bf16": a.bf16, "use_cpu": a.use_cpu,
                   "activation_checkpointing": getattr(a, ckpt_field), "optim": str(a.optim),
                   "lr_scheduler_type": str(a.lr_scheduler_type), "learning_rate": a.learning_rate,
                   "max_completion_length": a.max_completion_length, "top_k": a.top_k, "top_p": a.top_p,
                   "temperature": a.temperature, "scale_rewards": a.scale_rewards},
        "threads_used": torch.get_num_threads(),
        "peak_rss_gb": _r(_peak_rss_gb(), 3),
    }


def run_worker(args) -> int:
    fn = {"sampler": worker_sampler, "rlcore_grpo": worker_rlcore_grpo, "trl_grpo": worker_trl_grpo}[args.worker]
    res = fn(args)
    Path(args.worker_out).write_text(json.dumps(res, indent=1))
    return 0


# ====================================================================== parent: run workers, assemble the JSON
def spawn(name: str, argv: list[str], args) -> dict:
    """Run one worker in a fresh interpreter; returns its JSON plus wall seconds, or ``{"error": ...}``."""
    fd, path = tempfile.mkstemp(prefix=f"llm_cpu_speed_{name}_", suffix=".json")
    os.close(fd)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", name, "--worker-out", path]
    print(f"--- {name} (fresh process) ---", flush=True)
    t0 = time.perf_counter()
    try:
        rc = subprocess.run(cmd, env=env, cwd=ROOT).returncode
        wall = time.perf_counter() - t0
        if rc != 0:
            return {"error": f"worker {name} exited with status {rc} (see its output above)", "wall_seconds": _r(wall, 1)}
        res = json.loads(Path(path).read_text())
        res["wall_seconds"] = _r(wall, 1)
        return res
    finally:
        Path(path).unlink(missing_ok=True)


def sampler_section(res: dict, args) -> dict:
    sec = {"settings": {"prompts": args.prompts, "num_generations": args.num_generations,
                        "batch": args.prompts * args.num_generations, "max_new_tokens": args.max_new_tokens,
                        "repeats": args.repeats, "warmup_new_tokens": WARMUP_NEW_TOKENS,
                        "hf_generate_kwargs": {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
                                               "num_return_sequences": args.num_generations},
                        "tok_per_s": ("generated tokens up to and including EOS / wall time of the call, prompt "
                                      "tokenisation and completion decoding included; median over repeats"),
                        "note": ("HF generate with num_return_sequences expands the prompts to all rows before the "
                                 "prefill and keeps finished rows in the batch (their padding is not counted); both "
                                 "rlcore samplers prefill each distinct prompt once, and generate_fast also drops "
                                 "finished rows")},
           "target": f"rlcore fast >= {SAMPLER_TARGET:g}x HF generate (tok/s), in each dtype"}
    if "error" in res:
        sec["error"] = res["error"]
        return sec
    sec.update({k: res[k] for k in ("bf16_native", "prompt_tokens", "threads_used", "peak_rss_gb", "wall_seconds")})
    for dtype in args.dtypes:
        rec = res[dtype]
        fast, teach, hf = (rec[s]["median_tok_per_s"] for s in SAMPLERS)
        ratio = fast / hf if fast and hf else None
        sec[dtype] = {
            "rlcore_tok_per_s": fast, "teaching_tok_per_s": teach, "hf_tok_per_s": hf,
            "ratio_rlcore_over_hf": _r(ratio, 3),
            "ratio_rlcore_over_teaching": _r(fast / teach, 3) if fast and teach else None,
            "ratio_teaching_over_hf": _r(teach / hf, 3) if teach and hf else None,
            "target_met": None if ratio is None else bool(ratio >= SAMPLER_TARGET),
            "how": ("rlcore: generate_fast(model_fp32, bf16=True) (bf16 twin, refreshed each call); teaching and HF: "
                    "on copy.deepcopy(model).to(torch.bfloat16)") if dtype == "bfloat16" else "all on the float32 model",
            "runs": rec,
        }
    return sec


def grpo_section(r: dict, t: dict | None, args) -> dict:
    warm = 1
    sec = {"settings": {"prompts": args.prompts, "num_generations": args.num_generations,
                        "batch": args.prompts * args.num_generations, "max_new_tokens": args.max_new_tokens,
                        "steps": args.grpo_steps, "warmup_steps_excluded": warm, "beta": 0.0, "loss_type": "grpo",
                        "num_iterations": 1, "learning_rate": args.learning_rate, "temperature": 1.0, "bf16": True,
                        "rewards": ["accuracy_reward", "format_reward"],
                        "dataset": f"arithmetic_dataset({args.prompts}, seed={args.seed}), R1-Zero template, "
                                   "prefilled <think>: the same prompts at every step for both trainers",
                        "trl_gradient_checkpointing": not args.trl_no_gradient_checkpointing},
           "targets": {"ratio_rlcore_over_trl": f"<= {GRPO_TIME_TARGET}",
                       "rlcore_peak_rss_gb": f"<= {GRPO_RSS_TARGET_GB:g} and <= trl_peak_rss_gb"}}

    def steady(res):
        if res is None or "error" in res:
            return None
        return _median(res["step_times"][warm:])

    def phase_medians(res):
        if res is None or "error" in res or not res.get("phases_per_step"):
            return None
        keys = ("generate_s", "rewards_s", "logprob_forward_s", "rest_s")
        return {k: _r(_median([ph.get(k) for ph in res["phases_per_step"][warm:]])) for k in keys}

    r_s, t_s = steady(r), steady(t)
    r_rss = None if "error" in r else r["peak_rss_gb"]
    t_rss = None if t is None or "error" in t else t["peak_rss_gb"]
    ratio = r_s / t_s if r_s and t_s else None
    sec.update({
        "rlcore_s_per_step": _r(r_s, 3), "trl_s_per_step": _r(t_s, 3), "ratio_rlcore_over_trl": _r(ratio, 3),
        "rlcore_peak_rss_gb": r_rss, "trl_peak_rss_gb": t_rss,
        "rlcore_phases_s": phase_medians(r), "trl_phases_s": phase_medians(t),
        "phases_note": ("medians over the steady steps; generate = sampling the batch's completions, rewards = reward "
                        "functions, logprob_forward = the differentiable forward pass of the loss, rest = step - "
                        "those (backward, optimizer step, tokenisation, advantages, bookkeeping)"),
    })
    sec["time_target_met"] = None if ratio is None else bool(ratio <= GRPO_TIME_TARGET)
    sec["rss_target_met"] = (None if r_rss is None else
                             bool(r_rss <= GRPO_RSS_TARGET_GB and (t_rss is None or r_rss <= t_rss)))
    if t_rss is None and r_rss is not None:
        sec["rss_target_note"] = "TRL not measured: only the 6 GB bound was checked"
    sec["target_met"] = (None if sec["time_target_met"] is None or sec["rss_target_met"] is None
                         else sec["time_target_met"] and sec["rss_target_met"])
    sec["rlcore"] = r
    sec["trl"] = t if t is not None else {"skipped": True}
    return sec


def table(result: dict) -> str:
    lines = []
    s = result.get("sampler")
    if s and "error" not in s:
        lines += ["sampler (tok/s, median)    rlcore fast  teaching      HF  fast/HF  target >=3x",
                  "-" * 78]
        for dtype in DTYPES:
            if dtype in s:
                d = s[dtype]
                lines.append(f"  {dtype:24s} {d['rlcore_tok_per_s']:11.1f} {d['teaching_tok_per_s']:9.1f} "
                             f"{d['hf_tok_per_s']:7.1f} {d['ratio_rlcore_over_hf']:8.2f}  "
                             f"{'met' if d['target_met'] else 'MISSED'}")
    elif s:
        lines.append(f"sampler: {s['error']}")
    g = result.get("grpo")
    if g:
        def f(x, fmt):
            width = int("".join(c for c in fmt.split(".")[0] if c.isdigit()) or 0)
            return "-".rjust(width) if x is None else format(x, fmt)

        lines += ["", "GRPO step                      rlcore       TRL   ratio   target", "-" * 78,
                  f"  s/step (median of steady)  {f(g['rlcore_s_per_step'], '8.2f')}  {f(g['trl_s_per_step'], '8.2f')}"
                  f"  {f(g['ratio_rlcore_over_trl'], '6.3f')}   <= {GRPO_TIME_TARGET}: "
                  f"{ {True: 'met', False: 'MISSED', None: '-'}[g['time_target_met']]}",
                  f"  peak RSS (GB)              {f(g['rlcore_peak_rss_gb'], '8.2f')}  {f(g['trl_peak_rss_gb'], '8.2f')}"
                  f"          <= {GRPO_RSS_TARGET_GB:g} and <= TRL: "
                  f"{ {True: 'met', False: 'MISSED', None: '-'}[g['rss_target_met']]}"]
        for side in ("rlcore", "trl"):
            ph = g.get(f"{side}_phases_s")
            if ph:
                lines.append(f"  {side} phases (s): " + ", ".join(f"{k[:-2]} {f(v, '.2f')}" for k, v in ph.items()))
            err = g.get(side, {}).get("error")
            if err:
                lines.append(f"  {side}: {err}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    if args.smoke:
        args.out = os.path.join(tempfile.mkdtemp(prefix="llm_cpu_speed_smoke_"), "llm_cpu_speed.json")
    t_start = time.perf_counter()
    result = {"metadata": metadata(args, argv)}
    result["metadata"]["model"] = "tiny_model (smoke)" if args.smoke else args.model
    out = Path(args.out)

    def write():
        result["metadata"]["wall_seconds"] = _r(time.perf_counter() - t_start, 1)
        result["metadata"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))

    failed = False
    if "sampler" in args.parts:
        res = spawn("sampler", argv, args)
        failed |= "error" in res
        result["sampler"] = sampler_section(res, args)
        write()  # partial results survive a later failure
    if "grpo" in args.parts:
        r = spawn("rlcore_grpo", argv, args)
        t = None
        if args.skip_trl:
            print("--- trl_grpo skipped (--skip-trl) ---")
        elif importlib.util.find_spec("trl") is None or importlib.util.find_spec("datasets") is None:
            if not args.smoke:
                raise SystemExit("TRL is not installed: `pip install -e '.[bench]'` (pinned trl, datasets) "
                                 "or pass --skip-trl")
            print("--- trl_grpo skipped: trl/datasets not installed (smoke) ---")
        else:
            t = spawn("trl_grpo", argv, args)
        failed |= "error" in r or (t is not None and "error" in t)
        result["grpo"] = grpo_section(r, t, args)
    write()
    print()
    print(table(result))
    print(f"\nwrote {out} ({result['metadata']['wall_seconds']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
