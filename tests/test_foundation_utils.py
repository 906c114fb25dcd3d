"""rlcore.utils: quick mode, seeding, validation messages."""
import numpy as np
import pytest
import torch

from rlcore import utils


def test_quick_mode_reads_env(monkeypatch):
    monkeypatch.setenv("RLCORE_QUICK", "1")
    assert utils.quick_mode() and utils.pick(100, 5) == 5
    monkeypatch.setenv("RLCORE_QUICK", "0")
    assert not utils.quick_mode() and utils.pick(100, 5) == 100
    monkeypatch.delenv("RLCORE_QUICK")
    assert not utils.quick_mode()


def test_seed_everything_reproduces_all_generators():
    def draw():
        import random

        return random.random(), np.random.rand(), torch.rand(3).tolist()

    utils.seed_everything(123)
    a = draw()
    utils.seed_everything(123)
    assert draw() == a
    utils.seed_everything(124)
    assert draw() != a


@pytest.mark.parametrize("bad", [-1, 1.5, "3"])
def test_seed_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="seed"):
        utils.seed_everything(bad)


def test_validation_messages_name_the_parameter():
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        utils.check_positive("learning_rate", 0.0)
    utils.check_positive("learning_rate", 0.0, allow_zero=True)
    with pytest.raises(ValueError, match=r"gamma must lie in \[0, 1\]"):
        utils.check_probability("gamma", 1.5)
    with pytest.raises(ValueError, match="rewards contains 1 non-finite"):
        utils.check_finite("rewards", torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="CUDA is not available"):
        if not torch.cuda.is_available():
            utils.get_device("cuda")
        else:  # pragma: no cover - GPU machines
            raise ValueError("CUDA is not available")
