"""The book's GPU runs on SmolLM2-135M-Instruct: R1-Zero vs cold start, language consistency, distillation.

Four runs, one task (arithmetic with the R1-Zero template, rewards accuracy + format):

1. ``r1_zero``      GRPO straight from the instruct model (C19, C20: reward, length and
                    reflection-word curves, reported whatever they show);
2. ``cold_start``   SFT on ``--sft-examples`` programmatic chain-of-thought traces (half of them
                    with a "Wait, let me check" step), then the same GRPO budget (C21);
3. ``lang_reward``  as 1 plus the language-consistency reward on the thinking (C22);
4. ``distill_vs_rl`` the cold-start RL model as teacher; a fresh copy of the instruct model as
                    student: distillation (rejection sampling + SFT) vs GRPO at equal FLOPs (C23;
                    teacher and student have the same size here, only one model ships offline, so
                    this is self-distillation from a better-trained copy -- said so in the JSON).

Writes ``benchmarks/results/llm_gpu_runs.json`` (per run: heldout_accuracy, format_rate,
language_consistency, reflection_rate, curves; plus command, device, date) and
``benchmarks/results/llm_gpu_runs.png``.

Run:  python benchmarks/llm_gpu_runs.py                 (CUDA; about an hour on one H100 at the defaults)
      python benchmarks/llm_gpu_runs.py --smoke         (tiny model on CPU, a few steps, temp dir)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = ("r1_zero", "cold_start", "lang_reward", "distill_vs_rl")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {RUNS}")
    p.add_argument("--steps", type=int, default=150, help="GRPO steps per run")
    p.add_argument("--prompts", type=int, default=16, help="prompts per GRPO step")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--learning-rate", type=float, default=2e-6)
    p.add_argument("--digits", type=int, default=2)
    p.add_argument("--ops", default="+-", help="arithmetic operators, e.g. '+-*'")
    p.add_argument("--sft-examples", type=int, default=512)
    p.add_argument("--sft-steps", type=int, default=200)
    p.add_argument("--sft-learning-rate", type=float, default=1e-5)
    p.add_argument("--lang-weight", type=float, default=0.5, help="weight of the language-consistency reward")
    p.add_argument("--distill-samples", type=int, default=4, help="teacher samples per training question")
    p.add_argument("--distill-questions", type=int, default=512)
    p.add_argument("--train-n", type=int, default=2048, help="training questions")
    p.add_argument("--eval-n", type=int, default=200, help="held-out questions")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--smoke", action="store_true", help="tiny random model on CPU, a few steps, results to a temp dir")
    return p.parse_args(argv)


def smoke_overrides(args):
    torch.set_num_threads(1)
    args.steps, args.prompts, args.num_generations, args.max_new_tokens = 2, 2, 2, 24
    args.learning_rate, args.sft_learning_rate = 1e-4, 3e-3
    args.sft_examples, args.sft_steps, args.distill_questions, args.distill_samples = 16, 4, 4, 2
    args.train_n, args.eval_n, args.eval_every, args.digits = 32, 4, 1, 1
    args.out_dir = tempfile.mkdtemp(prefix="llm_gpu_runs_smoke_")


@torch.no_grad()
def evaluate_full(model, tok, examples, template, max_new_tokens, batch_size=64):
    """Greedy decoding on held-out questions: accuracy, format, language consistency of the thinking, reflection."""
    from rlcore.llm.grpo import _format, _reward_kwargs
    from rlcore.llm.rewards import (accuracy_reward, extract_think, format_reward, language_consistency,
                                    reflection_rate)
    from rlcore.llm.sampling import generate

    prefilled = template == "r1_zero"
    acc, fmt, lang, comps, lengths = [], [], [], [], []
    for s in range(0, len(examples), batch_size):
        exs = examples[s:s + batch_size]
        prompts = [_format(ex, template, tok) for ex in exs]
        ro = generate(model, tok, prompts, max_new_tokens=max_new_tokens, greedy=True)
        kw = _reward_kwargs(exs, 1, prefilled)
        acc += accuracy_reward(prompts, ro.completions, **kw)
        fmt += format_reward(prompts, ro.completions, **kw)
        for c in ro.completions:
            think = extract_think(c, prefilled_think=prefilled)
            lang.append(language_consistency(think) if think else 0.0)
        comps += ro.completions
        lengths += ro.lengths.tolist()
    return {"heldout_accuracy": float(np.mean(acc)), "format_rate": float(np.mean(fmt)),
            "language_consistency": float(np.mean(lang)), "reflection_rate": reflection_rate(comps),
            "mean_length": float(np.mean(lengths)), "examples": comps[:3]}


def curves(history):
    out = {}
    for k in ("reward", "rewards/accuracy_reward", "rewards/format_reward", "rewards/language_consistency_reward",
              "completion_length", "reflection_rate", "heldout_accuracy", "format_rate", "step_time"):
        if k in history:
            out[k] = {"step": [int(s) for s in history.steps(k)], "value": [float(v) for v in history[k]]}
    return out


def main(argv=None):
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("llm_gpu_runs.py needs a CUDA GPU (SmolLM2-135M GRPO runs take about an hour on an H100). "
              "Pass --smoke to check that it runs end to end on CPU with the tiny model.", file=sys.stderr)
        return 2
    if args.smoke:
        smoke_overrides(args)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    bad = [r for r in runs if r not in RUNS]
    if bad:
        raise SystemExit(f"unknown run(s) {bad}; choose from {RUNS}")

    from rlcore.llm.distill import distill_vs_rl
    from rlcore.llm.grpo import GRPOConfig, train_grpo
    from rlcore.llm.models import load_model, tiny_model
    from rlcore.llm.rewards import accuracy_reward, format_reward, language_consistency_reward
    from rlcore.llm.sft import SFTConfig, sft_dataset, train_sft
    from rlcore.llm.tasks import arithmetic_dataset
    from rlcore.utils import seed_everything

    device = torch.device("cpu" if args.smoke else "cuda")
    template = "r1_zero"

    def fresh_model():
        if args.smoke:
            m, t = tiny_model(seed=args.seed)
            return m, t
        return load_model(args.model, dtype=torch.float32, device=device)

    ops = tuple(args.ops)
    train = arithmetic_dataset(max(args.train_n, args.sft_examples, args.distill_questions), digits=args.digits, ops=ops,
                               seed=args.seed)
    test = arithmetic_dataset(args.eval_n, digits=args.digits, ops=ops, seed=args.seed, split="test")
    eval_tokens = args.max_new_tokens

    def grpo_cfg(**kw):
        base = dict(steps=args.steps, prompts_per_step=args.prompts, num_generations=args.num_generations,
                    max_new_tokens=args.max_new_tokens, learning_rate=args.learning_rate, beta=0.0, template=template,
                    seed=args.seed, eval_every=args.eval_every, eval_max_new_tokens=eval_tokens, progress_bar=not args.smoke,
                    log_completions=0)
        base.update(kw)
        return GRPOConfig(**base)

    results: dict = {}
    models: dict = {}
    t_all = time.perf_counter()
    eval_subset = test[: min(len(test), 64)]  # periodic evaluation inside GRPO; the final one uses all of `test`

    if "r1_zero" in runs or "lang_reward" in runs:
        m0, tok = fresh_model()
        results["base_model"] = evaluate_full(m0, tok, test, template, eval_tokens)
        del m0
    if "r1_zero" in runs:
        seed_everything(args.seed)
        model, tok = fresh_model()
        t0 = time.perf_counter()
        res = train_grpo(grpo_cfg(), model, tok, train, [accuracy_reward, format_reward], eval_dataset=eval_subset)
        results["r1_zero"] = {**evaluate_full(model, tok, test, template, eval_tokens), "curves": curves(res.history),
                              "wall_s": time.perf_counter() - t0}
        print("r1_zero", {k: v for k, v in results["r1_zero"].items() if k not in ("curves", "examples")})
        del model
    if "cold_start" in runs or "distill_vs_rl" in runs:
        seed_everything(args.seed)
        model, tok = fresh_model()
        t0 = time.perf_counter()
        pairs = sft_dataset(train[: args.sft_examples], template=template, tokenizer=tok, self_check_rate=0.5, seed=args.seed)
        sft_hist = train_sft(model, tok, pairs, SFTConfig(max_steps=args.sft_steps, batch_size=16,
                                                          learning_rate=args.sft_learning_rate, seed=args.seed))
        after_sft = evaluate_full(model, tok, test, template, eval_tokens)
        res = train_grpo(grpo_cfg(), model, tok, train, [accuracy_reward, format_reward], eval_dataset=eval_subset)
        results["cold_start"] = {**evaluate_full(model, tok, test, template, eval_tokens), "after_sft": after_sft,
                                 "sft_loss": [float(x) for x in sft_hist["loss"]], "curves": curves(res.history),
                                 "wall_s": time.perf_counter() - t0}
        print("cold_start", {k: v for k, v in results["cold_start"].items() if k not in ("curves", "examples", "sft_loss", "after_sft")})
        models["teacher"] = (model, tok)
    if "lang_reward" in runs:
        seed_everything(args.seed)
        model, tok = fresh_model()
        t0 = time.perf_counter()
        res = train_grpo(grpo_cfg(reward_weights=[1.0, 1.0, args.lang_weight]), model, tok, train,
                         [accuracy_reward, format_reward, language_consistency_reward], eval_dataset=eval_subset)
        results["lang_reward"] = {**evaluate_full(model, tok, test, template, eval_tokens), "curves": curves(res.history),
                                  "lang_weight": args.lang_weight, "wall_s": time.perf_counter() - t0}
        print("lang_reward", {k: v for k, v in results["lang_reward"].items() if k not in ("curves", "examples")})
        del model
    if "distill_vs_rl" in runs:
        teacher, tok = models["teacher"]
        student, _ = fresh_model()
        t0 = time.perf_counter()
        out = distill_vs_rl(teacher, student, tok, train[: args.distill_questions], test,
                            num_samples=args.distill_samples, template=template, max_new_tokens=args.max_new_tokens,
                            sft_cfg=SFTConfig(epochs=2, batch_size=16, learning_rate=args.sft_learning_rate, seed=args.seed),
                            grpo_cfg=grpo_cfg(eval_every=0), seed=args.seed)
        out["note"] = ("teacher = cold-start SFT + GRPO model; student = untrained copy of the same model "
                       "(only one pretrained model is available offline): self-distillation at equal FLOPs, "
                       "RL costed with max_new_tokens as an upper bound")
        out["wall_s"] = time.perf_counter() - t0
        results["distill_vs_rl"] = out
        print("distill_vs_rl", {k: {kk: vv for kk, vv in v.items() if kk in ("heldout_accuracy", "format_rate", "flops")}
                                for k, v in out.items() if k in ("distill", "rl")})

    meta = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:])),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": "tiny_model (smoke)" if args.smoke else args.model, "smoke": args.smoke,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out_dir",)},
        "wall_s_total": time.perf_counter() - t_all, "torch": torch.__version__,
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "llm_gpu_runs.json").write_text(json.dumps({**meta, "runs": results}, indent=2, default=float))
    plot(results, out_dir / "llm_gpu_runs.png")
    print(f"wrote {out_dir / 'llm_gpu_runs.json'} and {out_dir / 'llm_gpu_runs.png'}")
    return 0


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    panels = [("reward", "reward (train)"), ("completion_length", "completion length (tokens)"),
              ("reflection_rate", "share with reflection words"), ("heldout_accuracy", "held-out accuracy (greedy)")]
    for ax, (key, title) in zip(axes.flat, panels):
        for run in ("r1_zero", "cold_start", "lang_reward"):
            c = results.get(run, {}).get("curves", {}).get(key)
            if c:
                ax.plot(c["step"], c["value"], marker="o" if len(c["step"]) < 20 else None, label=run)
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(frameon=False, fontsize=8)
    d = results.get("distill_vs_rl")
    if d:
        ax = axes.flat[3].inset_axes([0.62, 0.08, 0.35, 0.4])
        ax.bar([0, 1], [d["distill"]["heldout_accuracy"], d["rl"]["heldout_accuracy"]], color=["C3", "C4"])
        ax.set_xticks([0, 1], ["distill", "RL"])
        ax.set_title("student, equal FLOPs", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
