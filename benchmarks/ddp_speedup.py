"""Wall time of GRPO steps in 1 process vs N data-parallel processes (issue 14): the speed-up of torchrun.

The same global batch in both settings (``--prompts-per-step`` prompts x ``--num-generations`` completions per
step): one process samples and trains on all of it; N processes (``torch.multiprocessing``, the gloo backend on
CPU, NCCL with ``--device cuda``, one GPU per rank -- the same code path as ``torchrun --nproc_per_node N``) each
take ``prompts_per_step / N`` prompts, whole groups, and average their gradients (:func:`rlcore.llm.grpo.train_grpo`).

Timing: ``--warmup-steps`` steps first (not counted), then ``--steps`` timed steps; each step's time is rank 0's
``step_time`` (sampling, rewards, backward, the all-reduces and the optimizer step; no evaluation, no
checkpoint). speed-up = median step time of 1 process / median step time of N processes.
On a CPU the cores are split: with ``--threads T`` the single process uses ``T`` threads and each of the N
processes ``T // N``, so both settings use the same cores (a fair CPU comparison; on GPUs each rank has its own
device). Sampling is batched per rank (``seed_per_prompt=False``, the fast default), so the 1- and N-process
runs draw different completions; the mean completion length of each run is recorded next to its time.

    python benchmarks/ddp_speedup.py --smoke                        # seconds: checks that it runs
    python benchmarks/ddp_speedup.py                                # tiny model, 1 vs 2 CPU processes
    python benchmarks/ddp_speedup.py --model smollm2 --nprocs 2     # SmolLM2-135M-Instruct (offline weights)
    python benchmarks/ddp_speedup.py --device cuda --nprocs 8 --model smollm2   # one node, 8 GPUs

Writes ``benchmarks/results/ddp_speedup.json`` (``--out``; ``--smoke`` writes to a temporary file) with the
command, git commit, processor, thread counts, library versions, date, and every step time; prints the speed-up.
Run the real measurement on an otherwise idle machine: other load changes the two settings unequally.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rlcore.llm.results import cpu_model, git_commit  # noqa: E402

START_COMMIT = git_commit(ROOT)  # the code this process runs, read once at start


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nprocs", type=int, default=2, help="processes of the data-parallel run (compared with 1)")
    p.add_argument("--model", choices=("tiny", "smollm2"), default="tiny",
                   help="tiny: rlcore.llm.models.tiny_model; smollm2: load_model('smollm2-135m-instruct')")
    p.add_argument("--steps", type=int, default=6, help="timed GRPO steps per run")
    p.add_argument("--warmup-steps", type=int, default=2, help="steps before the timed ones (not counted)")
    p.add_argument("--prompts-per-step", type=int, default=8, help="global prompts per step (divisible by --nprocs)")
    p.add_argument("--num-generations", type=int, default=4, help="G, completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="CPU threads in all: the single process uses them all, each of N processes threads // N")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (rank r on cuda:r, NCCL)")
    p.add_argument("--fast", action="store_true", help="GRPOConfig(fast=True): rlcore's fast CPU sampler")
    p.add_argument("--bf16", action="store_true", help="GRPOConfig(bf16=True)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/ddp_speedup.json; "
                                               "--smoke: a temporary file)")
    p.add_argument("--smoke", action="store_true", help="a few seconds: 1 warm-up + 2 tiny steps, checks it runs")
    return p.parse_args(argv)


def smoke_overrides(args):
    args.model, args.steps, args.warmup_steps = "tiny", 2, 1
    args.prompts_per_step, args.num_generations, args.max_new_tokens = 2 * args.nprocs, 2, 8
    if args.out is None:
        args.out = os.path.join(tempfile.mkdtemp(prefix="ddp_speedup_smoke_"), "ddp_speedup.json")


def _reward(prompts, completions, **kw):
    """A reward with spread inside groups (so every step has a gradient): the completion's length mod 3."""
    return [float(len(c) % 3) for c in completions]


def _model(args):
    from rlcore.llm.models import load_model, tiny_model

    if args.model == "tiny":
        return tiny_model(seed=0)
    return load_model("smollm2-135m-instruct")


