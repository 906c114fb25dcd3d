"""Several seeds: a serial loop against ``rlcore.parallel.train_many`` (one process per core).

    python benchmarks/multi_seed.py            # PPO CartPole 4 seeds x 20k steps, DQN CartPole 2 seeds x 10k steps
    python benchmarks/multi_seed.py --smoke    # tiny budgets, a few seconds

Per workload: the wall time of ``[train(cfg, progress=False) for cfg in configs]`` in this process and of
``train_many(train, configs, progress=False)``, their ratio, and a check that both return the same episode returns.
Both sides start warm: a first, tiny ``train_many`` call starts the fork server (its time is recorded as
``pool_start_s``: a notebook pays it once per kernel) and a tiny serial run imports torch's optimizer machinery.
Writes ``benchmarks/results/multi_seed.json`` (``--out``) with the command, commit, machine and load average.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classic_control import machine_info  # noqa: E402  (the classic benchmarks' metadata: CPU, cores, load, versions)
from rlcore.algos import dqn, ppo  # noqa: E402
from rlcore.llm.results import git_commit  # noqa: E402
from rlcore.parallel import default_processes, train_many  # noqa: E402


def workloads(smoke: bool) -> dict:
    ppo_steps, dqn_steps = (2048, 1000) if smoke else (20 * 1024, 10_000)
    return {
        f"PPO CartPole-v1, 4 seeds x {ppo_steps} steps": (ppo.train, [ppo.PPOConfig(seed=s, total_timesteps=ppo_steps)
                                                                      for s in (1, 2, 3, 4)]),
        f"DQN CartPole-v1, 2 seeds x {dqn_steps} steps": (dqn.train, [dqn.DQNConfig(seed=s, total_timesteps=dqn_steps)
                                                                      for s in (1, 2)]),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny budgets (a check that the script runs)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "multi_seed.json"))
    args = parser.parse_args(argv)

    info = machine_info()  # records the 1-min load average at start, with a note when it is above 1
    info["processes"] = default_processes(10**6)
    t = time.perf_counter()
    train_many(ppo.train, [ppo.PPOConfig(seed=s, total_timesteps=512, num_steps=64) for s in (1, 2)], progress=False)
    pool_start = time.perf_counter() - t
    ppo.train(ppo.PPOConfig(total_timesteps=512, num_steps=64), progress=False)  # warm up the serial side too
    dqn.train(dqn.DQNConfig(total_timesteps=200, learning_starts=100), progress=False)

    rows = []
    for name, (train, configs) in workloads(args.smoke).items():
        t = time.perf_counter()
        serial = [train(cfg, progress=False) for cfg in configs]
        serial_s = time.perf_counter() - t
        t = time.perf_counter()
        parallel = train_many(train, configs, progress=False)
        parallel_s = time.perf_counter() - t
        same = all(np.array_equal(a.history["episode_return"], b.history["episode_return"])
                   for a, b in zip(serial, parallel))
        rows.append({"workload": name, "runs": len(configs), "serial_s": round(serial_s, 2),
                     "train_many_s": round(parallel_s, 2), "speedup": round(serial_s / parallel_s, 2),
                     "same_episode_returns": same, "loadavg_after": round(os.getloadavg()[0], 2)})
        print(f"{name}: serial {serial_s:.1f} s, train_many {parallel_s:.1f} s, speed-up {serial_s / parallel_s:.2f}x "
              f"(same returns: {same}; 1-min load average now {os.getloadavg()[0]:.2f})", flush=True)
        assert same, f"{name}: train_many's episode returns differ from the serial loop's"

    result = {"command": "python " + shlex.join(["benchmarks/multi_seed.py", *(argv if argv is not None else sys.argv[1:])]),
              "git_commit": git_commit(ROOT), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": info, "pool_start_s": round(pool_start, 2), "smoke": args.smoke, "results": rows}
    if not args.smoke or args.out != parser.get_default("out"):
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
