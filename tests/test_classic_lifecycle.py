"""The run lifecycle of the classic trainers (DQN, REINFORCE, PPO, TRPO, GRPO-control) and of the CLI.

* a run interrupted by Ctrl-C (SIGINT) or SIGTERM and resumed equals the uninterrupted run, in its weights
  and row for row in its JSONL log, however often it is interrupted; a run killed without warning
  (rows after its last checkpoint, a torn last line) too;
* ``kill -9`` during checkpoint writes, repeated, never leaves an unloadable checkpoint, and the
  orphaned temporary files are removed by the next start;
* schedules (PPO's annealed learning rate, DQN's epsilon) continue from their checkpoint value when
  a run is extended;
* ``max_grad_norm = 0`` means "no clipping" in every algorithm;
* bad inputs (API and CLI) give one clear message naming the problem and the fix: CLI exit code 2, no traceback;
* ``python -m rlcore eval`` on tiny trained runs (PPO, DQN), with a video.

Budgets are tiny: the whole file runs in well under a minute on 2 cores.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlcore.algos import dqn, grpo_control, ppo, reinforce, trpo
from rlcore.cli import main
from rlcore.lifecycle import CheckpointError, RunExistsError, TrainingInterrupted
from rlcore.training import History, load_checkpoint, read_jsonl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------- tiny configs, one per algorithm
def _dqn(**kw):
    base = dict(seed=5, total_timesteps=1200, eval_every=400, eval_episodes=2, learning_starts=200, train_frequency=4,
                gradient_steps=1, buffer_size=1000, batch_size=32, target_network_frequency=100, hidden=(32, 32),
                checkpoint_every=10_000)
    return dqn.DQNConfig(**{**base, **kw})


def _reinforce(**kw):
    base = dict(seed=4, total_timesteps=1500, episodes_per_update=4, hidden=(16, 16), eval_every=700, eval_episodes=2,
                checkpoint_every=10_000)
    return reinforce.ReinforceConfig(**{**base, **kw})


def _ppo(**kw):
    base = dict(env_id="CartPole-v1", seed=0, total_timesteps=6 * 256, num_envs=2, num_steps=128, update_epochs=2,
                num_minibatches=2, hidden=(32, 32), checkpoint_every=10_000)
    return ppo.PPOConfig(**{**base, **kw})


def _trpo(**kw):
    base = dict(env_id="CartPole-v1", seed=0, total_timesteps=6 * 256, num_envs=2, num_steps=128, vf_epochs=2,
                vf_minibatches=2, hidden=(32, 32), normalize_obs=True, checkpoint_every=10_000)
    return trpo.TRPOConfig(**{**base, **kw})


def _grpo(**kw):
    base = dict(env_id="CartPole-v1", seed=0, total_timesteps=1500, group_size=4, num_groups=2, update_epochs=2,
                num_minibatches=2, hidden=(32, 32), checkpoint_every=10_000)
    return grpo_control.GRPOControlConfig(**{**base, **kw})


ALGOS = {"dqn": (dqn, _dqn), "reinforce": (reinforce, _reinforce), "ppo": (ppo, _ppo), "trpo": (trpo, _trpo),
         "grpo": (grpo_control, _grpo)}


def rows(path) -> list[dict]:
    """The JSONL log without wall-clock fields (those differ between identical runs)."""
    return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in read_jsonl(path)]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


class SignalAt:
    """Deliver ``signum`` to this process (as Ctrl-C / ``kill`` would) the first time a metric is logged at or
    after env step ``step``: mid-iteration, so the trainer must finish the iteration, save and stop."""

    def __init__(self, monkeypatch, step: int, signum=signal.SIGINT):
        self.sent = None
        real = History.log

        def log(history, at, **metrics):
            real(history, at, **metrics)
            if self.sent is None and at >= step:
                self.sent = at
                os.kill(os.getpid(), signum)

        monkeypatch.setattr(History, "log", log)


# --------------------------------------------------------------------- 1. interrupted + resumed == uninterrupted
@pytest.mark.parametrize("name, stops", [("dqn", [500]), ("reinforce", [500]), ("ppo", [300, 800]), ("trpo", [600]),
                                         ("grpo", [400, 900])])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, monkeypatch, name, stops):
    module, make = ALGOS[name]
    full = module.train(make(log_path=str(tmp_path / "a.jsonl")), progress=False)
    cfg = make(log_path=str(tmp_path / "b.jsonl"), checkpoint_path=str(tmp_path / "b" / "checkpoint.pt"))
    resume = False
    sigint_before = signal.getsignal(signal.SIGINT)
    for i, step in enumerate(stops):  # interrupted once or twice, resumed each time
        with monkeypatch.context() as m:
            hook = SignalAt(m, step, signal.SIGINT if i == 0 else signal.SIGTERM)
            with pytest.raises(TrainingInterrupted) as info:
                module.train(cfg, resume=resume, progress=False)
        assert hook.sent is not None and info.value.checkpoint_path == cfg.checkpoint_path
        assert load_checkpoint(cfg.checkpoint_path)["global_step"] == info.value.step < full.env_steps
        assert "--resume" in str(info.value) and ("SIGINT" if i == 0 else "SIGTERM") in str(info.value)
        assert signal.getsignal(signal.SIGINT) is sigint_before  # handlers restored (SIG_IGN in a background job)
        resume = True
    resumed = module.train(cfg, resume=True, progress=False)
    assert resumed.env_steps == full.env_steps
    assert_same_weights(resumed.agent, full.agent)
    assert rows(tmp_path / "b.jsonl") == rows(tmp_path / "a.jsonl")  # every step exactly once
    steps = [r["step"] for r in read_jsonl(tmp_path / "b.jsonl")]
    assert steps == sorted(steps)


@pytest.mark.parametrize("name", ["ppo", "dqn"])
def test_killed_run_resumes_from_last_checkpoint_with_a_clean_log(tmp_path, monkeypatch, name):
    """A process killed without warning (no graceful save) leaves log rows after its last checkpoint and maybe a
    torn last line: the resumed run drops them and its log equals the uninterrupted run's."""
    module, make = ALGOS[name]
    full = module.train(make(log_path=str(tmp_path / "a.jsonl")), progress=False)
    cfg = make(log_path=str(tmp_path / "b.jsonl"), checkpoint_path=str(tmp_path / "ck.pt"), checkpoint_every=512)
    real = History.log

    def die(history, at, **metrics):
        real(history, at, **metrics)
        if at > 900:
            raise SystemExit("killed")  # no checkpoint is written on the way out

    monkeypatch.setattr(History, "log", die)
    with pytest.raises(SystemExit):
        module.train(cfg, progress=False)
    monkeypatch.undo()
    ck_step = load_checkpoint(cfg.checkpoint_path)["global_step"]
    assert 512 <= ck_step < 900 and max(r["step"] for r in read_jsonl(cfg.log_path)) > ck_step
    with open(cfg.log_path, "a") as fh:
        fh.write('{"step": 99999, "episode_ret')  # torn by the kill
    resumed = module.train(cfg, resume=True, progress=False)
    assert_same_weights(resumed.agent, full.agent)
    assert rows(tmp_path / "b.jsonl") == rows(tmp_path / "a.jsonl")