def _worker(rank: int, world: int, args, tmp: str):
    """One rank: train ``warmup + steps`` GRPO steps; rank 0 saves its step times."""
    import torch.distributed as dist

    from rlcore.llm.grpo import GRPOConfig, train_grpo
    from rlcore.llm.tasks import arithmetic_dataset

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    cuda = args.device.startswith("cuda")
    torch.set_num_threads(max(1, args.threads // world))
    if world > 1:
        if cuda:
            torch.cuda.set_device(rank)
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{tmp}/rendezvous", rank=rank,
                                world_size=world)
    try:
        model, tok = _model(args)
        cfg = GRPOConfig(steps=args.warmup_steps + args.steps, prompts_per_step=args.prompts_per_step,
                         num_generations=args.num_generations, max_new_tokens=args.max_new_tokens,
                         learning_rate=1e-5, template="r1_zero" if args.model == "smollm2" else None,
                         seed=args.seed, fast=args.fast, bf16=args.bf16, log_completions=0, progress_bar=False,
                         device=f"cuda:{rank}" if cuda else "cpu")
        data = arithmetic_dataset(max(64, 4 * args.prompts_per_step), digits=1, seed=args.seed)
        t0 = time.perf_counter()
        res = train_grpo(cfg, model, tok, data, [_reward])
        wall = time.perf_counter() - t0
        if rank == 0:
            h = res.history
            timed = slice(args.warmup_steps, None)
            with open(os.path.join(tmp, "result.json"), "w") as f:
                json.dump({"nprocs": world, "threads_per_proc": torch.get_num_threads(),
                           "step_seconds": [float(x) for x in list(h["step_time"])[timed]],
                           "completion_length": [float(x) for x in list(h["completion_length"])[timed]],
                           "train_wall_s": wall}, f)
    finally:
        if world > 1:
            dist.destroy_process_group()


def run(args, world: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"ddp_speedup_{world}_") as tmp:
        mp.spawn(_worker, args=(world, args, tmp), nprocs=world, join=True)
        with open(os.path.join(tmp, "result.json")) as f:
            out = json.load(f)
    out["median_step_s"] = statistics.median(out["step_seconds"])
    out["mean_completion_length"] = statistics.fmean(out["completion_length"])
    return out


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.smoke:
        smoke_overrides(args)
    if args.nprocs < 2:
        raise SystemExit("--nprocs must be >= 2 (the comparison is against 1 process)")
    if args.prompts_per_step % args.nprocs:
        raise SystemExit(f"--prompts-per-step {args.prompts_per_step} must be divisible by --nprocs {args.nprocs}")
    cuda = args.device.startswith("cuda")
    if cuda and torch.cuda.device_count() < args.nprocs:
        raise SystemExit(f"--device cuda --nprocs {args.nprocs}: only {torch.cuda.device_count()} GPU(s) visible")
    if not cuda and args.threads < args.nprocs:
        raise SystemExit(f"--threads {args.threads} < --nprocs {args.nprocs}: each process needs a thread")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "ddp_speedup.json"
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    runs = [run(args, 1), run(args, args.nprocs)]
    speedup = runs[0]["median_step_s"] / runs[1]["median_step_s"]
    import transformers

    result = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + argv),
        "git_commit": START_COMMIT, "cpu": cpu_model(), "threads": args.threads,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "wall_s": time.perf_counter() - t0,
        "model": "tiny_model (smoke)" if args.smoke else ("tiny_model" if args.model == "tiny"
                                                          else "smollm2-135m-instruct"),
        "smoke": args.smoke, "loadavg_at_start": load_start,
        "loadavg_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "config": {k: getattr(args, k) for k in ("nprocs", "steps", "warmup_steps", "prompts_per_step",
                                                 "num_generations", "max_new_tokens", "fast", "bf16", "seed")},
        "runs": runs, "speedup": speedup, "efficiency": speedup / args.nprocs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median GRPO step: 1 process {runs[0]['median_step_s']:.3f} s, {args.nprocs} processes "
          f"{runs[1]['median_step_s']:.3f} s -> speed-up {speedup:.2f}x (efficiency {speedup / args.nprocs:.0%})"
          + (" [smoke]" if args.smoke else ""))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
