"""The shared run lifecycle (rlcore.lifecycle): start checks, checkpoint errors, resume configs, signals, knobs."""
import os
import signal

import pytest
import torch

from rlcore import lifecycle
from rlcore.lifecycle import CheckpointError, RunExistsError
from rlcore.training import save_checkpoint


def test_prepare_run_refuses_to_overwrite_and_names_the_fix(tmp_path):
    ck, log = tmp_path / "run" / "checkpoint.pt", tmp_path / "run" / "history.jsonl"
    lifecycle.prepare_run(ck, log)  # fresh: fine, creates the folder
    log.write_text('{"step": 1}\n')
    with pytest.raises(RunExistsError, match="--resume.*--overwrite"):
        lifecycle.prepare_run(ck, log)
    lifecycle.prepare_run(ck, log, overwrite=True)
    assert not log.exists()


def test_resume_without_checkpoint_is_an_error_naming_the_path(tmp_path):
    ck = tmp_path / "nothing-here.pt"
    with pytest.raises(FileNotFoundError, match="nothing-here.pt"):
        lifecycle.prepare_run(ck, resume=True)
    with pytest.raises(ValueError, match="contradict"):
        lifecycle.prepare_run(ck, resume=True, overwrite=True)


def test_unwritable_output_is_found_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="a-file/sub/ck.pt"):
        lifecycle.prepare_run(blocker / "sub" / "ck.pt")  # a folder cannot be created under a file
    with pytest.raises(IsADirectoryError, match="directory"):
        lifecycle.prepare_run(tmp_path)


def test_orphaned_temporary_files_are_removed(tmp_path):
    ck = tmp_path / "checkpoint.pt"
    orphan = tmp_path / ".checkpoint.pt.abc123.tmp"
    orphan.write_bytes(b"\0" * 1000)
    other = tmp_path / ".unrelated.tmp"
    other.write_text("keep")
    lifecycle.prepare_run(ck, resume=False)
    assert not orphan.exists() and other.exists()


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"\x00garbage" * 100, "cannot be read"),
    (os.urandom(4096), "cannot be read"),
])
def test_bad_checkpoints_name_the_file_and_the_problem(tmp_path, content, match):
    ck = tmp_path / "bad.pt"
    ck.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        lifecycle.load_run_checkpoint(ck)
    assert "bad.pt" in str(info.value)


def test_truncated_and_foreign_checkpoints(tmp_path):
    ck = tmp_path / "ck.pt"
    save_checkpoint(ck, {"algo": "ppo", "config": {"env_id": "CartPole-v1"}, "w": torch.zeros(1000)})
    data = ck.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt.*cannot be read"):
        lifecycle.load_run_checkpoint(tmp_path / "trunc.pt")
    with pytest.raises(CheckpointError, match="from ppo on CartPole-v1, not trpo"):
        lifecycle.load_run_checkpoint(ck, algo="trpo", env_id="CartPole-v1")
    with pytest.raises(CheckpointError, match="lacks"):
        lifecycle.load_run_checkpoint(ck, algo="ppo", required=["optimizer"])
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        lifecycle.load_run_checkpoint(tmp_path / "list.pt")


def test_resume_config_changes_refused_unless_safe():
    saved = {"lr": 1e-3, "total_timesteps": 100, "hidden": (64, 64)}
    assert lifecycle.check_resume_config(saved, dict(saved), safe={}) == {}
    assert lifecycle.check_resume_config(saved, {**saved, "hidden": [64, 64]}, safe={}) == {}
    ok = lifecycle.check_resume_config(saved, {**saved, "total_timesteps": 200}, safe={"total_timesteps": "longer"})
    assert ok == {"total_timesteps": (100, 200)}
    with pytest.raises(ValueError, match=r"lr: 0.001 -> 0.01"):
        lifecycle.check_resume_config(saved, {**saved, "lr": 1e-2}, safe={"total_timesteps": "longer"})


def test_graceful_interrupt_defers_the_first_signal_only():
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the tests run as a background job
    with lifecycle.GracefulInterrupt() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
        exc = stop.interrupted("ck.pt", 7)
        assert isinstance(exc, KeyboardInterrupt) and exc.step == 7 and "SIGTERM" in str(exc)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("value, expected", [(None, None), (0, None), (0.0, None), (float("inf"), None),
                                             (0.5, 0.5), (10, 10.0)])
def test_max_grad_norm_has_one_meaning(value, expected):
    assert lifecycle.check_max_grad_norm(value) == expected


@pytest.mark.parametrize("value", [-1.0, float("nan"), "1.0", True])
def test_max_grad_norm_rejects_bad_values(value):
    with pytest.raises(ValueError, match="max_grad_norm must be None or 0"):
        lifecycle.check_max_grad_norm(value)


def test_clip_grad_norm_off_and_on():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.full((4,), 3.0)  # norm 6
    assert lifecycle.clip_grad_norm([p], 0) == pytest.approx(6.0)
    assert torch.equal(p.grad, torch.full((4,), 3.0))  # 0 = off: untouched
    assert lifecycle.clip_grad_norm([p], 1.0) == pytest.approx(6.0)
    assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
