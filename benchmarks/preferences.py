"""RLHF from preferences on the real SmolLM2-135M-Instruct, on a 2-core CPU: reward model, best-of-n,
RLHF-PPO and DPO, measured against a known gold reward (the over-optimisation curves of Gao et al. 2022,
in miniature).

The task has a programmed truth. Prompts are one-digit additions and subtractions in SmolLM2's chat
template ("What is 7 + 5? Answer briefly."). The gold reward is correctness minus a brevity cost
(:func:`rlcore.llm.preferences.gold_reward`: ``1[correct] - 0.005 * characters``). The reference policy
is the instruct model sampled at temperature ``--temperature``; every "policy" below is a model sampled
at that temperature, and every KL is between such tempered policies.

Stages (each cached under ``--work-dir``; a rerun skips finished stages and resumes training from its
checkpoint; ``--runs`` picks a subset, and a stage that needs an unfinished one runs it first):

``data``          pairs of completions of training prompts sampled from the reference policy, labelled by a
                  Bradley–Terry coin on the gold reward (label noise ``--beta-label``); held-out pairs come
                  from held-out prompts.
``reward_model``  a LoRA reward model on SmolLM2 trained with the Bradley–Terry loss (the proxy). Reported:
                  held-out accuracy against the noisy labels and against the noise-free gold order, split by
                  whether the two completions differ in correctness.
``best_of_n``     n = 1..N samples per held-out prompt from the reference; the proxy picks one. Proxy and
                  gold reward of the pick against the KL bound ``log n - (n-1)/n``; the gold-picked
                  best-of-n is the ceiling.
``ppo``           RLHF-PPO (rlcore.llm.ppo, per-token KL penalty in the reward) optimising the proxy;
                  evaluated along training: proxy, gold and the Monte-Carlo sequence KL from the reference.
``dpo``           DPO on the same pairs (LoRA), evaluated the same way (the proxy of the evaluations is the
                  reward model of ``reward_model``).

Writes ``benchmarks/results/preferences.json`` + ``.png`` (command, commit, machine, date in ``meta``).

    python benchmarks/preferences.py                         # everything, ~45 min on 2 cores
    python benchmarks/preferences.py --runs data,reward_model
    python benchmarks/preferences.py --smoke                 # tiny random model, a minute, temp dirs
"""
from __future__ import annotations

import argparse
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

RUNS = ("data", "reward_model", "best_of_n", "ppo", "dpo")
NEEDS = {"data": (), "reward_model": ("data",), "best_of_n": ("reward_model",), "ppo": ("reward_model",),
         "dpo": ("reward_model",)}  # DPO trains on the pairs; its evaluation scores with the proxy too
SUFFIX = " Answer briefly."


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {RUNS}")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of every policy")
    p.add_argument("--max-new-tokens", type=int, default=40, help="completion budget everywhere")
    p.add_argument("--length-penalty", type=float, default=0.005, help="gold reward: cost per character")
    p.add_argument("--beta-label", type=float, default=0.05, help="rater noise temperature (0: noiseless)")
    p.add_argument("--pairs-per-prompt", type=int, default=4, help="comparisons per training prompt")
    p.add_argument("--train-prompts", type=int, default=96, help="training prompts (pairs: x pairs-per-prompt)")
    p.add_argument("--eval-prompts", type=int, default=32, help="held-out prompts (evaluation and held-out pairs)")
    p.add_argument("--eval-pairs-per-prompt", type=int, default=3)
    p.add_argument("--eval-samples", type=int, default=4, help="samples per held-out prompt per evaluation")
    p.add_argument("--rm-lora", type=int, default=16, help="reward model LoRA rank")
    p.add_argument("--rm-epochs", type=int, default=2)
    p.add_argument("--rm-learning-rate", type=float, default=1e-4)
    p.add_argument("--bon-max", type=int, default=16, help="largest n of best-of-n (a power of 2)")
    p.add_argument("--ppo-evals", default="4,8,16,24", help="PPO iterations at which to evaluate")
    p.add_argument("--ppo-batch-prompts", type=int, default=8)
    p.add_argument("--ppo-generations", type=int, default=2)
    p.add_argument("--ppo-learning-rate", type=float, default=1e-5)
    p.add_argument("--ppo-beta", type=float, default=0.02, help="per-token KL coefficient of RLHF-PPO")
    p.add_argument("--dpo-evals", default="10,20,40,80", help="DPO steps at which to evaluate")
    p.add_argument("--dpo-beta", type=float, default=0.1)
    p.add_argument("--dpo-lora", type=int, default=16)
    p.add_argument("--dpo-learning-rate", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step (reward model and DPO)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=str(Path(os.environ.get("RLCORE_CACHE", Path.home() / ".cache" / "rlcore"))
                                             / "preferences"), help="checkpoints and per-stage results")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--fresh", action="store_true", help="ignore finished stages and checkpoints in --work-dir")
    p.add_argument("--smoke", action="store_true", help="tiny random model, a few steps, temporary directories")
    return p.parse_args(argv)