# --------------------------------------------------------------------- 2. kill -9 while checkpoints are written
KILL_SCRIPT = textwrap.dedent("""
    import json, os, random, signal, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from rlcore.lifecycle import load_run_checkpoint, prepare_run
    from rlcore.training import save_checkpoint

    path = Path(sys.argv[1])
    state = {"algo": "ppo", "config": {"env_id": "CartPole-v1"}, "w": torch.arange(4_000_000, dtype=torch.float32)}
    save_checkpoint(path, state)
    rng, rounds, orphans_seen = random.Random(0), int(sys.argv[2]), 0
    for i in range(rounds):
        pid = os.fork()
        if pid == 0:  # the child saves the 16 MB checkpoint again and again until it is killed
            while True:
                save_checkpoint(path, state)
        time.sleep(rng.uniform(0.01, 0.12))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        orphans_seen += len(list(path.parent.glob(".checkpoint.pt.*.tmp")))
        loaded = load_run_checkpoint(path, algo="ppo", env_id="CartPole-v1", required=["w"])
        assert torch.equal(loaded["w"], state["w"]), i
    prepare_run(path, None, resume=True)
    left = sorted(p.name for p in path.parent.iterdir())
    print(json.dumps({"rounds": rounds, "orphans_seen": orphans_seen, "left": left}))
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kill_9_during_checkpoint_writes_never_leaves_a_bad_checkpoint(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "checkpoint.pt"), "12"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["rounds"] == 12
    assert out["orphans_seen"] >= 1, out  # some kills did land mid-write ...
    assert out["left"] == ["checkpoint.pt"]  # ... and prepare_run removed what they left


# --------------------------------------------------------------------- 3. schedules when a run is extended
def test_dqn_epsilon_continues_from_its_checkpoint_value_when_extended(tmp_path, monkeypatch):
    cfg = _dqn(total_timesteps=1000, exploration_fraction=0.5, eval_every=0, checkpoint_path=str(tmp_path / "ck.pt"))
    with monkeypatch.context() as m:
        SignalAt(m, 300)
        with pytest.raises(TrainingInterrupted) as info:
            dqn.train(cfg, progress=False)
    k = info.value.step
    eps_k = dqn.linear_schedule(1.0, 0.04, 500, k)
    r = dqn.train(dataclasses.replace(cfg, total_timesteps=2000), resume=True, progress=False)
    assert r.env_steps == 2000
    sched = load_checkpoint(cfg.checkpoint_path)["epsilon_schedule"]
    assert sched == {"start_step": k, "start_e": eps_k, "end_step": 1000.0}
    steps, eps = r.history.steps("epsilon"), r.history["epsilon"]
    expected = [dqn.linear_schedule(1.0, 0.04, 500, s - 1) if s <= k else
                dqn.linear_schedule(eps_k, 0.04, 1000 - k, s - 1 - k) for s in steps]
    np.testing.assert_allclose(eps, expected, rtol=0, atol=1e-12)
    assert np.all(np.diff(eps) <= 1e-12)  # never jumps back up
    # an unchanged total keeps the stored schedule (the resumed run is the uninterrupted one)
    assert dqn.train(dataclasses.replace(cfg, total_timesteps=2000), resume=True, progress=False).env_steps == 2000
    assert load_checkpoint(cfg.checkpoint_path)["epsilon_schedule"] == sched


def test_run_length_is_rounded_up_with_a_notice(capsys):
    r = ppo.train(_ppo(total_timesteps=1000, update_epochs=1), progress=False)
    assert r.env_steps == 1024
    assert "rounded up to 4 x 256 = 1024" in capsys.readouterr().err
    ppo.train(_ppo(total_timesteps=512, update_epochs=1), progress=False)
    assert "rounded" not in capsys.readouterr().err
    assert dqn.train(_dqn(total_timesteps=301, num_envs=2, eval_every=0), progress=False).env_steps == 302


# --------------------------------------------------------------------- 4. max_grad_norm: None / 0 = off, everywhere
@pytest.mark.parametrize("name", list(ALGOS))
def test_max_grad_norm_zero_means_no_clipping(name):
    module, make = ALGOS[name]
    small = dict(total_timesteps=512) if name in ("ppo", "trpo") else dict(total_timesteps=400)
    if name == "dqn":
        small.update(eval_every=0)
    if name == "reinforce":
        small.update(eval_every=0)
    off = module.train(make(max_grad_norm=0, **small), progress=False)
    none = module.train(make(max_grad_norm=None, **small), progress=False)
    assert_same_weights(off.agent, none.agent)
    with pytest.raises(ValueError, match="max_grad_norm must be None or 0 .*positive number"):
        module.train(make(max_grad_norm=-1.0, **small), progress=False)


# --------------------------------------------------------------------- 5. bad inputs: the API
class ImageObsEnv(gym.Env):
    observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 1.0, False, False, {}


class DictObsEnv(ImageObsEnv):
    observation_space = gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (2,)), "goal": gym.spaces.Box(-1, 1, (2,))})


for _id, _cls in (("RlcoreTestImageObs-v0", ImageObsEnv), ("RlcoreTestDictObs-v0", DictObsEnv)):
    if _id not in gym.envs.registry:
        gym.register(_id, entry_point=_cls, max_episode_steps=20)


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    """A tiny finished PPO run (CartPole, checkpoint + log) to point bad inputs at."""
    d = tmp_path_factory.mktemp("ppo_run")
    cfg = _ppo(total_timesteps=512, update_epochs=1, checkpoint_path=str(d / "checkpoint.pt"),
               log_path=str(d / "history.jsonl"))
    ppo.train(cfg, progress=False)
    return cfg


API_CASES = [
    # (id, algorithm, config overrides, train kwargs, exception, message)
    ("resume-without-checkpoint", "dqn", {}, dict(resume=True), FileNotFoundError, "cannot resume: no checkpoint"),
    ("resume-without-checkpoint", "reinforce", {}, dict(resume=True), FileNotFoundError, "cannot resume: no checkpoint"),
    ("resume-without-checkpoint", "ppo", {}, dict(resume=True), FileNotFoundError, "cannot resume: no checkpoint"),
    ("resume-without-checkpoint", "trpo", {}, dict(resume=True), FileNotFoundError, "cannot resume: no checkpoint"),
    ("resume-without-checkpoint", "grpo", {}, dict(resume=True), FileNotFoundError, "cannot resume: no checkpoint"),
    ("resume-and-overwrite", "ppo", {}, dict(resume=True, overwrite=True), ValueError, "contradict each other; choose one"),
    ("image-observations", "ppo", dict(env_id="RlcoreTestImageObs-v0"), {}, ValueError,
     "PPO supports flat Box observations.*FlattenObservation"),
    ("image-observations", "dqn", dict(env_id="RlcoreTestImageObs-v0"), {}, ValueError,
     "DQN supports flat Box observations"),
    ("dict-observations", "trpo", dict(env_id="RlcoreTestDictObs-v0"), {}, ValueError,
     "TRPO supports flat Box observations.*Dict"),
    ("dict-observations", "reinforce", dict(env_id="RlcoreTestDictObs-v0"), {}, ValueError,
     "REINFORCE supports flat Box observations"),
    ("discrete-observations", "grpo", dict(env_id="FrozenLake-v1"), {}, ValueError,
     "GRPO supports flat Box observations.*Discrete"),
    ("empty-hidden", "ppo", dict(hidden=()), {}, ValueError, "hidden is empty.*linear.*hidden=64,64"),
    ("empty-hidden", "dqn", dict(hidden=()), {}, ValueError, "hidden is empty.*linear"),
    ("bad-hidden", "grpo", dict(hidden=(64, 0)), {}, ValueError, "hidden layer sizes must be positive integers"),
    ("negative-seed", "trpo", dict(seed=-1), {}, ValueError, "seed must be a non-negative integer"),
    ("device-name", "ppo", dict(device="gpu"), {}, ValueError, "'gpu' is not a torch device; use 'cpu'"),
    ("zero-total", "grpo", dict(total_timesteps=0), {}, ValueError, "total_timesteps must be a positive integer"),
    ("torch-threads", "ppo", dict(torch_threads=0), {}, ValueError, "torch_threads must be a positive integer"),
    ("unknown-env", "reinforce", dict(env_id="CartPol-v1"), {}, ValueError, "unknown Gymnasium environment.*CartPole-v1"),
]
if not torch.cuda.is_available():
    API_CASES += [("cuda-missing", a, dict(device="cuda"), {}, ValueError, "CUDA is not available.*'cpu'")
                  for a in ("dqn", "ppo", "grpo")]


@pytest.mark.parametrize("case, name, overrides, kwargs, exc, match", API_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in API_CASES])
def test_bad_api_input_is_a_clear_error(tmp_path, case, name, overrides, kwargs, exc, match):
    module, make = ALGOS[name]
    paths = dict(checkpoint_path=str(tmp_path / "ck.pt"), log_path=str(tmp_path / "log.jsonl"))
    with pytest.raises(exc, match=match):
        module.train(make(**{**paths, **overrides}), progress=False, **kwargs)
    if not kwargs.get("resume"):
        assert not (tmp_path / "ck.pt").exists()  # refused before any training


def test_bad_checkpoints_name_the_file(tmp_path, ppo_run):
    good = Path(ppo_run.checkpoint_path).read_bytes()
    cases = {"empty.pt": (b"", "is empty"), "truncated.pt": (good[: len(good) // 3], "truncated or not a PyTorch"),
             "random.pt": (np.random.default_rng(0).bytes(5000), "cannot be read")}
    for fname, (content, match) in cases.items():
        (tmp_path / fname).write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{fname}.*{match}"):
            ppo.train(_ppo(checkpoint_path=str(tmp_path / fname)), resume=True, progress=False)
    with pytest.raises(CheckpointError, match="is from ppo on CartPole-v1, not trpo on CartPole-v1"):
        trpo.train(_trpo(checkpoint_path=ppo_run.checkpoint_path), resume=True, progress=False)
    with pytest.raises(CheckpointError, match="from ppo on CartPole-v1, not ppo on Acrobot-v1"):
        ppo.train(_ppo(env_id="Acrobot-v1", checkpoint_path=ppo_run.checkpoint_path), resume=True, progress=False)


def test_changed_config_on_resume_is_refused_unless_safe(tmp_path, ppo_run, capsys):
    with pytest.raises(ValueError, match=r"different config.*learning_rate: 0.0025 -> 0.001.*fields that may change"):
        ppo.train(dataclasses.replace(ppo_run, learning_rate=1e-3), resume=True, progress=False)
    with pytest.raises(ValueError, match=r"different config.*hidden"):
        ppo.train(dataclasses.replace(ppo_run, hidden=(16,)), resume=True, progress=False)
    # a safe change is accepted and said; the run is already at its total: nothing to train
    ppo.train(dataclasses.replace(ppo_run, checkpoint_every=4096), resume=True, progress=False)
    err = capsys.readouterr().err
    assert "checkpoint_every changed from 10000 to 4096" in err and "nothing left to train" in err


def test_fresh_run_refuses_to_overwrite_and_unwritable_paths_fail_first(tmp_path, ppo_run):
    with pytest.raises(RunExistsError, match="--resume.*--overwrite"):
        ppo.train(ppo_run, progress=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    t = time.perf_counter()
    with pytest.raises(PermissionError, match="cannot write the checkpoint.*choose a writable location"):
        dqn.train(_dqn(checkpoint_path=str(blocker / "ck.pt")), progress=False)
    with pytest.raises(PermissionError, match="cannot write the log"):
        reinforce.train(_reinforce(log_path=str(blocker / "log.jsonl")), progress=False)
    assert time.perf_counter() - t < 5  # found before any training
    d = tmp_path / "again"
    cfg = _ppo(total_timesteps=256, update_epochs=1, checkpoint_path=str(d / "ck.pt"), log_path=str(d / "log.jsonl"))
    ppo.train(cfg, progress=False)
    ppo.train(cfg, overwrite=True, progress=False)  # replaced, not appended to
    assert len([r for r in read_jsonl(cfg.log_path) if "policy_loss" in r]) == 1


# --------------------------------------------------------------------- 6. bad inputs: the command line
CLI_CASES = [
    # (args, phrase in the error line)
    (["trian", "ppo"], r"unknown command 'trian' \(did you mean train\?\)"),
    ([], r"required: command"),
    (["train", "a2c"], r"unknown algorithm 'a2c'; choose one of: dqn"),
    (["train", "ppo", "--env", "CartPol-v1"], r"unknown Gymnasium environment id 'CartPol-v1'.*Did you mean.*CartPole-v1"),
    (["train", "ppo", "--env", "FrozenLake-v1"], r"PPO supports flat Box observations.*CartPole-v1"),
    (["train", "dqn", "--env", "RlcoreTestImageObs-v0"], r"DQN supports flat Box observations"),
    (["train", "dqn", "--env", "Pendulum-v1"], r"discrete action space.*Pendulum-v1"),
    (["train", "ppo", "--total-timesteps", "abc"], r"--total-timesteps expects an integer"),
    (["train", "ppo", "--total-timesteps", "1500.5"], r"--total-timesteps expects an integer.*'1500.5'"),
    (["train", "ppo", "--total-timesteps", "-5"], r"total_timesteps must be a positive integer, got -5"),
    (["train", "trpo", "--total-timesteps", "0"], r"total_timesteps must be a positive integer, got 0"),
    (["train", "ppo", "--set", "hidden="], r"hidden is empty.*hidden=64,64"),
    (["train", "dqn", "--set", "hidden=64,,64"], r"hidden has an empty item"),
    (["train", "ppo", "--set", "learning_rate"], r"--set expects KEY=VALUE \(e.g. --set learning_rate=3e-4\)"),
    (["train", "ppo", "--set", "=3"], r"--set expects KEY=VALUE"),
    (["train", "ppo", "--set", "learning_rat=1e-3"], r"no field 'learning_rat' \(did you mean learning_rate\?\)"),
    (["train", "ppo", "--set", "learning_rate=fast"], r"learning_rate expects a number"),
    (["train", "ppo", "--set", "learning_rate=-1"], r"learning_rate must be a finite number > 0, got -1"),
    (["train", "reinforce", "--set", "gamma=1.5"], r"gamma must lie in \[0, 1\]"),
    (["train", "ppo", "--set", "norm_adv=maybe"], r"norm_adv expects a boolean \(true/false\)"),
    (["train", "ppo", "--set", "num_minibatches=3"], r"must be divisible by num_minibatches"),
    (["train", "grpo", "--set", "max_grad_norm=-1"], r"max_grad_norm must be None or 0 \(no clipping\)"),
    (["train", "ppo", "--set", "torch_threads=0"], r"torch_threads must be a positive integer"),
    (["train", "ppo", "--env", "CartPole-v1", "--set", "env_id=Acrobot-v1"], r"env_id is given twice.*give it once"),
    (["train", "ppo", "--seed", "abc"], r"argument --seed: invalid int value: 'abc'.*--help"),
    (["train", "ppo", "--seed", "-3"], r"seed must be a non-negative integer"),
    (["train", "ppo", "--device", "gpu"], r"'gpu' is not a torch device; use 'cpu'"),
    (["train", "ppo", "--resume", "--overwrite"], r"--overwrite: not allowed with argument --resume"),
    (["train", "ppo", "--resume"], r"cannot resume: no checkpoint at .*checkpoint.pt"),
    (["train", "ppo", "--bogus"], r"unrecognized arguments: --bogus"),
    (["eval", "{tmp}/nowhere"], r"does not exist; pass the folder of a run"),
    (["eval", "{tmp}"], r"no checkpoint.pt in .*; train first"),
    (["eval", "{run}", "--episodes", "0"], r"--episodes must be a positive integer"),
    (["eval", "{run}", "--video", "{tmp}/v.avi"], r"--video expects a file ending in .mp4"),
]
if not torch.cuda.is_available():
    CLI_CASES.append((["train", "ppo", "--device", "cuda"], r"CUDA is not available on this machine; use device 'cpu'"))


def run_main(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args, match", CLI_CASES, ids=[" ".join(a)[:60] or "empty" for a, _ in CLI_CASES])
def test_bad_cli_input_is_one_clear_line(tmp_path, ppo_run, capsys, args, match):
    import re

    run = str(Path(ppo_run.checkpoint_path).parent)
    args = [a.format(tmp=tmp_path, run=run) for a in args]
    if args and args[0] == "train":
        args += ["--out", str(tmp_path / "out"), "--no-progress"]
    code, out, err = run_main(args, capsys)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and re.search(match, lines[0]), err
    assert "Traceback" not in err and not (tmp_path / "out" / "checkpoint.pt").exists()


def test_cli_refuses_to_overwrite_and_bad_checkpoints(tmp_path, ppo_run, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(Path(ppo_run.checkpoint_path).parent, out)
    base = ["train", "ppo", "--out", str(out), "--no-progress", "--set", "num_envs=2", "--set", "num_steps=128"]
    code, _, err = run_main(base, capsys)
    assert code == 2 and "earlier run's files exist" in err and "--resume" in err and "--overwrite" in err
    for content, match in ((b"", "is empty"), (b"\x00not a checkpoint" * 50, "cannot be read")):
        (out / "checkpoint.pt").write_bytes(content)
        code, _, err = run_main(base + ["--resume"], capsys)
        assert code == 2 and match in err and "checkpoint.pt" in err and "Traceback" not in err
    shutil.copy(ppo_run.checkpoint_path, out / "checkpoint.pt")
    code, _, err = run_main(["train", "trpo", "--out", str(out), "--no-progress", "--resume"], capsys)
    assert code == 2 and "is from ppo on CartPole-v1, not trpo" in err
    code, _, err = run_main(base + ["--resume", "--set", "learning_rate=1e-3", "--set", "hidden=32,32"], capsys)
    assert code == 2 and "cannot resume with a different config" in err and "learning_rate" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_main(["train", "ppo", "--out", str(blocker / "sub"), "--no-progress"], capsys)
    assert code == 2 and "cannot write the checkpoint" in err


def test_cli_ctrl_c_saves_and_prints_the_resume_command(tmp_path):
    """A real Ctrl-C (SIGINT) to ``python -m rlcore train``: exit 130, the checkpoint and the resume command
    are printed; running that command finishes the run, identical to an uninterrupted one."""
    out = tmp_path / "run"
    args = ["train", "ppo", "--seed", "3", "--total-timesteps", "2560", "--set", "num_envs=2", "--set", "num_steps=128",
            "--set", "update_epochs=1", "--set", "hidden=16,16", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RLCORE_NO_PROGRESS": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rlcore", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)
    log = out / "history.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and "policy_loss" in log.read_text():
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted: checkpoint saved at step" in stderr
    resume_line = next(line for line in stderr.splitlines() if line.startswith("resume with: "))
    step = load_checkpoint(out / "checkpoint.pt")["global_step"]
    assert 0 < step < 2560 and f"step {step} in {out / 'checkpoint.pt'}" in stderr
    cmd = resume_line.removeprefix("resume with: ").split()
    assert cmd[:4] == ["python", "-m", "rlcore", "train"] and cmd[-1] == "--resume"
    code = main(cmd[3:] + ["--no-progress"])
    assert code == 0 and (out / "learning_curve.png").exists()
    # the same run in one go (in this process) gives the same weights and the same log
    cfg = ppo.default_config("CartPole-v1", seed=3, total_timesteps=2560, num_envs=2, num_steps=128, update_epochs=1,
                             hidden=(16, 16), log_path=str(tmp_path / "full.jsonl"))
    full = ppo.train(cfg, progress=False)
    assert_same_weights(ppo.load_agent(load_checkpoint(out / "checkpoint.pt")), full.agent)
    assert rows(log) == rows(tmp_path / "full.jsonl")


# --------------------------------------------------------------------- 7. eval
def _frames_in(path) -> int:
    import imageio_ffmpeg

    return imageio_ffmpeg.count_frames_and_secs(str(path))[0]


@pytest.mark.parametrize("algo, extra", [
    ("ppo", ["--total-timesteps", "512", "--set", "num_envs=2", "--set", "num_steps=128",
             "--set", "num_minibatches=2", "--set", "update_epochs=1", "--set", "normalize_obs=true"]),
    ("dqn", ["--total-timesteps", "600", "--set", "learning_starts=200", "--set", "train_frequency=4",
             "--set", "gradient_steps=1", "--set", "hidden=32,32", "--set", "eval_every=0"]),
])
def test_eval_a_trained_run_with_video(tmp_path, capsys, algo, extra):
    from rlcore.algos import evaluate
    from rlcore.envs import record_episode

    out = tmp_path / "run"
    assert main(["train", algo, *extra, "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    video = tmp_path / "episode.mp4"
    code, stdout, err = run_main(["eval", str(out), "--episodes", "3", "--video", str(video)], capsys)
    assert code == 0, err
    assert "greedy episodes on seeds 1000000..1000002" in stdout and "±" in stdout and "training used" in stdout
    # the agent rebuilt from the checkpoint acts like the trained one (PPO: with its observation statistics)
    state = load_checkpoint(out / "checkpoint.pt")
    module = {"ppo": ppo, "dqn": dqn}[algo]
    agent = module.load_agent(state)
    env_id = state["config"]["env_id"]
    returns = evaluate(lambda o: module.act(agent, o), env_id, 3, seed=1_000_000)
    mean = float(stdout.split("return: ")[1].split(" ±")[0])
    assert mean == pytest.approx(returns.mean(), abs=0.006)
    if algo == "ppo":
        assert agent.obs_normalizer is not None and agent.obs_normalizer.rms.count > 512
    frames, ret = record_episode(env_id, lambda o: module.act(agent, o), seed=1_000_000)
    assert ret == pytest.approx(returns[0])  # the video shows the first evaluated episode
    assert video.stat().st_size > 1000 and _frames_in(video) == len(frames)
    assert f"{len(frames)} frames)" in stdout
