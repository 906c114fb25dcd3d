"""Speed and memory of rlcore's GRPO against TRL's GRPOTrainer on the same model, task and settings.

GPU benchmark. Both trainers run the same configuration:

* model: SmolLM2-135M-Instruct (offline, :func:`rlcore.llm.models.load_model`), bf16 weights;
* task: 2-digit arithmetic with the R1-Zero template, rewards accuracy + format (rlcore's
  TRL-compatible reward functions, so both see identical rewards);
* per step: 8 prompts x G = 8 completions, at most 128 new tokens, temperature 1, beta = 0
  (no reference model), one gradient step per batch (mu = 1), token aggregation "grpo"
  (per-sequence mean), learning rate 1e-6, no gradient checkpointing, no vLLM.

Measured: the median wall-clock seconds of the steady steps (the first ``--warmup`` steps are
dropped: CUDA kernels, allocator) and the peak allocated CUDA memory over the run
(``torch.cuda.max_memory_allocated``). Writes ``benchmarks/results/grpo_vs_trl.json``.

Run:  python benchmarks/grpo_vs_trl.py            (needs CUDA and ``pip install trl``)
      python benchmarks/grpo_vs_trl.py --smoke    (tiny model on CPU, 3 steps, writes to a temp dir)
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=12, help="steps per trainer (warm-up included)")
    p.add_argument("--warmup", type=int, default=2, help="first steps excluded from the median")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--num-generations", type=int, default=8, help="G, completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grpo_vs_trl.json"))
    p.add_argument("--skip-trl", action="store_true", help="only time rlcore (e.g. when trl is not installed)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny random model on CPU, 3 steps, tiny batch; results go to a temp dir (proves the script runs)")
    return p.parse_args(argv)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device):
    from rlcore.llm.ppo import peak_memory_gb

    return peak_memory_gb(device)


def load(args, device, dtype):
    from rlcore.llm.models import load_model, tiny_model

    if args.smoke:
        model, tok = tiny_model(seed=args.seed)
        return model.to(device), tok
    return load_model(args.model, dtype=dtype, device=device)


def run_rlcore(args, device, dtype, train):
    from rlcore.llm.grpo import GRPOConfig, train_grpo
    from rlcore.llm.rewards import accuracy_reward, format_reward

    model, tok = load(args, device, dtype)
    cfg = GRPOConfig(steps=args.steps, prompts_per_step=args.prompts, num_generations=args.num_generations,
                     max_new_tokens=args.max_new_tokens, temperature=1.0, learning_rate=args.learning_rate,
                     beta=0.0, num_iterations=1, loss_type="grpo", scale_rewards="group", template="r1_zero",
                     seed=args.seed, progress_bar=False, log_completions=0)
    _reset_memory(device)
    res = train_grpo(cfg, model, tok, train, [accuracy_reward, format_reward])
    _sync(device)
    times = [float(t) for t in res.history["step_time"]]
    peak = _peak_gb(device)
    del model, res
    return times, peak


def run_trl(args, device, dtype, train):
    try:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig as TRLConfig
        from trl import GRPOTrainer
    except ImportError as e:
        raise SystemExit(f"TRL is not installed ({e}); `pip install trl datasets` or pass --skip-trl") from e
    from rlcore.llm.rewards import accuracy_reward, format_reward
    from rlcore.llm.tasks import format_prompt

    model, tok = load(args, device, dtype)
    rows = [{"prompt": format_prompt(ex, template="r1_zero"), "answer": ex.answer, "prefilled_think": True}
            for ex in train]
    import pyarrow as pa

    # an explicit fingerprint skips datasets' dill-based hashing of the table (it fails with some
    # datasets/dill/pyarrow combinations and is only used for caching)
    ds = Dataset(pa.Table.from_pylist(rows), fingerprint="rlcore-grpo-vs-trl")

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._t0 = [], None

        def on_step_begin(self, a, state, control, **kw):
            _sync(device)
            self._t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            _sync(device)
            self.times.append(time.perf_counter() - self._t0)

    n = args.prompts * args.num_generations
    out_dir = tempfile.mkdtemp(prefix="trl_grpo_")
    cfg = TRLConfig(
        output_dir=out_dir, max_steps=args.steps, per_device_train_batch_size=n, num_generations=args.num_generations,
        steps_per_generation=1, gradient_accumulation_steps=1,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, learning_rate=args.learning_rate,
        beta=0.0, num_iterations=1, loss_type="grpo", scale_rewards="group", epsilon=0.2,
        bf16=(device.type == "cuda" and dtype == torch.bfloat16), use_cpu=device.type == "cpu",
        logging_steps=1, save_strategy="no", report_to="none", seed=args.seed, disable_dropout=True,
        dataloader_num_workers=0, log_completions=False, use_vllm=False, shuffle_dataset=True,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0,
    )
    # no activation checkpointing in either trainer (TRL's GRPOConfig turns it on by default)
    for name in ("activation_checkpointing", "gradient_checkpointing"):
        if hasattr(cfg, name):
            setattr(cfg, name, False)
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy_reward, format_reward], args=cfg, train_dataset=ds,
                          processing_class=tok, callbacks=[timer])
    _reset_memory(device)
    trainer.train()
    _sync(device)
    peak = _peak_gb(device)
    del trainer, model
    return timer.times, peak


def main(argv=None):
    args = parse_args(argv)
    from rlcore.llm.tasks import arithmetic_dataset
    from rlcore.utils import seed_everything

    if not args.smoke and not torch.cuda.is_available():
        print("grpo_vs_trl.py is a GPU benchmark: CUDA is not available here. Run it on a CUDA machine, "
              "or pass --smoke to check that it runs (tiny model on CPU).", file=sys.stderr)
        return 2
    if args.smoke:
        torch.set_num_threads(1)
        args.steps, args.warmup, args.prompts, args.num_generations, args.max_new_tokens = 3, 1, 2, 2, 16
        args.learning_rate = 1e-4
        args.out = os.path.join(tempfile.mkdtemp(prefix="grpo_vs_trl_smoke_"), "grpo_vs_trl.json")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.warmup >= args.steps:
        raise SystemExit(f"--warmup ({args.warmup}) must be smaller than --steps ({args.steps})")
    train = arithmetic_dataset(max(256, args.prompts * args.steps), digits=2, seed=args.seed)

    seed_everything(args.seed)
    r_times, r_peak = run_rlcore(args, device, dtype, train)
    r_med = statistics.median(r_times[args.warmup:])
    print(f"rlcore: median {r_med:.3f} s/step over {len(r_times) - args.warmup} steady steps, peak {r_peak:.2f} GB")
    result = {
        "rlcore_s_per_step": r_med, "rlcore_step_times": r_times, "rlcore_peak_mem_gb": r_peak,
        "trl_s_per_step": None, "trl_step_times": None, "trl_peak_mem_gb": None, "ratio_rlcore_over_trl": None,
    }
    if not args.skip_trl:
        seed_everything(args.seed)
        t_times, t_peak = run_trl(args, device, dtype, train)
        t_med = statistics.median(t_times[args.warmup:])
        print(f"TRL:    median {t_med:.3f} s/step over {len(t_times) - args.warmup} steady steps, peak {t_peak:.2f} GB")
        import trl

        result.update({"trl_s_per_step": t_med, "trl_step_times": t_times, "trl_peak_mem_gb": t_peak,
                       "ratio_rlcore_over_trl": r_med / t_med, "trl_version": trl.__version__})
    result.update({
        "settings": {"model": "tiny_model (smoke)" if args.smoke else args.model, "prompts_per_step": args.prompts,
                     "num_generations": args.num_generations, "max_new_tokens": args.max_new_tokens,
                     "steps": args.steps, "warmup_steps_excluded": args.warmup, "dtype": str(dtype).replace("torch.", ""),
                     "beta": 0.0, "num_iterations": 1, "loss_type": "grpo", "learning_rate": args.learning_rate},
        "peak_memory_metric": ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                               else "process peak RSS (ru_maxrss; monotone, includes both runs)"),
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:])),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "smoke": args.smoke,
    })
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