def smoke_overrides(args):
    args.threads = 1
    args.max_new_tokens, args.train_prompts, args.eval_prompts = 8, 8, 4
    args.pairs_per_prompt, args.eval_pairs_per_prompt, args.eval_samples = 2, 2, 2
    args.rm_epochs, args.rm_learning_rate, args.bon_max = 1, 1e-3, 4
    args.ppo_evals, args.ppo_batch_prompts, args.dpo_evals = "1,2", 2, "1,2"
    args.ppo_learning_rate, args.dpo_learning_rate, args.batch_size = 1e-3, 1e-3, 4
    defaults = parse_args([])
    tmp = tempfile.mkdtemp(prefix="preferences_smoke_")
    if args.work_dir == defaults.work_dir:  # never the real runs' directories, unless asked explicitly
        args.work_dir = os.path.join(tmp, "work")
    if args.out_dir == defaults.out_dir:
        args.out_dir = os.path.join(tmp, "out")


def mean_ci(x) -> dict:
    """Mean and 95 % normal interval."""
    x = np.asarray(x, dtype=float)
    se = x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else float("nan")
    return {"mean": float(x.mean()), "ci95": [float(x.mean() - 1.96 * se), float(x.mean() + 1.96 * se)], "n": len(x)}


def _ints(s: str) -> list[int]:
    return sorted({int(v) for v in s.split(",") if v.strip()})


