"""Data-parallel SFT under torch.distributed (2 gloo processes on CPU): gradients are all-reduced by DDP,
so both ranks end with identical parameters although each saw different examples.

``train_grpo`` is not distributed-aware yet (it would need per-rank prompt sharding, a gathered
reward/advantage computation per group, and DDP around the policy); SFT is what runs data-parallel.
"""
import os

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
