"""The run lifecycle of the language-model trainers (GRPO, SFT, PPO-LM): interrupt, resume, refuse bad input.

* A real SIGINT during training (sent by the process to itself from a reward function or a forward hook)
  ends the current step, writes the checkpoint and raises ``TrainingInterrupted`` with its path; the
  resumed run equals an uninterrupted one in weights and in its log, row for row (wall-clock fields aside),
  also after two interruptions.
* Bad input (knobs, paths, checkpoints, configs) is refused with a message naming the culprit, before any
  model forward pass where the problem is visible up front.
* ``max_grad_norm=0`` (or ``None``) means "no clipping" in every trainer.
"""
import contextlib
import math
import os
import re
import signal

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from rlcore.lifecycle import CheckpointError, RunExistsError, TrainingInterrupted
from rlcore.llm.grpo import GRPOConfig, train_grpo
from rlcore.llm.models import tiny_model
from rlcore.llm.ppo import PPOLMConfig, train_ppo_lm
from rlcore.llm.sft import SFTConfig, sft_dataset, train_sft
from rlcore.llm.tasks import arithmetic_dataset
from rlcore.training import read_jsonl, save_checkpoint

PROMPTS = [f"{a}+{b}=" for a in range(10) for b in range(10)]
WALL_CLOCK = {"step_time", "time_s", "time_per_step_s", "peak_mem_gb"}  # differ between any two runs


# ------------------------------------------------------------------ helpers
def make_sevens(sigint_at=(), double_at=()):
    """The share of 7s (a dense toy reward). At the calls in ``sigint_at`` it sends the process a SIGINT, as a
    Ctrl-C would; at ``double_at`` two of them (the second one means "stop now")."""
    calls = {"n": 0}

    def sevens(prompts, completions, **kwargs):
        calls["n"] += 1
        if calls["n"] in sigint_at:
            os.kill(os.getpid(), signal.SIGINT)
        if calls["n"] in double_at:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return [c.count("7") / max(len(c), 1) for c in completions]

    return sevens


@contextlib.contextmanager
def sigint_at_forward(model, k):
    """SIGINT the process during the ``k``-th forward pass of ``model`` (1-based)."""
    calls = {"n": 0}

    def hook(module, args, output):
        calls["n"] += 1
        if calls["n"] == k:
            os.kill(os.getpid(), signal.SIGINT)

    handle = model.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def count_forwards(model):
    calls = {"n": 0}

    def hook(module, args, output):
        calls["n"] += 1

    handle = model.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


@contextlib.contextmanager
def grad_norms_at_optimizer_step():
    """The global gradient norm each optimiser sees when it steps (i.e. after any clipping)."""
    seen = []

    def hook(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def rows(path):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in read_jsonl(path)]


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def grpo_cfg(**kw):
    base = dict(steps=5, prompts_per_step=2, num_generations=4, max_new_tokens=6, learning_rate=3e-3,
                template=None, progress_bar=False, log_completions=2)
    base.update(kw)
    return GRPOConfig(**base)


def grpo_model():
    return tiny_model(seed=0, vocab="digits")


SFT_PAIRS = sft_dataset(arithmetic_dataset(16, digits=1, seed=0), template=None, style="compact")
PPO_DATA = arithmetic_dataset(16, digits=1, seed=0)


def sft_cfg(**kw):
    base = dict(max_steps=6, batch_size=4, learning_rate=3e-3, seed=0)
    base.update(kw)
    return SFTConfig(**base)


def small_model():
    return tiny_model(seed=0, n_layer=1, d_model=32)


def ppo_cfg(**kw):
    base = dict(total_steps=4, batch_prompts=2, num_generations=2, max_new_tokens=6, template=None,
                learning_rate=1e-3, value_learning_rate=3e-2, minibatch_size=4, update_epochs=1, seed=0)
    base.update(kw)
    return PPOLMConfig(**base)