class Pipeline:
    def __init__(self, args):
        from rlcore.llm.models import load_model, tiny_model
        from rlcore.llm.preferences import ArithmeticGold
        from rlcore.llm.tasks import arithmetic_dataset

        self.args = args
        self.work = Path(args.work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        ops = ("+", "-")
        self.train = arithmetic_dataset(args.train_prompts, digits=1, ops=ops, seed=args.seed)
        self.test = arithmetic_dataset(args.eval_prompts, digits=1, ops=ops, seed=args.seed, split="test")
        assert not {e.prompt for e in self.test} & {e.prompt for e in self.train}
        if args.smoke:
            self.ref, self.tok = tiny_model(seed=args.seed)
        else:
            self.ref, self.tok = load_model("smollm2-135m-instruct")
        self.ref.eval().requires_grad_(False)
        self.question = {}
        for ex in self.train + self.test:  # the text the policy continues: the chat template, applied once
            q, ex.prompt = ex.prompt, self.format(ex.prompt)
            self.question[ex.prompt] = q
        self.gold = ArithmeticGold.from_examples(self.train + self.test, length_penalty=args.length_penalty)
        self.timings: dict[str, float] = {}

    def format(self, question: str) -> str:
        if self.args.smoke:
            return question + " "
        return self.tok.apply_chat_template([{"role": "user", "content": question + SUFFIX}],
                                            add_generation_prompt=True, tokenize=False)

    def fresh_policy(self):
        import copy

        return copy.deepcopy(self.ref).requires_grad_(True).train()

    # ------------------------------------------------------------ stage files
    def path(self, name):
        return self.work / name

    def done(self, stage):
        f = self.path(f"{stage}.result.json")
        return json.loads(f.read_text()) if f.exists() else None

    def finish(self, stage, res):
        self.path(f"{stage}.result.json").write_text(json.dumps(res, default=float))
        return res

    # ------------------------------------------------------------ evaluation of a policy
    @torch.no_grad()
    def evaluate_policy(self, policy, seed: int) -> dict:
        """Sample ``eval_samples`` completions per held-out prompt at the policy temperature (float32 weights,
        so the KL estimate is of the policy itself): proxy and gold reward, and the Monte-Carlo sequence KL
        ``E_y~pi [ log pi(y|x) - log pi_ref(y|x) ]`` from the sampled token ids."""
        from rlcore.llm.fast import generate_fast, token_logprobs_fast

        a = self.args
        policy = getattr(policy, "policy", policy)  # PPO hands back its ValueHead: the LM is .policy
        policy.eval()
        prompts = [ex.prompt for ex in self.test]
        g = torch.Generator().manual_seed(seed)
        ro = generate_fast(policy, self.tok, prompts, num_generations=a.eval_samples, max_new_tokens=a.max_new_tokens,
                           temperature=a.temperature, generator=g)
        args = (ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask)
        lp = token_logprobs_fast(policy, *args, temperature=a.temperature).sum(-1)  # [N]
        lp_ref = token_logprobs_fast(self.ref, *args, temperature=a.temperature).sum(-1)  # [N]
        flat = [p for p in prompts for _ in range(a.eval_samples)]
        proxy = self.rm.score(flat, ro.completions).tolist()
        gold = [self.gold(p, c) for p, c in zip(flat, ro.completions)]
        correct = [float(g + a.length_penalty * len(c) > 0.5) for g, c in zip(gold, ro.completions)]  # undo the cost
        kl = (lp - lp_ref).tolist()
        return {"kl": mean_ci(kl), "proxy": mean_ci(proxy), "gold": mean_ci(gold), "accuracy": mean_ci(correct),
                "length_chars": float(np.mean([len(c) for c in ro.completions])),
                "samples": [{"question": self.question[prompts[i]], "completion": ro.completions[i * a.eval_samples],
                             "gold": gold[i * a.eval_samples], "proxy": proxy[i * a.eval_samples]}
                            for i in range(min(3, len(prompts)))]}

    # ------------------------------------------------------------ stages
    def run_data(self):
        from rlcore.llm.preferences import label_pairs_bradley_terry, sample_preference_pairs

        a = self.args
        g = torch.Generator().manual_seed(a.seed)
        out = {}
        for split, exs, k in (("train", self.train, a.pairs_per_prompt), ("eval", self.test, a.eval_pairs_per_prompt)):
            ps, ca, cb = sample_preference_pairs(self.ref, self.tok, [ex.prompt for ex in exs], n_per_prompt=k,
                                                 max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                                                 generator=g, fast=True)
            pairs = label_pairs_bradley_terry(ps, ca, cb, self.gold, beta_label=a.beta_label,
                                              rng=a.seed + (split == "eval"))
            out[split] = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "meta": p.meta}
                          for p in pairs]
            out[f"{split}_offered"] = len(ps)
        self.path("pairs.json").write_text(json.dumps(out))
        tr = out["train"]
        gold_all = [p["meta"]["gold_chosen"] for p in tr] + [p["meta"]["gold_rejected"] for p in tr]
        return {"train_pairs": len(tr), "eval_pairs": len(out["eval"]), "offered": {k: out[f"{k}_offered"]
                                                                                   for k in ("train", "eval")},
                "reference_gold_mean": float(np.mean(gold_all)),
                "share_labels_agree_with_gold": float(np.mean([p["meta"]["gold_chosen"] >= p["meta"]["gold_rejected"]
                                                               for p in tr])),
                "share_pairs_correctness_differs": float(np.mean([
                    abs(p["meta"]["gold_chosen"] - p["meta"]["gold_rejected"]) > 0.5 for p in tr])),
                "example_pairs": tr[:3]}

    def pairs(self, split):
        from rlcore.llm.preferences import PreferencePair

        d = json.loads(self.path("pairs.json").read_text())
        return [PreferencePair(p["prompt"], p["chosen"], p["rejected"], p["meta"]) for p in d[split]]

    def build_rm(self):
        from rlcore.llm.preferences import RewardModel

        return RewardModel(self.fresh_policy(), self.tok, lora_r=self.args.rm_lora, seed=self.args.seed)

    def run_reward_model(self):
        from rlcore.llm.preferences import RewardModelConfig, train_reward_model

        a = self.args
        train, held = self.pairs("train"), self.pairs("eval")
        rm = self.build_rm()
        ck = self.path("rm.ckpt")
        cfg_steps = a.rm_epochs * math.ceil(len(train) / a.batch_size)  # evaluated four times along the way
        cfg = RewardModelConfig(learning_rate=a.rm_learning_rate, epochs=a.rm_epochs, batch_size=a.batch_size,
                                bf16=not a.smoke, seed=a.seed, eval_every=max(cfg_steps // 4, 1), eval_max_pairs=64,
                                checkpoint_path=str(ck),
                                checkpoint_every=10, log_path=str(self.path("rm.jsonl")), resume=ck.exists(),
                                overwrite=not ck.exists())
        t0 = time.perf_counter()
        hist = train_reward_model(cfg, rm, self.tok, train, eval_pairs=held)
        wall = time.perf_counter() - t0
        torch.save({n: p.detach().cpu() for n, p in rm.named_parameters() if p.requires_grad}, self.path("rm.pt"))
        self.rm = rm
        r_w = rm.score([p.prompt for p in held], [p.chosen for p in held]).numpy()
        r_l = rm.score([p.prompt for p in held], [p.rejected for p in held]).numpy()
        g_w = np.array([p.meta["gold_chosen"] for p in held])
        g_l = np.array([p.meta["gold_rejected"] for p in held])
        vs_label = r_w > r_l
        untied = g_w != g_l
        vs_gold = (r_w > r_l) == (g_w > g_l)
        differs = np.abs(g_w - g_l) > 0.5
        out = {"wall_s": wall, "steps": cfg.total_steps(len(train)),
               "heldout_accuracy_vs_labels": mean_ci(vs_label.astype(float)),
               "heldout_accuracy_vs_gold": mean_ci(vs_gold[untied].astype(float)),
               "heldout_accuracy_vs_gold_correctness_differs": mean_ci(vs_gold[untied & differs].astype(float))
               if (untied & differs).sum() > 1 else None,
               "heldout_accuracy_vs_gold_same_correctness": mean_ci(vs_gold[untied & ~differs].astype(float))
               if (untied & ~differs).sum() > 1 else None,
               "label_accuracy_of_gold_on_heldout": float(np.mean((g_w >= g_l))),
               "curves": {k: {"step": [int(s) for s in hist.steps(k)], "value": [float(v) for v in hist[k]]}
                          for k in ("loss", "accuracy", "eval_accuracy", "train_accuracy") if k in hist}}
        return out

    def load_rm(self):
        rm = self.build_rm()
        state = torch.load(self.path("rm.pt"))
        missing = set(state) - {n for n, _ in rm.named_parameters()}
        assert not missing, missing
        rm.load_state_dict(state, strict=False)
        self.rm = rm.eval()
        return rm

    def run_best_of_n(self):
        from rlcore.llm.dpo import best_of_n_kl
        from rlcore.llm.fast import generate_fast

        a = self.args
        N = a.bon_max
        prompts = [ex.prompt for ex in self.test]
        g = torch.Generator().manual_seed(a.seed + 7)
        t0 = time.perf_counter()
        ro = generate_fast(self.ref, self.tok, prompts, num_generations=N, max_new_tokens=a.max_new_tokens,
                           temperature=a.temperature, generator=g)
        flat = [p for p in prompts for _ in range(N)]
        proxy = self.rm.score(flat, ro.completions).numpy().reshape(len(prompts), N)
        gold = np.array([self.gold(p, c) for p, c in zip(flat, ro.completions)]).reshape(len(prompts), N)
        wall = time.perf_counter() - t0
        rows = []
        n = 1
        while n <= N:
            # disjoint groups of n samples per prompt: every sample is used once at each n
            pg = proxy.reshape(len(prompts), N // n, n)
            gg = gold.reshape(len(prompts), N // n, n)
            pick = pg.argmax(-1)
            sel_proxy = np.take_along_axis(pg, pick[..., None], -1)[..., 0]
            sel_gold = np.take_along_axis(gg, pick[..., None], -1)[..., 0]
            rows.append({"n": n, "kl_bound": best_of_n_kl(n), "proxy": mean_ci(sel_proxy.ravel()),
                         "gold": mean_ci(sel_gold.ravel()), "gold_if_gold_picks": mean_ci(gg.max(-1).ravel())})
            n *= 2
        return {"wall_s": wall, "samples_per_prompt": N, "prompts": len(prompts), "curve": rows}

    def _segments(self, stage, targets, train_to):
        """Train to each target step in turn (resuming from the checkpoint), evaluating after each; evaluations
        already recorded in ``<stage>.evals.json`` are kept, so an interrupted stage continues where it was."""
        f = self.path(f"{stage}.evals.json")
        evals = json.loads(f.read_text()) if f.exists() else []
        done_steps = {e["step"] for e in evals}
        policy = None
        for target in targets:
            if target in done_steps:
                continue
            t0 = time.perf_counter()
            policy = train_to(target, policy)
            train_s = time.perf_counter() - t0
            ev = self.evaluate_policy(policy, seed=self.args.seed + 1000 + target)
            prev = max([e["train_s_cumulative"] for e in evals if e["step"] < target], default=0.0)
            evals.append({"step": target, "train_s_cumulative": prev + train_s, **ev})
            evals.sort(key=lambda e: e["step"])
            f.write_text(json.dumps(evals, default=float))
            print(f"[{stage}] step {target}: KL {ev['kl']['mean']:.2f}  proxy {ev['proxy']['mean']:.3f}  "
                  f"gold {ev['gold']['mean']:.3f}  acc {ev['accuracy']['mean']:.2f}  len {ev['length_chars']:.0f}",
                  flush=True)
        return evals

    def reference_eval(self):
        f = self.path("reference.eval.json")
        if f.exists():
            return json.loads(f.read_text())
        ev = self.evaluate_policy(self.ref, seed=self.args.seed + 1000)
        f.write_text(json.dumps(ev, default=float))
        return ev

    def run_ppo(self):
        from rlcore.llm.ppo import PPOLMConfig, train_ppo_lm

        a = self.args
        ck = self.path("ppo.ckpt")
        reward_fn = self.rm.as_reward_function()
        reward_fn.__name__ = "reward_model"

        def train_to(target, policy):
            resume = ck.exists()
            cfg = PPOLMConfig(total_steps=target, batch_prompts=a.ppo_batch_prompts, num_generations=a.ppo_generations,
                              max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                              learning_rate=a.ppo_learning_rate, beta=a.ppo_beta, template=None, seed=a.seed,
                              log_path=str(self.path("ppo.jsonl")), checkpoint_path=str(ck), resume=resume,
                              overwrite=not resume)
            res = train_ppo_lm(cfg, policy if policy is not None else self.fresh_policy(), self.tok, self.train,
                               [reward_fn], ref_model=self.ref)
            return res.model
        evals = self._segments("ppo", _ints(a.ppo_evals), lambda t, p: train_to(t, p))
        return {"reference": self.reference_eval(), "evals": evals, "beta": a.ppo_beta,
                "reward_model_train_s": self.done("reward_model")["wall_s"]}

    def run_dpo(self):
        from rlcore.llm.dpo import DPOConfig, train_dpo

        a = self.args
        ck = self.path("dpo.ckpt")
        train, held = self.pairs("train"), self.pairs("eval")
        hist_box = {}

        def train_to(target, policy):
            resume = ck.exists()
            cfg = DPOConfig(max_steps=target, batch_size=a.batch_size, learning_rate=a.dpo_learning_rate,
                            beta=a.dpo_beta, lora_r=a.dpo_lora, temperature=a.temperature, bf16=not a.smoke,
                            seed=a.seed, eval_max_pairs=16, log_path=str(self.path("dpo.jsonl")),
                            checkpoint_path=str(ck), resume=resume, overwrite=not resume)
            model = policy if policy is not None else self.fresh_policy()
            hist_box["h"] = train_dpo(cfg, model, self.ref, self.tok, train, eval_pairs=held)
            return model
        evals = self._segments("dpo", _ints(a.dpo_evals), train_to)
        return {"reference": self.reference_eval(), "evals": evals, "beta": a.dpo_beta,
                "heldout_implicit_reward_accuracy": (float(hist_box["h"]["eval_reward_accuracy"][-1])
                                                     if hist_box.get("h") and "eval_reward_accuracy" in hist_box["h"]
                                                     else None)}


from rlcore.llm.results import git_commit, run_meta as _run_meta  # noqa: E402

START_COMMIT = git_commit(ROOT)


def run_meta(args, argv, wall):
    return _run_meta(__file__, argv, wall, START_COMMIT, args.smoke)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.bon_max < 1 or args.bon_max & (args.bon_max - 1):
        raise SystemExit(f"--bon-max must be a power of 2, got {args.bon_max}")
    if args.smoke:
        smoke_overrides(args)
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
    out_json = out_dir / "preferences.json"
    results = json.loads(out_json.read_text()) if out_json.exists() else {"runs": {}}
    settings = {k: v for k, v in vars(args).items() if k not in ("out_dir", "work_dir", "fresh", "runs")}

    order = []

    def want(stage):
        for dep in NEEDS[stage]:
            if pipe.done(dep) is None:
                want(dep)
        if stage not in order:
            order.append(stage)
    for r in RUNS:
        if r in runs:
            want(r)
    for name in order:
        res = pipe.done(name)
        if res is not None:
            print(f"[{name}] finished earlier (use --fresh to redo)")
        else:
            if name in ("best_of_n", "ppo", "dpo") and not hasattr(pipe, "rm"):
                pipe.load_rm()
            t0 = time.perf_counter()
            res = getattr(pipe, f"run_{name}")()
            res["meta"] = run_meta(args, argv, time.perf_counter() - t0)
            res["settings"] = settings
            pipe.finish(name, res)
            print(f"[{name}] done in {res['meta']['wall_s']:.0f} s", flush=True)
        if name == "reward_model" and not hasattr(pipe, "rm"):
            pipe.load_rm()
        results["runs"][name] = res
        results.update({"meta": run_meta(args, argv, sum(r["meta"]["wall_s"] for r in results["runs"].values())),
                        "task": "1-digit addition/subtraction, SmolLM2 chat template; gold = correct - "
                                f"{args.length_penalty} x characters",
                        "contract": "every stage records command, git commit, CPU, threads, torch, date, wall time"})
        out_json.write_text(json.dumps(results, indent=1, default=float))
        plot(results["runs"], out_dir / "preferences.png")
    print(f"-> {out_json}")
    return 0


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    ax = axes[0]
    rm = runs.get("reward_model")
    if rm:
        bars = [("vs labels", rm["heldout_accuracy_vs_labels"]), ("vs gold", rm["heldout_accuracy_vs_gold"]),
                ("gold: correctness\ndiffers", rm.get("heldout_accuracy_vs_gold_correctness_differs")),
                ("gold: same\ncorrectness", rm.get("heldout_accuracy_vs_gold_same_correctness"))]
        bars = [(k, v) for k, v in bars if v]
        for i, (k, v) in enumerate(bars):
            ax.bar(i, v["mean"], color=f"C{i}")
            ax.errorbar(i, v["mean"], yerr=[[v["mean"] - v["ci95"][0]], [v["ci95"][1] - v["mean"]]], color="k",
                        capsize=3)
        ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
        ax.axhline(0.5, color="grey", ls=":", lw=1)
        ax.set_ylim(0, 1)
    ax.set_title("reward model: held-out pair accuracy (95 % CI)", fontsize=10)

    def curve(key):
        out = []
        bon = runs.get("best_of_n")
        if bon:
            out.append(("best-of-n (proxy picks)", [r["kl_bound"] for r in bon["curve"]],
                        [r[key] for r in bon["curve"]], "o-", "C0"))
            if key == "gold":
                out.append(("best-of-n (gold picks)", [r["kl_bound"] for r in bon["curve"]],
                            [r["gold_if_gold_picks"] for r in bon["curve"]], "o:", "C7"))
        for name, label, color in (("ppo", "RLHF-PPO", "C3"), ("dpo", "DPO", "C1")):
            r = runs.get(name)
            if r:
                evs = [dict(r["reference"], step=0)] + r["evals"]
                out.append((label, [max(e["kl"]["mean"], 0.0) if "kl" in e else 0.0 for e in evs],
                            [e[key] for e in evs], "s-", color))
        return out

    for ax, key, title in ((axes[1], "proxy", "proxy reward (reward model)"), (axes[2], "gold", "gold reward")):
        for label, xs, ys, st, color in curve(key):  # one colour per method in every panel
            m = [y["mean"] for y in ys]
            lo = [y["ci95"][0] for y in ys]
            hi = [y["ci95"][1] for y in ys]
            ax.plot(xs, m, st, label=label, ms=4, color=color)
            ax.fill_between(xs, lo, hi, alpha=0.15, color=color)
        ax.set_xlabel("KL(pi || pi_ref) (nats; best-of-n: the bound log n - (n-1)/n)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].legend(frameon=False, fontsize=8)
    axes[2].legend(frameon=False, fontsize=8)
    ax = axes[3]
    for name, label, color in (("ppo", "RLHF-PPO (+ reward model training)", "C3"), ("dpo", "DPO", "C1")):
        r = runs.get(name)
        if r:
            off = r.get("reward_model_train_s", 0.0)
            xs = [off / 60] + [(off + e["train_s_cumulative"]) / 60 for e in r["evals"]]
            ys = [r["reference"]["gold"]] + [e["gold"] for e in r["evals"]]
            ax.errorbar(xs, [y["mean"] for y in ys], yerr=[[y["mean"] - y["ci95"][0] for y in ys],
                                                            [y["ci95"][1] - y["mean"] for y in ys]],
                        fmt="s-", capsize=3, label=label, ms=4, color=color)
    ax.set_xlabel("training time on this CPU (min)")
    ax.set_title("gold reward at equal compute", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle("RLHF from preferences: SmolLM2-135M-Instruct on a 2-core CPU (proxy vs gold)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
