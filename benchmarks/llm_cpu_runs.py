"""The R1 recipe in miniature on the real SmolLM2-135M-Instruct, on a 2-core CPU.

Four runs, one task family (integer arithmetic with the R1-Zero template; held-out questions never
used in training, greedy decoding, 95 % intervals):

(a) ``r1_zero``       GRPO straight from the instruct model with the strict accuracy + format rewards. If
                      the groups carry no signal (``frac_zero_std_groups`` = 1: every completion scores the
                      same), a second phase uses what R1-Zero replications do to get signal: a lenient
                      answer reward (the last number counts, tags or not) plus shaped format credit.
(b) ``cold_start``    R1's cold start: SFT on a *small* set of compact chain-of-thought traces, then GRPO on
                      many prompts without traces; control: the same SFT continued on the same traces for
                      the same FLOPs as the GRPO phase. Reported: both held-out accuracies and the paired
                      difference with its 95 % interval; response length and reflection-word curves (C20).
(c) ``lang_mix``      a cold start whose traces mix two languages (half the traces use Chinese words for the
                      column names and verbs), then GRPO with and without the language-consistency reward
                      (C22): language share of the thinking and accuracy side by side.
(d) ``distill_vs_rl`` teacher = the model of (b); student = a fresh instruct model: rejection-sampling
                      distillation vs GRPO on the student at equal FLOPs (C23). Teacher and student have the
                      same size (one pretrained model ships offline): self-distillation, said so in the JSON.

Writes ``benchmarks/results/llm_cpu_runs.json`` + ``.png``. Each run keeps its checkpoints and its finished
result under ``--work-dir`` (outside git): a rerun skips finished runs and resumes an interrupted one from
its last checkpoint (``--fresh`` starts over). Trained models are saved there too (chapter 9 chats with
the cold-start model when it is present).

    python benchmarks/llm_cpu_runs.py                      # all four runs, 72 min measured on 2 cores
    python benchmarks/llm_cpu_runs.py --runs cold_start    # a subset
    python benchmarks/llm_cpu_runs.py --smoke              # tiny random model, a minute, temp dirs
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = ("r1_zero", "cold_start", "lang_mix", "distill_vs_rl")
SAMPLE_QUESTIONS = 3  # greedy transcripts stored per evaluation


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {RUNS}")
    p.add_argument("--digits", type=int, default=2, help="digits per operand")
    p.add_argument("--operands", type=int, default=2, help="operands per question (a + b + c)")
    p.add_argument("--train-n", type=int, default=4000, help="training questions (prompts for GRPO)")
    p.add_argument("--eval-n", type=int, default=400, help="held-out questions (never used in training)")
    p.add_argument("--eval-tokens", type=int, default=64, help="completion budget at evaluation")
    p.add_argument("--max-new-tokens", type=int, default=64, help="completion budget in GRPO")
    p.add_argument("--prompts", type=int, default=4, help="prompts per GRPO step")
    p.add_argument("--num-generations", type=int, default=8, help="G, completions per prompt")
    p.add_argument("--learning-rate", type=float, default=1e-5, help="GRPO learning rate")
    p.add_argument("--r1-steps", type=int, default=4, help="(a) GRPO steps with the strict rewards")
    p.add_argument("--r1-lenient-steps", type=int, default=12, help="(a) GRPO steps with the lenient rewards")
    p.add_argument("--sft-examples", type=int, default=32, help="(b, c) cold-start traces (tens, as in R1)")
    p.add_argument("--sft-steps", type=int, default=24, help="(b, c) cold-start SFT steps")
    p.add_argument("--sft-batch", type=int, default=8)
    p.add_argument("--sft-learning-rate", type=float, default=1e-4)
    p.add_argument("--grpo-steps", type=int, default=30, help="(b) GRPO steps after the cold start")
    p.add_argument("--lang-steps", type=int, default=12, help="(c) GRPO steps per arm")
    p.add_argument("--lang-weight", type=float, default=1.0, help="(c) weight of the language reward")
    p.add_argument("--distill-questions", type=int, default=96, help="(d) questions the teacher answers")
    p.add_argument("--distill-samples", type=int, default=4, help="(d) teacher samples per question")
    p.add_argument("--checkpoint-every", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="'cpu' (the book's runs) or 'cuda': the same code path on a GPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=str(Path(os.environ.get("RLCORE_CACHE", Path.home() / ".cache" / "rlcore"))
                                             / "llm_cpu_runs"), help="checkpoints, per-run results, models")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--fresh", action="store_true", help="ignore finished runs and checkpoints in --work-dir")
    p.add_argument("--smoke", action="store_true", help="tiny random model, a few steps, temporary directories")
    return p.parse_args(argv)


def smoke_overrides(args):
    args.threads = 1
    args.train_n, args.eval_n, args.eval_tokens, args.max_new_tokens = 64, 8, 16, 16
    args.prompts, args.num_generations = 2, 2
    args.r1_steps, args.r1_lenient_steps, args.sft_examples, args.sft_steps = 1, 1, 4, 2
    args.grpo_steps, args.lang_steps, args.distill_questions, args.distill_samples = 2, 1, 4, 2
    args.digits, args.operands = 1, 2
    args.learning_rate, args.sft_learning_rate = 1e-4, 3e-3
    defaults = parse_args([])
    tmp = tempfile.mkdtemp(prefix="llm_cpu_runs_smoke_")
    if args.work_dir == defaults.work_dir:  # never the real runs' directories, unless asked explicitly
        args.work_dir = os.path.join(tmp, "work")
    if args.out_dir == defaults.out_dir:
        args.out_dir = os.path.join(tmp, "out")


# ------------------------------------------------------------------ statistics
def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson score interval of a proportion k/n."""
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [max(0.0, c - h), min(1.0, c + h)]


