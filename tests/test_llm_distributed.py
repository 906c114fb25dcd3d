"""Data-parallel training under torch.distributed (2 gloo processes on CPU).

SFT: gradients are all-reduced by DDP, so both ranks end with identical parameters although each saw different
examples. GRPO: each rank samples whole groups of its share of the prompts; with ``seed_per_prompt=True`` two
processes give the parameters of one process with the same global batch (within ``GRPO_ATOL``: float rounding
only), the checkpoint resumes with another number of processes, and bad input (a batch that does not split, configs
that differ across ranks) raises one clear error on every rank instead of hanging.
"""
import os
import time
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp


def _pairs():
    from rlcore.llm.sft import sft_dataset
    from rlcore.llm.tasks import arithmetic_dataset

    return sft_dataset(arithmetic_dataset(16, digits=1, seed=0), template=None, style="compact")


def _worker(rank: int, world: int, tmp: str):
    import torch.distributed as dist

    from rlcore.llm.models import tiny_model
    from rlcore.llm.sft import SFTConfig, train_sft

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        # different initialisations on purpose: DDP broadcasts rank 0's parameters at wrap time
        model, tok = tiny_model(seed=rank, n_layer=1, d_model=32)
        hist = train_sft(model, tok, _pairs(), SFTConfig(max_steps=4, batch_size=4, learning_rate=3e-3, seed=0))
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.save({"params": flat, "loss": [float(x) for x in hist["loss"]]}, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_sft_two_gloo_ranks_end_identical(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert torch.equal(r0["params"], r1["params"])  # all-reduced gradients -> same update on both ranks
    assert r0["loss"] == r1["loss"]  # the logged loss is the all-reduced mean

    # and the result is not what rank 0 would reach alone on its half of each batch
    from rlcore.llm.models import tiny_model
    from rlcore.llm.sft import SFTConfig, train_sft

    torch.set_num_threads(1)
    start, tok = tiny_model(seed=0, n_layer=1, d_model=32)
    init = torch.cat([p.detach().flatten() for p in start.parameters()])
    assert not torch.equal(init, r0["params"])
    pairs = _pairs()
    from rlcore.llm.sft import _epoch_order

    order = _epoch_order(len(pairs), 0, 0)
    rank0_only = [pairs[int(i)] for b in range(4) for i in order[b * 4:(b + 1) * 4][0::2]]
    solo, _ = tiny_model(seed=0, n_layer=1, d_model=32)
    train_sft(solo, tok, rank0_only, SFTConfig(max_steps=4, batch_size=2, learning_rate=3e-3, seed=0))
    solo_flat = torch.cat([p.detach().flatten() for p in solo.parameters()])
    assert not torch.allclose(solo_flat, r0["params"], atol=1e-6)


# ============================================================== GRPO
GRPO_ATOL = 1e-5
"""Largest parameter difference allowed between the 2-process and the 1-process GRPO run (float32 rounding: the
ranks pad their tensors to other widths and the gradient is summed in another order)."""


def _length_reward(prompts, completions, **kw):
    return [float(len(c) % 3) for c in completions]


def _grpo_data():
    from rlcore.llm.tasks import arithmetic_dataset

    return arithmetic_dataset(16, digits=1, seed=0)


def _grpo_cfgs(tmp: str) -> dict:
    from rlcore.llm.grpo import GRPOConfig

    base = dict(prompts_per_step=4, num_generations=3, max_new_tokens=8, learning_rate=3e-3, template=None,
                progress_bar=False, seed=1, seed_per_prompt=True, log_completions=0)
    return {
        # the book's defaults; checkpoint and log written by rank 0 only
        "plain": GRPOConfig(steps=2, checkpoint_path=os.path.join(tmp, "plain.pt"),
                            log_path=os.path.join(tmp, "plain.jsonl"), **base),
        # global token count (dapo), global reward std (batch), KL to the reference, mu=2, micro-batches, fast path
        "global": GRPOConfig(steps=2, loss_type="dapo", scale_rewards="batch", beta=0.05, num_iterations=2,
                             micro_batch_size=2, fast=True, **base),
    }


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _init(rank: int, world: int, tmp: str, name: str):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/{name}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))  # a collective that waits longer fails instead of hanging