def digit_share(prompts, completions, **kwargs):
    return [1.0 + sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


@pytest.fixture(autouse=True)
def _sigint_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    yield
    assert signal.getsignal(signal.SIGINT) is before, "a trainer left its SIGINT handler installed"


# ------------------------------------------------------------------ interrupt and resume
def test_grpo_sigint_then_resume_equals_uninterrupted(tmp_path):
    ck, log = tmp_path / "grpo.pt", tmp_path / "grpo.jsonl"
    ref_model, tok = grpo_model()
    ref = train_grpo(grpo_cfg(log_path=str(tmp_path / "ref.jsonl")), ref_model, tok, PROMPTS, [make_sevens()])

    model, _ = grpo_model()
    with pytest.raises(TrainingInterrupted) as info:
        train_grpo(grpo_cfg(checkpoint_path=str(ck), log_path=str(log)), model, tok, PROMPTS, [make_sevens({3})])
    assert info.value.checkpoint_path == str(ck) and info.value.step == 3
    assert str(ck) in str(info.value) and "SIGINT" in str(info.value) and "resume" in str(info.value)
    assert [r["step"] for r in read_jsonl(log) if "reward" in r] == [1, 2, 3]  # the interrupted step was finished

    resumed_model, _ = grpo_model()  # fresh weights: everything must come from the checkpoint
    res = train_grpo(grpo_cfg(checkpoint_path=str(ck), log_path=str(log), resume=True), resumed_model, tok, PROMPTS,
                     [make_sevens()])
    assert torch.equal(params(resumed_model), params(ref_model))
    assert rows(log) == rows(tmp_path / "ref.jsonl")  # metrics and completion tables, row for row
    assert list(res.history["reward"]) == list(ref.history["reward"])


def test_sft_sigint_then_resume_equals_uninterrupted(tmp_path):
    ck, log = tmp_path / "sft.pt", tmp_path / "sft.jsonl"
    ref_model, tok = small_model()
    train_sft(ref_model, tok, SFT_PAIRS, sft_cfg(log_path=str(tmp_path / "ref.jsonl")))

    model, _ = small_model()
    with sigint_at_forward(model, 3), pytest.raises(TrainingInterrupted) as info:
        train_sft(model, tok, SFT_PAIRS, sft_cfg(checkpoint_path=str(ck), log_path=str(log)))
    assert info.value.checkpoint_path == str(ck) and info.value.step == 3 and str(ck) in str(info.value)
    assert [r["step"] for r in read_jsonl(log)] == [1, 2, 3]

    resumed, _ = small_model()
    hist = train_sft(resumed, tok, SFT_PAIRS, sft_cfg(checkpoint_path=str(ck), log_path=str(log), resume=True))
    assert torch.equal(params(resumed), params(ref_model))
    assert rows(log) == rows(tmp_path / "ref.jsonl")
    assert list(hist.steps("loss")) == [1, 2, 3, 4, 5, 6]


def test_ppo_lm_sigint_then_resume_equals_uninterrupted(tmp_path):
    ck, log = tmp_path / "ppo.pt", tmp_path / "ppo.jsonl"
    ref_model, tok = small_model()
    ref = train_ppo_lm(ppo_cfg(log_path=str(tmp_path / "ref.jsonl")), ref_model, tok, PPO_DATA, [digit_share])

    def reward(sigint_at=()):
        calls = {"n": 0}

        def digit_share(prompts, completions, **kw):  # same name as the reference's: same log keys
            calls["n"] += 1
            if calls["n"] in sigint_at:
                os.kill(os.getpid(), signal.SIGINT)
            return [1.0 + sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]

        return digit_share

    model, _ = small_model()
    with pytest.raises(TrainingInterrupted) as info:
        train_ppo_lm(ppo_cfg(checkpoint_path=str(ck), log_path=str(log)), model, tok, PPO_DATA, [reward({2})])
    assert info.value.checkpoint_path == str(ck) and info.value.step == 2
    resumed, _ = small_model()
    res = train_ppo_lm(ppo_cfg(checkpoint_path=str(ck), log_path=str(log), resume=True), resumed, tok, PPO_DATA,
                       [reward()])
    for (k, a), (_, b) in zip(ref.model.state_dict().items(), res.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert rows(log) == rows(tmp_path / "ref.jsonl")


def test_grpo_two_interruptions_then_resume_log_each_step_once(tmp_path):
    """1st run: a double Ctrl-C at step 4 stops at once (the checkpoint of step 2 stays, the log holds 1..3);
    2nd run: resumes, a single Ctrl-C at step 5 saves there; 3rd run: finishes. Each step is logged once and the
    log equals an uninterrupted run's."""
    ck, log = tmp_path / "grpo.pt", tmp_path / "grpo.jsonl"
    cfg = dict(steps=7, checkpoint_every=2, checkpoint_path=str(ck), log_path=str(log))
    ref_model, tok = grpo_model()
    train_grpo(grpo_cfg(**{**cfg, "checkpoint_path": None, "log_path": str(tmp_path / "ref.jsonl")}), ref_model, tok,
               PROMPTS, [make_sevens()])

    m1, _ = grpo_model()
    with pytest.raises(KeyboardInterrupt) as info:
        train_grpo(grpo_cfg(**cfg), m1, tok, PROMPTS, [make_sevens(double_at={4})])
    assert not isinstance(info.value, TrainingInterrupted)  # the second signal did not wait for a checkpoint
    assert [r["step"] for r in read_jsonl(log) if "reward" in r] == [1, 2, 3]
    m2, _ = grpo_model()
    with pytest.raises(TrainingInterrupted) as info:  # resumes at step 3; its 3rd step is step 5
        train_grpo(grpo_cfg(resume=True, **cfg), m2, tok, PROMPTS, [make_sevens({3})])
    assert info.value.step == 5
    m3, _ = grpo_model()
    train_grpo(grpo_cfg(resume=True, **cfg), m3, tok, PROMPTS, [make_sevens()])
    steps = [r["step"] for r in read_jsonl(log) if "reward" in r]
    assert steps == [1, 2, 3, 4, 5, 6, 7]
    assert [r["step"] for r in read_jsonl(log) if "completions" in r] == steps
    assert rows(log) == rows(tmp_path / "ref.jsonl")
    assert torch.equal(params(m3), params(ref_model))


def test_sft_two_interruptions_then_resume_log_each_step_once(tmp_path):
    ck, log = tmp_path / "sft.pt", tmp_path / "sft.jsonl"
    cfg = dict(checkpoint_path=str(ck), log_path=str(log))
    ref_model, tok = small_model()
    train_sft(ref_model, tok, SFT_PAIRS, sft_cfg(log_path=str(tmp_path / "ref.jsonl")))
    m1, _ = small_model()
    with sigint_at_forward(m1, 2), pytest.raises(TrainingInterrupted):
        train_sft(m1, tok, SFT_PAIRS, sft_cfg(**cfg))
    m2, _ = small_model()
    with sigint_at_forward(m2, 2), pytest.raises(TrainingInterrupted) as info:  # steps 3, 4
        train_sft(m2, tok, SFT_PAIRS, sft_cfg(resume=True, **cfg))
    assert info.value.step == 4
    m3, _ = small_model()
    train_sft(m3, tok, SFT_PAIRS, sft_cfg(resume=True, **cfg))
    assert [r["step"] for r in read_jsonl(log)] == [1, 2, 3, 4, 5, 6]
    assert rows(log) == rows(tmp_path / "ref.jsonl")
    assert torch.equal(params(m3), params(ref_model))


def test_interrupt_without_checkpoint_path_says_nothing_was_saved(tmp_path):
    model, tok = grpo_model()
    with pytest.raises(TrainingInterrupted, match="nothing was saved") as info:
        train_grpo(grpo_cfg(steps=3), model, tok, PROMPTS, [make_sevens({1})])
    assert info.value.checkpoint_path is None and info.value.step == 1


def test_resume_may_extend_the_run_and_change_safe_fields(tmp_path):
    ck = tmp_path / "grpo.pt"
    model, tok = grpo_model()
    train_grpo(grpo_cfg(steps=2, checkpoint_path=str(ck)), model, tok, PROMPTS, [make_sevens()])
    m2, _ = grpo_model()
    res = train_grpo(grpo_cfg(steps=3, checkpoint_path=str(ck), resume=True, checkpoint_every=1, log_completions=0,
                              log_path=str(tmp_path / "later.jsonl")), m2, tok, PROMPTS, [make_sevens()])
    assert list(res.history.steps("reward")) == [1, 2, 3]
    assert [r["step"] for r in read_jsonl(tmp_path / "later.jsonl")] == [3]


def test_overwrite_replaces_an_earlier_run(tmp_path):
    log = tmp_path / "sft.jsonl"
    model, tok = small_model()
    train_sft(model, tok, SFT_PAIRS, sft_cfg(max_steps=3, log_path=str(log)))
    train_sft(model, tok, SFT_PAIRS, sft_cfg(max_steps=2, log_path=str(log), overwrite=True))
    assert [r["step"] for r in read_jsonl(log)] == [1, 2]


# ------------------------------------------------------------------ max_grad_norm: one meaning everywhere
def _run_grpo(max_grad_norm):
    model, tok = grpo_model()
    res = train_grpo(grpo_cfg(steps=2, max_grad_norm=max_grad_norm, log_completions=0), model, tok, PROMPTS,
                     [make_sevens()])
    return model, list(res.history["grad_norm"])


def _run_sft(max_grad_norm):
    model, tok = small_model()
    hist = train_sft(model, tok, SFT_PAIRS, sft_cfg(max_steps=2, max_grad_norm=max_grad_norm))
    return model, list(hist["grad_norm"])


def _run_ppo(max_grad_norm):
    model, tok = small_model()
    res = train_ppo_lm(ppo_cfg(total_steps=2, max_grad_norm=max_grad_norm), model, tok, PPO_DATA, [digit_share])
    return res.model, list(res.history["grad_norm"])


@pytest.mark.parametrize("run", [_run_grpo, _run_sft, _run_ppo], ids=["grpo", "sft", "ppo_lm"])
def test_max_grad_norm_zero_or_none_means_no_clipping(run):
    init = params(small_model()[0] if run is not _run_grpo else grpo_model()[0])
    out = {}
    for mgn in (0, 0.0, None, 1e9, 1e-2):
        with grad_norms_at_optimizer_step() as seen:
            model, logged = run(mgn)
        out[mgn] = (params(model), seen, logged)
    unclipped = out[1e9]
    assert min(unclipped[1]) > 1e-2  # a limit of 1e-2 would bite: the comparison below is not vacuous
    for mgn in (0, 0.0, None):
        p, seen, logged = out[mgn]
        assert seen == unclipped[1], mgn  # the optimiser saw the unclipped gradients (not zeros, not clipped)
        assert torch.equal(p, unclipped[0]) and not torch.equal(p, init)
        assert logged == unclipped[2] and all(math.isfinite(x) and x > 0 for x in logged)
    assert unclipped[2][0] == pytest.approx(unclipped[1][0], rel=1e-5)  # logged: the norm the optimiser saw
    p, seen, logged = out[1e-2]
    assert all(x == pytest.approx(1e-2, rel=1e-4) for x in seen)  # clipped to the limit
    assert logged[0] == unclipped[2][0]  # grad_norm is the norm before clipping (the same first batch)


# ------------------------------------------------------------------ bad input, each with a clear message
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One short finished run of each trainer: {"grpo"|"sft"|"ppo": (checkpoint path, config kwargs)}."""
    d = tmp_path_factory.mktemp("ck")
    out = {}
    model, tok = grpo_model()
    kw = dict(steps=2, checkpoint_path=str(d / "grpo.pt"), log_path=str(d / "grpo.jsonl"))
    train_grpo(grpo_cfg(**kw), model, tok, PROMPTS, [make_sevens()])
    out["grpo"] = (d / "grpo.pt", kw)
    model, tok = small_model()
    kw = dict(max_steps=2, checkpoint_path=str(d / "sft.pt"), log_path=str(d / "sft.jsonl"))
    train_sft(model, tok, SFT_PAIRS, sft_cfg(**kw))
    out["sft"] = (d / "sft.pt", kw)
    model, tok = small_model()
    kw = dict(total_steps=2, checkpoint_path=str(d / "ppo.pt"), log_path=str(d / "ppo.jsonl"))
    train_ppo_lm(ppo_cfg(**kw), model, tok, PPO_DATA, [digit_share])
    out["ppo"] = (d / "ppo.pt", kw)
    return out


def _train(kind, model, tok, **kw):
    if kind == "grpo":
        return train_grpo(grpo_cfg(**kw), model, tok, PROMPTS, [make_sevens()])
    if kind == "sft":
        return train_sft(model, tok, SFT_PAIRS, sft_cfg(**kw))
    return train_ppo_lm(ppo_cfg(**kw), model, tok, PPO_DATA, [digit_share])


def _model(kind):
    return grpo_model() if kind == "grpo" else small_model()


def _expect_refused_before_any_forward(kind, exc, match, **kw):
    """Run ``kind`` with ``kw``; it must raise ``exc`` matching ``match`` without a single model forward pass."""
    model, tok = _model(kind)
    with count_forwards(model) as calls, pytest.raises(exc, match=match):
        _train(kind, model, tok, **kw)
    assert calls["n"] == 0, f"{calls['n']} forward passes ran before the error"


CONFIG_CASES = [
    ("grpo_mgn_nan", lambda: GRPOConfig(max_grad_norm=float("nan")), "max_grad_norm must be None or 0.*nan"),
    ("grpo_mgn_negative", lambda: GRPOConfig(max_grad_norm=-1.0), "max_grad_norm must be None or 0.*-1.0"),
    ("grpo_mgn_string", lambda: GRPOConfig(max_grad_norm="1.0"), "max_grad_norm must be None or 0.*'1.0'"),
    ("ppo_mgn_nan", lambda: PPOLMConfig(max_grad_norm=float("nan")), "max_grad_norm must be None or 0"),
    ("ppo_mgn_negative", lambda: PPOLMConfig(max_grad_norm=-0.5), "max_grad_norm must be None or 0.*-0.5"),
    ("sft_mgn_nan", lambda: SFTConfig(max_grad_norm=float("nan")), "max_grad_norm must be None or 0"),
    ("sft_mgn_bool", lambda: SFTConfig(max_grad_norm=True), "max_grad_norm must be None or 0.*True"),
    ("grpo_resume_and_overwrite", lambda: GRPOConfig(resume=True, overwrite=True, checkpoint_path="x.pt"),
     "resume=True and overwrite=True contradict"),
    ("sft_resume_without_path", lambda: SFTConfig(resume=True), "resume=True needs a checkpoint_path"),
    ("ppo_resume_without_path", lambda: PPOLMConfig(resume=True), "resume=True needs a checkpoint_path"),
    ("ppo_negative_checkpoint_every", lambda: PPOLMConfig(checkpoint_every=-1), "checkpoint_every must be an integer"),
    ("sft_resume_not_bool", lambda: SFTConfig(resume="yes", checkpoint_path="x.pt"), "resume must be True or False"),
]


@pytest.mark.parametrize("make, match", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_is_refused_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("kind", ["grpo", "sft", "ppo"])
def test_resume_without_a_checkpoint_names_the_path(kind, tmp_path):
    ck = tmp_path / "missing.pt"
    _expect_refused_before_any_forward(kind, FileNotFoundError, f"no checkpoint at '{re.escape(str(ck))}'",
                                       checkpoint_path=str(ck), resume=True)


@pytest.mark.parametrize("kind, content, match", [
    ("grpo", b"", "is empty"),
    ("sft", "truncate", "truncated or not a PyTorch checkpoint"),
    ("ppo", bytes(range(256)) * 8, "truncated or not a PyTorch checkpoint"),
    ("grpo", "sft", "is from sft.*not grpo_llm"),
    ("ppo", "grpo", "is from grpo_llm.*not ppo_llm"),
    ("sft", "pre_lifecycle", "has no .algo. tag.*older rlcore"),
], ids=["grpo_empty", "sft_truncated", "ppo_random_bytes", "grpo_given_sft", "ppo_given_grpo", "sft_old_format"])
def test_unusable_checkpoint_names_the_file(kind, content, match, checkpoints, tmp_path):
    bad = tmp_path / "bad.pt"
    if content == "truncate":
        data = checkpoints["sft"][0].read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif content in checkpoints:
        bad.write_bytes(checkpoints[content][0].read_bytes())
    elif content == "pre_lifecycle":  # what train_sft wrote before checkpoints carried "algo"
        save_checkpoint(bad, {"model": {}, "optimizer": {}, "history": {}, "step": 2, "tokens": 0, "rng": None,
                              "config": {}})
    else:
        bad.write_bytes(content)
    _expect_refused_before_any_forward(kind, CheckpointError, f"checkpoint '{re.escape(str(bad))}'.*{match}",
                                       checkpoint_path=str(bad), resume=True)


@pytest.mark.parametrize("kind, change, field", [
    ("grpo", dict(learning_rate=1e-2), "learning_rate"),
    ("sft", dict(batch_size=8), "batch_size"),
    ("ppo", dict(clip_coef=0.3), "clip_coef"),
])
def test_changed_config_on_resume_names_the_field(kind, change, field, checkpoints, tmp_path):
    path, kw = checkpoints[kind]
    ck = tmp_path / "ck.pt"
    ck.write_bytes(path.read_bytes())
    kw = {**kw, "checkpoint_path": str(ck), "log_path": None, "resume": True, **change}
    _expect_refused_before_any_forward(kind, ValueError, f"different config.*{field}: .* -> ", **kw)


def test_resume_cannot_shorten_a_run_below_its_checkpoint(checkpoints, tmp_path):
    path, kw = checkpoints["grpo"]
    ck = tmp_path / "ck.pt"
    ck.write_bytes(path.read_bytes())
    _expect_refused_before_any_forward("grpo", ValueError, "at step 2, beyond steps=1",
                                       **{**kw, "checkpoint_path": str(ck), "log_path": None, "resume": True,
                                          "steps": 1})


@pytest.mark.parametrize("kind, which", [("grpo", "both"), ("sft", "log"), ("ppo", "checkpoint")])
def test_a_second_run_on_the_same_paths_is_refused(kind, which, checkpoints):
    path, kw = checkpoints[kind]
    kw = dict(kw)
    if which == "log":
        kw["checkpoint_path"] = None
    elif which == "checkpoint":
        kw["log_path"] = None
    before = path.read_bytes()
    _expect_refused_before_any_forward(kind, RunExistsError, "earlier run's files exist.*resume=True.*overwrite=True",
                                       **kw)
    assert path.read_bytes() == before  # nothing was touched


@pytest.mark.parametrize("kind, field", [("grpo", "checkpoint_path"), ("sft", "log_path"), ("ppo", "checkpoint_path")])
def test_unwritable_output_path_is_found_before_training(kind, field, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    path = blocker / "run" / "out"  # its parent "folder" is a file: nothing can be created there
    what = "checkpoint" if field == "checkpoint_path" else "log"
    _expect_refused_before_any_forward(kind, PermissionError, f"cannot write the {what} '{re.escape(str(path))}'",
                                       **{field: str(path)})


def test_log_path_that_is_a_folder_is_refused_before_training(tmp_path):
    _expect_refused_before_any_forward("ppo", IsADirectoryError, f"log '{re.escape(str(tmp_path))}' is a directory",
                                       log_path=str(tmp_path))


# ------------------------------------------------------------------ under torch.distributed (SFT)
def _ddp_worker(rank: int, world: int, tmp: str):
    """Two scenarios on 2 gloo ranks; each rank writes what happened to ``rank{r}.txt`` (no hang, no traceback)."""
    import json

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    outcomes = []
    try:
        for scenario in ("rank0_cannot_write_its_log", "sigint_on_rank1"):
            model, tok = small_model()
            if scenario == "rank0_cannot_write_its_log":  # only rank 0 checks the files: rank 1 must not wait forever
                cfg = sft_cfg(max_steps=4, log_path=os.path.join(tmp, "a_file", "log.jsonl"))
                hook = contextlib.nullcontext()
            else:  # Ctrl-C reaches rank 1 only: both ranks stop after the same step, rank 0 saves
                cfg = sft_cfg(max_steps=6, checkpoint_path=os.path.join(tmp, "ck.pt"),
                              log_path=os.path.join(tmp, "log.jsonl"))
                hook = sigint_at_forward(model, 2) if rank == 1 else contextlib.nullcontext()
            try:
                with hook:
                    train_sft(model, tok, SFT_PAIRS, cfg)
                outcomes.append("finished")
            except TrainingInterrupted as exc:
                outcomes.append(f"interrupted at {exc.step}")
            except Exception as exc:  # noqa: BLE001 - the outcome is the test's subject
                outcomes.append(f"{type(exc).__name__}: {exc}")
    finally:
        with open(os.path.join(tmp, f"rank{rank}.txt"), "w") as fh:
            json.dump(outcomes, fh)
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_agree_on_refusing_to_start_and_on_stopping(tmp_path):
    import json
    import time

    import torch.multiprocessing as mp

    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    (tmp_path / "a_file").write_text("a file where rank 0's log folder should be")
    ctx = mp.start_processes(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("a rank hung (waiting in a collective for a rank that had stopped)")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.txt").read_text()) for r in (0, 1))
    assert r0[0].startswith("PermissionError: cannot write the log") and "a_file" in r0[0]
    assert r1[0].startswith("RuntimeError: another rank could not start the run")
    assert r0[1] == r1[1] == "interrupted at 2"
    from rlcore.lifecycle import load_run_checkpoint

    assert load_run_checkpoint(tmp_path / "ck.pt", algo="sft")["step"] == 2
    assert [r["step"] for r in read_jsonl(tmp_path / "log.jsonl")] == [1, 2]