def paired_difference(a: list[float], b: list[float], z: float = 1.96) -> dict:
    """Mean of ``a - b`` over the same questions and its 95 % normal interval (paired)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    m = float(d.mean())
    return {"difference": m, "ci95": [m - z * se, m + z * se], "n": int(len(d)),
            "excludes_zero": bool(m - z * se > 0 or m + z * se < 0)}


# ------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate_full(model, tok, examples, max_new_tokens, batch_size=100):
    """Greedy decoding (bf16 sampling copy) on held-out questions: accuracy with its interval, format,
    language share of the thinking, reflection rate, length, per-question correctness and transcripts."""
    from rlcore.llm.fast import generate_fast
    from rlcore.llm.grpo import _format, _reward_kwargs
    from rlcore.llm.rewards import (accuracy_reward, extract_think, format_reward, language_consistency,
                                    reflection_rate)

    acc, fmt, lang, comps, lengths, prompts_all = [], [], [], [], [], []
    for s in range(0, len(examples), batch_size):
        exs = examples[s:s + batch_size]
        prompts = [_format(ex, "r1_zero", tok) for ex in exs]
        ro = generate_fast(model, tok, prompts, max_new_tokens=max_new_tokens, greedy=True, bf16=True)
        kw = _reward_kwargs(exs, 1, True)
        acc += accuracy_reward(prompts, ro.completions, **kw)
        fmt += format_reward(prompts, ro.completions, **kw)
        for c in ro.completions:
            think = extract_think(c, prefilled_think=True)
            lang.append(language_consistency(think) if think else 0.0)
        comps += ro.completions
        lengths += ro.lengths.tolist()
        prompts_all += [ex.prompt for ex in exs]
    k = int(sum(acc))
    return {"heldout_accuracy": k / len(acc), "heldout_accuracy_ci95": wilson(k, len(acc)), "n": len(acc),
            "format_rate": float(np.mean(fmt)), "language_consistency": float(np.mean(lang)),
            "reflection_rate": reflection_rate(comps), "mean_length": float(np.mean(lengths)),
            "correct": [int(a) for a in acc],
            "transcripts": [{"question": q, "completion": c} for q, c in
                            zip(prompts_all[:SAMPLE_QUESTIONS], comps[:SAMPLE_QUESTIONS])]}


def curves(history, keys=("reward", "rewards/accuracy_reward", "rewards/format_reward",
                          "rewards/lenient_accuracy_reward", "rewards/partial_format_reward",
                          "rewards/language_consistency_reward", "frac_zero_std_groups", "completion_length",
                          "reflection_rate", "entropy", "step_time", "loss")):
    return {k: {"step": [int(s) for s in history.steps(k)], "value": [float(v) for v in history[k]]}
            for k in keys if k in history}


def samples_from_log(path, n_rows=2):
    """Training completions logged by GRPO at its first, middle and last step."""
    rows = []
    if not path or not Path(path).exists():
        return {}
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        if "completions" in rec:
            rows.append(rec)
    if not rows:
        return {}
    picks = {"start": rows[0], "middle": rows[len(rows) // 2], "end": rows[-1]}
    return {k: {"step": r["step"], "rows": [{"completion": c["completion"], "reward": c["reward"]}
                                           for c in r["completions"][:n_rows]]} for k, r in picks.items()}


# ------------------------------------------------------------------ pipeline
def _resume_or_restart(cfg: dict) -> dict:
    """A run resumes from its checkpoint when there is one; otherwise it starts over, replacing what an
    interrupted attempt left (a log written before its first checkpoint)."""
    ck = cfg.get("checkpoint_path")
    resume = bool(ck) and Path(ck).exists()
    return {**cfg, "resume": resume, "overwrite": not resume}


class Pipeline:
    def __init__(self, args):
        from rlcore.llm.tasks import arithmetic_dataset

        self.args = args
        self.work = Path(args.work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        ops = ("+",)
        self.train = arithmetic_dataset(args.train_n, digits=args.digits, ops=ops, num_operands=args.operands,
                                        seed=args.seed)
        self.test = arithmetic_dataset(args.eval_n, digits=args.digits, ops=ops, num_operands=args.operands,
                                       seed=args.seed, split="test")
        # traces come from the first questions; GRPO prompts are the rest (never the same questions)
        self.trace_examples = self.train[: args.sft_examples]
        self.rl_examples = self.train[args.sft_examples:]
        assert not {e.prompt for e in self.test} & {e.prompt for e in self.train}

    # -- models
    def fresh_model(self):
        from rlcore.llm.models import load_model, tiny_model

        if self.args.smoke:
            model, tok = tiny_model(seed=self.args.seed)
            return model.to(self.args.device), tok
        return load_model("smollm2-135m-instruct", device=self.args.device)

    def model_path(self, name):
        return self.work / "models" / name

    def save_model(self, model, tok, name):
        from rlcore.llm.fast import merge_lora

        path = self.model_path(name)
        tmp = path.with_name(path.name + ".tmp")
        merge_lora(model).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if path.exists():
            import shutil

            shutil.rmtree(path)
        os.replace(tmp, path)
        return path

    def load_saved(self, name):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = self.model_path(name)
        if not (path / "config.json").exists():
            return None
        tok = AutoTokenizer.from_pretrained(path)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(self.args.device).eval(), tok

    # -- configs
    def grpo_cfg(self, name, steps, **kw):
        from rlcore.llm.grpo import GRPOConfig

        a = self.args
        base = dict(steps=steps, prompts_per_step=a.prompts, num_generations=a.num_generations,
                    max_new_tokens=a.max_new_tokens, learning_rate=a.learning_rate, beta=0.0, template="r1_zero",
                    seed=a.seed, fast=True, bf16=True, log_completions=4, log_path=str(self.work / f"{name}.jsonl"),
                    checkpoint_path=str(self.work / f"{name}.ckpt"), checkpoint_every=a.checkpoint_every,
                    progress_bar=True)
        base.update(kw)
        return GRPOConfig(**_resume_or_restart(base))

    def sft_cfg(self, name, steps, **kw):
        from rlcore.llm.sft import SFTConfig

        a = self.args
        base = dict(max_steps=steps, batch_size=a.sft_batch, learning_rate=a.sft_learning_rate, seed=a.seed,
                    fast=True, bf16=True, checkpoint_path=str(self.work / f"{name}.ckpt"),
                    checkpoint_every=a.checkpoint_every, log_path=str(self.work / f"{name}.jsonl"))
        base.update(kw)
        return SFTConfig(**_resume_or_restart(base))

    def cold_start(self, name, mixed: bool):
        """SFT on the small trace set (half of them language-mixed when ``mixed``); cached on disk."""
        from rlcore.llm.sft import mix_languages, sft_dataset, train_sft

        saved = self.load_saved(name)
        pairs = sft_dataset(self.trace_examples, template="r1_zero", style="compact", seed=self.args.seed)
        if mixed:
            pairs = [(p, mix_languages(c) if i % 2 else c) for i, (p, c) in enumerate(pairs)]
        if saved is not None:
            return saved[0], saved[1], pairs, None
        model, tok = self.fresh_model()
        hist = train_sft(model, tok, pairs, self.sft_cfg(name, self.args.sft_steps))
        self.save_model(model, tok, name)
        return model, tok, pairs, hist

    # -- runs ------------------------------------------------------------
    def run_r1_zero(self):
        from rlcore.llm.grpo import train_grpo
        from rlcore.llm.rewards import (accuracy_reward, format_reward, lenient_accuracy_reward,
                                        partial_format_reward)

        a = self.args
        model, tok = self.fresh_model()
        before = evaluate_full(model, tok, self.test, a.eval_tokens)
        strict = train_grpo(self.grpo_cfg("r1_zero_strict", a.r1_steps), model, tok, self.rl_examples,
                            [accuracy_reward, format_reward])
        out = {"base_model": before, "strict": {"curves": curves(strict.history),
                                                 "samples": samples_from_log(strict.config.log_path)}}
        zero = strict.history["frac_zero_std_groups"]
        out["strict"]["mean_frac_zero_std_groups"] = float(np.mean(zero))
        out["strict"]["no_signal"] = bool(np.mean(zero) == 1.0)
        model = strict.model
        if a.r1_lenient_steps:
            # R1-Zero replications start weak models on a relaxed answer check plus shaped format credit
            lenient = train_grpo(self.grpo_cfg("r1_zero_lenient", a.r1_lenient_steps, seed=a.seed + 1), model, tok,
                                 self.rl_examples, [lenient_accuracy_reward, partial_format_reward])
            out["lenient"] = {"curves": curves(lenient.history), "samples": samples_from_log(lenient.config.log_path),
                              "mean_frac_zero_std_groups": float(np.mean(lenient.history["frac_zero_std_groups"]))}
            model = lenient.model
        out["after"] = evaluate_full(model, tok, self.test, a.eval_tokens)
        return out

    def run_cold_start(self):
        from rlcore.llm.distill import count_parameters, grpo_step_flops
        from rlcore.llm.grpo import _format, train_grpo
        from rlcore.llm.rewards import accuracy_reward, format_reward
        from rlcore.llm.sft import collate_sft, train_sft

        a = self.args
        model, tok, pairs, sft_hist = self.cold_start("cold_start_sft", mixed=False)
        after_sft = evaluate_full(model, tok, self.test, a.eval_tokens)
        sft_state = copy.deepcopy(model.state_dict())
        # GRPO on many prompts, no traces
        res = train_grpo(self.grpo_cfg("cold_start_grpo", a.grpo_steps), model, tok, self.rl_examples,
                         [accuracy_reward, format_reward])
        grpo_eval = evaluate_full(res.model, tok, self.test, a.eval_tokens)
        self.save_model(res.model, tok, "cold_start_grpo")
        # FLOPs of the GRPO phase (2N per forward token, 6N per trained token; rlcore.llm.distill's rules)
        n_params = count_parameters(model)
        prompt_len = float(np.mean([len(tok(_format(e, "r1_zero", tok))["input_ids"]) for e in self.rl_examples[:64]]))
        # what the fast path computes: each prompt once per group (shared_prefix)
        grpo_flops = sum(grpo_step_flops(n_params, a.prompts, a.num_generations, prompt_len, L, shared_prefix=True)
                         for L in res.history["completion_length"])
        # control: the same SFT continued on the same traces for the same FLOPs
        seq_tokens = float(np.mean([int(collate_sft(tok, [p])["attention_mask"].sum()) for p in pairs]))
        sft_step_flops = 6.0 * n_params * seq_tokens * a.sft_batch
        control_steps = max(1, int(round(grpo_flops / sft_step_flops)))
        control, _ = self.fresh_model()
        control.load_state_dict(sft_state)
        ctl_hist = train_sft(control, tok, pairs, self.sft_cfg("cold_start_control", control_steps,
                                                               seed=a.seed + 1))
        control_eval = evaluate_full(control, tok, self.test, a.eval_tokens)
        return {
            "sft_examples": len(pairs), "sft_steps": a.sft_steps,
            "sft_loss": [float(x) for x in sft_hist["loss"]] if sft_hist is not None else None,
            "after_sft": after_sft, "grpo": {**grpo_eval, "curves": curves(res.history),
                                             "samples": samples_from_log(res.config.log_path),
                                             "steps": a.grpo_steps, "flops": grpo_flops},
            "sft_only_control": {**control_eval, "steps": control_steps, "flops": control_steps * sft_step_flops,
                                 "sft_loss": [float(x) for x in ctl_hist["loss"]]},
            "grpo_minus_control": paired_difference(grpo_eval["correct"], control_eval["correct"]),
            "grpo_minus_sft": paired_difference(grpo_eval["correct"], after_sft["correct"]),
        }

    def run_lang_mix(self):
        from rlcore.llm.grpo import train_grpo
        from rlcore.llm.rewards import accuracy_reward, format_reward, language_consistency_reward

        a = self.args
        model, tok, pairs, _ = self.cold_start("lang_mix_sft", mixed=True)
        after_sft = evaluate_full(model, tok, self.test, a.eval_tokens)
        state = copy.deepcopy(model.state_dict())
        out = {"after_sft": after_sft, "lang_weight": a.lang_weight,
               "mixed_trace_example": pairs[1][1]}
        for arm, funcs, weights in (
                ("without_lang_reward", [accuracy_reward, format_reward], [1.0, 1.0]),
                ("with_lang_reward", [accuracy_reward, format_reward, language_consistency_reward],
                 [1.0, 1.0, a.lang_weight])):
            m, _ = self.fresh_model()
            m.load_state_dict(state)
            res = train_grpo(self.grpo_cfg(f"lang_mix_{arm}", a.lang_steps, reward_weights=weights), m, tok,
                             self.rl_examples, funcs)
            out[arm] = {**evaluate_full(res.model, tok, self.test, a.eval_tokens), "curves": curves(res.history),
                        "samples": samples_from_log(res.config.log_path)}
        out["lang_share_difference"] = (out["with_lang_reward"]["language_consistency"]
                                        - out["without_lang_reward"]["language_consistency"])
        out["accuracy_difference"] = paired_difference(out["with_lang_reward"]["correct"],
                                                       out["without_lang_reward"]["correct"])
        return out

    def run_distill_vs_rl(self):
        from rlcore.llm.distill import distill_vs_rl

        a = self.args
        saved = self.load_saved("cold_start_grpo")
        if saved is None:
            raise SystemExit("distill_vs_rl needs the teacher from cold_start: run --runs cold_start first")
        teacher, tok = saved
        student, _ = self.fresh_model()
        evals = {}

        def eval_fn(model, name):
            evals[name] = evaluate_full(model, tok, self.test, a.eval_tokens)
            return {k: evals[name][k] for k in ("heldout_accuracy", "format_rate")}

        out = distill_vs_rl(teacher, student, tok, self.rl_examples[: a.distill_questions], self.test,
                            num_samples=a.distill_samples, template="r1_zero", max_new_tokens=a.max_new_tokens,
                            sft_cfg=self.sft_cfg("distill_student", None, epochs=2, checkpoint_path=None,
                                                 max_steps=None),
                            grpo_cfg=self.grpo_cfg("distill_rl_student", 1, checkpoint_path=None),
                            seed=a.seed, evaluate_fn=eval_fn, fast=True, bf16=True)
        for side in ("distill", "rl"):
            out[side].update({k: v for k, v in evals[side].items()})
        out["distill_minus_rl"] = paired_difference(evals["distill"]["correct"], evals["rl"]["correct"])
        out["note"] = ("teacher = the cold-start SFT + GRPO model of run (b); student = a fresh copy of the same "
                       "instruct model (only one pretrained model ships offline): self-distillation. RL is costed "
                       "with max_new_tokens as an upper bound and gets at most the distillation budget.")
        return out


from rlcore.llm.results import git_commit, run_meta as _run_meta  # noqa: E402

START_COMMIT = git_commit(ROOT)  # the code this process runs: read once at start, not when a run ends


def run_meta(args, argv, wall):
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    return _run_meta(__file__, argv, wall, START_COMMIT, args.smoke, device=device)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.smoke:
        smoke_overrides(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: PyTorch sees no CUDA GPU here; run on the CPU (the default)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    bad = [r for r in runs if r not in RUNS]
    if bad:
        raise SystemExit(f"unknown run(s) {bad}; choose from {', '.join(RUNS)}")
    work = Path(args.work_dir)
    if args.fresh and work.exists():
        import shutil

        shutil.rmtree(work)
    pipe = Pipeline(args)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_json = out_dir / "llm_cpu_runs.json"
    results = json.loads(out_json.read_text()) if out_json.exists() else {"runs": {}}
    settings = {k: v for k, v in vars(args).items() if k not in ("out_dir", "work_dir", "fresh")}
    from rlcore.training import progress

    bar = progress(runs, desc="llm_cpu_runs")
    for name in bar:
        done_file = work / f"{name}.result.json"
        if done_file.exists():
            print(f"[{name}] finished earlier: {done_file} (use --fresh to redo)")
            res = json.loads(done_file.read_text())
        else:
            t0 = time.perf_counter()
            res = getattr(pipe, f"run_{name}")()
            res["meta"] = run_meta(args, argv, time.perf_counter() - t0)
            res["settings"] = settings
            done_file.write_text(json.dumps(res, default=float))
        results["runs"][name] = res
        results.update({"meta": run_meta(args, argv, sum(r["meta"]["wall_s"] for r in results["runs"].values())),
                        "task": f"{args.operands} x {args.digits}-digit addition, R1-Zero template",
                        "contract": "every run records command, git commit, CPU, threads, torch, date, wall time"})
        out_json.write_text(json.dumps(results, indent=1, default=float))
        plot(results["runs"], out_dir / "llm_cpu_runs.png")
        print(f"[{name}] done in {res['meta']['wall_s']:.0f} s -> {out_json}")
    return 0


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    series = []
    r1 = runs.get("r1_zero", {})
    for phase in ("strict", "lenient"):
        if phase in r1:
            series.append((f"(a) R1-Zero, {phase} rewards", r1[phase]["curves"]))
    cs = runs.get("cold_start", {})
    if "grpo" in cs:
        series.append(("(b) cold start + GRPO", cs["grpo"]["curves"]))
    lm = runs.get("lang_mix", {})
    for arm in ("without_lang_reward", "with_lang_reward"):
        if arm in lm:
            series.append((f"(c) mixed cold start, {arm.replace('_', ' ')}", lm[arm]["curves"]))
    panels = [("reward", "training reward"), ("frac_zero_std_groups", "share of groups with no signal"),
              ("completion_length", "completion length (tokens)"), ("reflection_rate", "share with reflection words")]
    for ax, (key, title) in zip(axes.flat, panels):
        for label, c in series:
            if key in c:
                ax.plot(c[key]["step"], c[key]["value"], label=label, lw=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(frameon=False, fontsize=7)
    # held-out accuracy bars with 95 % intervals
    ax = axes.flat[4]
    bars = []
    if r1:
        bars += [("base", r1["base_model"]), ("(a) after", r1["after"])]
    if cs:
        bars += [("(b) SFT", cs["after_sft"]), ("(b) +GRPO", cs["grpo"]), ("(b) SFT ctl", cs["sft_only_control"])]
    dv = runs.get("distill_vs_rl", {})
    if dv:
        bars += [("(d) distill", dv["distill"]), ("(d) RL", dv["rl"])]
    for i, (label, e) in enumerate(bars):
        lo, hi = e["heldout_accuracy_ci95"]
        ax.bar(i, e["heldout_accuracy"], color=f"C{i % 10}")
        ax.errorbar(i, e["heldout_accuracy"], yerr=[[e["heldout_accuracy"] - lo], [hi - e["heldout_accuracy"]]],
                    color="k", capsize=3)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=30, fontsize=8, ha="right")
    ax.set_title("held-out accuracy (greedy, 95 % CI)", fontsize=10)
    ax.set_ylim(0, 1)
    ax = axes.flat[5]
    if lm:
        labels = ["after SFT", "GRPO", "GRPO + lang"]
        evs = [lm["after_sft"], lm.get("without_lang_reward"), lm.get("with_lang_reward")]
        xs = np.arange(3)
        ax.bar(xs - 0.2, [e["language_consistency"] if e else 0 for e in evs], 0.4, label="English share of thinking")
        ax.bar(xs + 0.2, [e["heldout_accuracy"] if e else 0 for e in evs], 0.4, label="accuracy")
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_ylim(0, 1)
        ax.legend(frameon=False, fontsize=8)
    ax.set_title("(c) language consistency", fontsize=10)
    fig.suptitle("R1 in miniature: SmolLM2-135M-Instruct on a 2-core CPU", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