def _grpo_worker(rank: int, world: int, tmp: str):
    import torch.distributed as dist

    from rlcore.llm.grpo import train_grpo
    from rlcore.llm.models import tiny_model

    _init(rank, world, tmp, "rdv_grpo")
    try:
        out = {}
        for name, cfg in _grpo_cfgs(tmp).items():
            # different initialisations on purpose: rank 0's parameters are broadcast at the start
            model, tok = tiny_model(seed=rank, n_layer=1, d_model=32)
            r = train_grpo(cfg, model, tok, _grpo_data(), [_length_reward])
            out[name] = {"params": _flat(model), "reward": [float(x) for x in r.history["reward"]],
                         "loss": [float(x) for x in r.history["loss"]]}
        torch.save(out, os.path.join(tmp, f"grpo_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _bad_worker(rank: int, world: int, tmp: str):
    import dataclasses

    import torch.distributed as dist

    from rlcore.llm.grpo import train_grpo
    from rlcore.llm.models import tiny_model

    _init(rank, world, tmp, "rdv_bad")
    try:
        cfg = _grpo_cfgs(tmp)["plain"]
        attempts = {
            "indivisible": dataclasses.replace(cfg, prompts_per_step=3, checkpoint_path=None, log_path=None),
            "mismatch": dataclasses.replace(cfg, learning_rate=cfg.learning_rate * (1 + rank), checkpoint_path=None,
                                            log_path=None),
        }
        errors = {}
        for name, c in attempts.items():
            model, tok = tiny_model(seed=0, n_layer=1, d_model=32)
            try:
                train_grpo(c, model, tok, _grpo_data(), [_length_reward])
                errors[name] = None
            except Exception as exc:  # noqa: BLE001 - the test checks which error
                errors[name] = f"{type(exc).__name__}: {exc}"
        torch.save(errors, os.path.join(tmp, f"bad_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn_with_timeout(fn, tmp, seconds: float = 120.0):
    ctx = mp.spawn(fn, args=(2, str(tmp)), nprocs=2, join=False)
    deadline = time.monotonic() + seconds
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{fn.__name__} did not finish within {seconds} s (a rank hangs in a collective?)")


@pytest.mark.slow
def test_ddp_grpo_two_gloo_ranks_equal_one_process(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    import json

    from rlcore.llm.grpo import train_grpo
    from rlcore.llm.models import tiny_model

    _spawn_with_timeout(_grpo_worker, tmp_path)
    r0 = torch.load(tmp_path / "grpo_rank0.pt")
    r1 = torch.load(tmp_path / "grpo_rank1.pt")
    # only rank 0 wrote the checkpoint and the log, one row per step
    assert (tmp_path / "plain.pt").exists()
    rows = [json.loads(line) for line in (tmp_path / "plain.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "reward" in row] == [1, 2]

    torch.set_num_threads(1)
    single = {}
    for name, cfg in _grpo_cfgs(str(tmp_path / "single")).items():
        cfg.checkpoint_path = cfg.log_path = None
        model, tok = tiny_model(seed=0, n_layer=1, d_model=32)
        r = train_grpo(cfg, model, tok, _grpo_data(), [_length_reward])
        single[name] = {"params": _flat(model), "reward": [float(x) for x in r.history["reward"]],
                        "loss": [float(x) for x in r.history["loss"]]}
    start = _flat(tiny_model(seed=0, n_layer=1, d_model=32)[0])
    for name in single:
        assert torch.equal(r0[name]["params"], r1[name]["params"]), name  # averaged gradients: one update everywhere
        assert r0[name]["reward"] == r1[name]["reward"], name  # the logged reward is the global batch's
        assert r0[name]["reward"] == pytest.approx(single[name]["reward"], abs=1e-6), name  # the same completions
        assert r0[name]["loss"] == pytest.approx(single[name]["loss"], abs=1e-5), name
        moved = (single[name]["params"] - start).abs().max().item()
        diff = (r0[name]["params"] - single[name]["params"]).abs().max().item()
        assert moved > 100 * GRPO_ATOL, (name, moved)  # training did move the parameters
        assert diff <= GRPO_ATOL, (name, diff)

    # rank 0's checkpoint (2 processes, 2 steps) resumes in 1 process and equals 3 uninterrupted steps
    cfg = _grpo_cfgs(str(tmp_path))["plain"]
    cfg.steps, cfg.resume, cfg.log_path = 3, True, None
    resumed, tok = tiny_model(seed=5, n_layer=1, d_model=32)
    train_grpo(cfg, resumed, tok, _grpo_data(), [_length_reward])
    cfg = _grpo_cfgs(str(tmp_path / "single"))["plain"]
    cfg.steps, cfg.checkpoint_path, cfg.log_path = 3, None, None
    straight, tok = tiny_model(seed=0, n_layer=1, d_model=32)
    train_grpo(cfg, straight, tok, _grpo_data(), [_length_reward])
    assert (_flat(resumed) - _flat(straight)).abs().max().item() <= GRPO_ATOL


@pytest.mark.slow
def test_ddp_grpo_bad_input_fails_on_every_rank(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    _spawn_with_timeout(_bad_worker, tmp_path, seconds=90)
    errors = [torch.load(tmp_path / f"bad_rank{r}.pt") for r in range(2)]
    for e in errors:
        assert e["indivisible"].startswith("ValueError") and "cannot be split evenly over 2 processes" in e["indivisible"]
        assert e["mismatch"].startswith("ValueError") and "different GRPO settings" in e["mismatch"]


_TORCHRUN_SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
torch.set_num_threads(1)
from rlcore.llm.grpo import GRPOConfig, train_grpo
from rlcore.llm.models import tiny_model
from rlcore.llm.tasks import arithmetic_dataset
def reward(prompts, completions, **kw):
    return [float(len(c) % 3) for c in completions]
model, tok = tiny_model(seed=0, n_layer=1, d_model=32)
cfg = GRPOConfig(steps=2, prompts_per_step=4, num_generations=3, max_new_tokens=8, template=None, seed=1,
                 progress_bar=False, seed_per_prompt=True, log_completions=0)
res = train_grpo(cfg, model, tok, arithmetic_dataset(16, digits=1, seed=0), [reward])
assert dist.is_initialized(), "train_grpo should have joined torchrun's process group"
out = {"world": dist.get_world_size(), "reward": [float(x) for x in res.history["reward"]]}
json.dump(out, open(sys.argv[1] + f".rank{dist.get_rank()}", "w"))
"""


@pytest.mark.slow
def test_grpo_script_runs_unchanged_under_torchrun(tmp_path):
    """A plain script (no process-group set-up of its own) under ``torchrun --nproc_per_node 2``."""
    import json
    import subprocess
    import sys

    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    script = tmp_path / "grpo_script.py"
    script.write_text(_TORCHRUN_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path / "out")], capture_output=True, text=True, timeout=180, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs = [json.loads((tmp_path / f"out.rank{r}").read_text()) for r in range(2)]
    assert outs[0] == outs[1] and outs[0]["world"] == 2 and len(outs[0]["reward"]) == 2
