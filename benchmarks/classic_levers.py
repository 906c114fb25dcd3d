"""Where the classic algorithms' time goes, one lever at a time, before and after, in one run.

    python benchmarks/classic_levers.py            # PPO CartPole 3 seeds x 20k steps per variant, DQN 2 x 10k
    python benchmarks/classic_levers.py --smoke    # tiny budgets, a few seconds (tests)

Levers (issue "Speed of the classic half"):

* ``fused_adam``: ``torch.optim.Adam(fused=True)`` (one kernel per step) instead of the default per-parameter
  ``foreach`` path; on by default in every rlcore algorithm (:func:`rlcore.algos.fused_adam`);
* ``unvalidated``: ``Categorical``/``Normal`` built with ``validate_args=False`` in :mod:`rlcore.networks`
  (the argument checks cost about as much as these tiny networks); on by default;
* ``vector_env``: one step of 8 CartPoles through a ``SyncVectorEnv`` with episode statistics (what rlcore
  uses) against Gymnasium's NumPy-vectorised ``CartPoleVectorEnv`` (``gym.make_vec(...,
  vectorization_mode="vector_entry_point")``), microseconds per vector step of random actions. Measured, not
  adopted: see the README.

Each PPO/DQN variant trains the same seeds and budget; variants are interleaved seed by seed so that a change in
machine load hits all of them alike. Times are wall seconds of ``train`` (the first, untimed run imports torch's
optimizer machinery). ``before`` is both levers off, ``after`` both on. Writes
``benchmarks/results/classic_levers.json`` (``--out``) with the command, commit, machine and load average.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # classic_control, also when imported from tests

from classic_control import machine_info  # noqa: E402  (CPU, cores, load average, library versions)

VARIANTS = {"before": (False, False), "fused_adam": (True, False), "unvalidated": (False, True), "after": (True, True)}


def configure(fused: bool, unvalidated: bool) -> None:
    """Switch the two levers for every algorithm module (the defaults are both on)."""
    import torch.distributions as D

    import rlcore.networks as networks
    from rlcore.algos import dqn, fused_adam, ppo

    for m in (ppo, dqn):
        m.fused_adam = fused_adam if fused else (lambda device: {})
    networks.Categorical = ((lambda **kw: D.Categorical(**{**kw, "validate_args": False})) if unvalidated
                            else (lambda **kw: D.Categorical(**{**kw, "validate_args": True})))


def time_training(algo: str, seed: int, steps: int) -> tuple[float, float]:
    """Wall seconds of one run and its last episode return (a check that variants train the same task)."""
    from rlcore.algos import dqn, ppo

    if algo == "ppo":
        cfg, train = ppo.PPOConfig(seed=seed, total_timesteps=steps), ppo.train
    else:
        cfg, train = dqn.DQNConfig(seed=seed, total_timesteps=steps, eval_every=0), dqn.train
    t = time.perf_counter()
    res = train(cfg, progress=False)
    return time.perf_counter() - t, float(res.history["episode_return"][-1])


def env_step_cost(n_steps: int, num_envs: int = 8) -> dict:
    """Microseconds per vector step: rlcore's SyncVectorEnv vs Gymnasium's vectorised CartPole."""
    import gymnasium as gym

    from rlcore.envs import make_vector_env

    makers = {"sync_vector_env": lambda: make_vector_env("CartPole-v1", num_envs, seed=0),
              "cartpole_vector_env": lambda: gym.wrappers.vector.RecordEpisodeStatistics(
                  gym.make_vec("CartPole-v1", num_envs, vectorization_mode="vector_entry_point"))}
    actions = np.random.default_rng(0).integers(0, 2, (n_steps, num_envs))
    out = {}
    for rep in range(3):  # interleaved repeats; the median is reported
        for name, make in makers.items():
            envs = make()
            envs.reset(seed=0)
            t = time.perf_counter()
            for a in actions:
                envs.step(a)
            out.setdefault(name, []).append((time.perf_counter() - t) / n_steps * 1e6)
            envs.close()
    return {k: round(float(np.median(v)), 1) for k, v in out.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny budgets (a few seconds)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/classic_levers.json"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    ppo_steps, ppo_seeds, dqn_steps, dqn_seeds, env_steps = ((2048, (1,), 500, (1,), 200) if args.smoke
                                                             else (20 * 1024, (1, 2, 3), 10_000, (1, 2), 20_000))
    data = {"command": "python " + shlex.join([os.path.relpath(__file__, ROOT)] + (argv or sys.argv[1:])),
            "machine": machine_info(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "smoke": args.smoke, "variants": {k: {"fused_adam": f, "unvalidated_distributions": u}
                                              for k, (f, u) in VARIANTS.items()}}
    try:
        from rlcore.llm.results import git_commit
        data["git_commit"] = git_commit(ROOT)
    except ImportError:
        data["git_commit"] = None
    configure(True, True)
    time_training("ppo", 0, 1024)  # warm-up: torch imports its optimizer machinery on first use
    t0 = time.perf_counter()
    for algo, steps, seeds, variants in (("ppo", ppo_steps, ppo_seeds, list(VARIANTS)),
                                         ("dqn", dqn_steps, dqn_seeds, ["before", "fused_adam"])):
        runs = {v: [] for v in variants}
        for seed in seeds:
            for v in variants:
                configure(*VARIANTS[v])
                runs[v].append(time_training(algo, seed, steps))
                print(f"{algo} {v:12s} seed {seed}: {runs[v][-1][0]:.2f} s", flush=True)
        med = {v: float(np.median([s for s, _ in r])) for v, r in runs.items()}
        data[algo] = {"steps": steps, "seeds": list(seeds),
                      "seconds": {v: [round(s, 3) for s, _ in r] for v, r in runs.items()},
                      "median_seconds": {v: round(m, 3) for v, m in med.items()},
                      "speedup_vs_before": {v: round(med["before"] / m, 3) for v, m in med.items()},
                      "last_episode_return": {v: [round(x, 1) for _, x in r] for v, r in runs.items()}}
    configure(True, True)
    data["env_step_us"] = {"num_envs": 8, "steps": env_steps, **env_step_cost(env_steps)}
    data["wall_seconds"] = round(time.perf_counter() - t0, 1)
    data["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    for algo in ("ppo", "dqn"):
        d = data[algo]
        print(f"{algo}: " + ", ".join(f"{v} {d['median_seconds'][v]:.2f} s ({d['speedup_vs_before'][v]:.2f}x)"
                                      for v in d["median_seconds"]))
    e = data["env_step_us"]
    print(f"env step (8 CartPoles): SyncVectorEnv {e['sync_vector_env']} us, CartPoleVectorEnv "
          f"{e['cartpole_vector_env']} us")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
