"""Gymnasium 1.x environments: creation with helpful errors, vector envs, episode statistics,
and a video of an episode that plays inline in a notebook.

Vector environments use ``AutoresetMode.SAME_STEP``: when a sub-environment ends, ``step``
already returns the first observation of the next episode and puts the real last
observation in ``infos["final_obs"]``. That is what we need to bootstrap correctly on
truncation (see :func:`final_observations`).
"""
from __future__ import annotations

import base64
import difflib
import io
import os
from typing import Callable, Sequence

import gymnasium as gym
import numpy as np


def _known_ids() -> list[str]:
    return sorted(gym.envs.registry.keys())


def check_env_id(env_id: str) -> None:
    """Raise ``ValueError`` for an unknown id, listing the closest registered names."""
    if not isinstance(env_id, str):
        raise TypeError(f"env_id must be a string such as 'CartPole-v1', got {type(env_id).__name__}")
    ids = _known_ids()
    if env_id in ids:
        return
    close = difflib.get_close_matches(env_id, ids, n=5, cutoff=0.5)
    hint = f" Did you mean one of: {', '.join(close)}?" if close else " See gymnasium.envs.registry for the list."
    raise ValueError(f"unknown Gymnasium environment id {env_id!r}.{hint}")


def make_env(env_id: str, seed: int | None = None, render_mode: str | None = None, **kwargs) -> gym.Env:
    """``gym.make`` with a clear error for unknown ids; resets once with ``seed`` if given."""
    check_env_id(env_id)
    env = gym.make(env_id, render_mode=render_mode, **kwargs)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def make_vector_env(
    env_id: str,
    num_envs: int = 1,
    seed: int | None = 0,
    wrappers: Sequence[Callable[[gym.Env], gym.Env]] = (),
    record_stats: bool = True,
    **kwargs,
) -> gym.vector.VectorEnv:
    """A ``SyncVectorEnv`` of ``num_envs`` copies (same-step autoreset) with episode statistics.

    Sub-environment ``i`` is seeded with ``seed + i`` on the first ``reset``. ``wrappers`` are
    applied to every single environment (e.g. ``gym.wrappers.ClipAction``).
    """
    check_env_id(env_id)
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")

    def thunk():
        env = gym.make(env_id, **kwargs)
        for w in wrappers:
            env = w(env)
        return env

    envs = gym.vector.SyncVectorEnv(
        [thunk for _ in range(num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    if record_stats:
        envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    if seed is not None:
        envs.reset(seed=seed)
        envs.action_space.seed(seed)
    return envs


def is_discrete(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Discrete)


def is_continuous(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box)


def require_discrete(space: gym.Space, algo: str, env_id: str = "") -> None:
    """Raise a clear error when an algorithm that needs discrete actions meets another space."""
    if not is_discrete(space):
        where = f" of {env_id}" if env_id else ""
        raise ValueError(
            f"{algo} needs a discrete action space, but the action space{where} is {space}. "
            f"Use a discrete environment (e.g. CartPole-v1, Acrobot-v1) or an algorithm that "
            f"supports continuous actions (PPO, TRPO, REINFORCE with a Gaussian policy)."
        )


def require_discrete_or_box(space: gym.Space, algo: str, env_id: str = "") -> None:
    if not (is_discrete(space) or (is_continuous(space) and len(space.shape) == 1)):
        raise ValueError(f"{algo} supports Discrete or 1-D Box action spaces, got {space} for {env_id or 'this env'}")


def require_flat_box_observations(space: gym.Space, algo: str, env_id: str = "") -> None:
    """Raise a clear error unless observations are a flat ``Box`` (a 1-D vector), what rlcore's MLPs take.

    Images (``Box`` of shape ``(H, W, C)``), ``Dict``/``Tuple`` and ``Discrete`` observations are refused
    before any training, instead of failing later inside a network with a shape error.
    """
    if is_continuous(space) and len(space.shape) == 1:
        return
    kind = ("image-like" if is_continuous(space) and len(space.shape) >= 2 else type(space).__name__)
    raise ValueError(
        f"{algo} supports flat Box observations (a 1-D vector of numbers); {env_id or 'this environment'} has "
        f"{kind} observations {space}. Use a task with vector observations (e.g. CartPole-v1, Acrobot-v1, "
        f"Pendulum-v1), or wrap the environment so it returns a flat vector (gymnasium.wrappers.FlattenObservation)."
    )


def obs_dim(space: gym.Space) -> int:
    if not is_continuous(space):
        raise ValueError(f"rlcore's MLP policies need a Box observation space, got {space}")
    return int(np.prod(space.shape))


def action_dim(space: gym.Space) -> int:
    return int(space.n) if is_discrete(space) else int(np.prod(space.shape))


def final_observations(next_obs: np.ndarray, infos: dict) -> np.ndarray:
    """The real ``s_{t+1}`` for every sub-env: ``next_obs`` except where an episode just ended,
    where it is ``infos["final_obs"]`` (the observation at termination/truncation)."""
    real = np.array(next_obs, copy=True)
    if "_final_obs" in infos:
        for i in np.nonzero(infos["_final_obs"])[0]:
            real[i] = infos["final_obs"][i]
    return real


def finished_episodes(infos: dict) -> list[tuple[float, int]]:
    """``(return, length)`` of every episode that ended in this vector step (RecordEpisodeStatistics)."""
    if "_episode" not in infos:
        return []
    ep = infos["episode"]
    return [(float(ep["r"][i]), int(ep["l"][i])) for i in np.nonzero(infos["_episode"])[0]]


# --------------------------------------------------------------------- video
def record_episode(env_id: str, policy: Callable[[np.ndarray], object] | None = None, seed: int = 0,
                   max_steps: int = 1000, **kwargs) -> tuple[list[np.ndarray], float]:
    """Run one episode with ``render_mode="rgb_array"`` and return ``(frames, return)``.

    ``policy(obs) -> action``; ``None`` means a uniformly random agent.
    """
    # pygame renders off-screen; without this it warns about a missing display in notebooks
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env = make_env(env_id, render_mode="rgb_array", **kwargs)
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    frames, total = [env.render()], 0.0
    for _ in range(max_steps):
        action = env.action_space.sample() if policy is None else policy(obs)
        obs, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        frames.append(env.render())
        if terminated or truncated:
            break
    env.close()
    return frames, total


def frames_to_video(frames: Sequence[np.ndarray], fps: int = 30, fmt: str = "mp4") -> bytes:
    """Encode frames as mp4 (imageio-ffmpeg) or gif; returns the file's bytes."""
    import imageio.v3 as iio

    if not frames:
        raise ValueError("no frames to encode")
    buf = io.BytesIO()
    if fmt == "mp4":
        iio.imwrite(buf, np.stack(frames), extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
    elif fmt == "gif":
        iio.imwrite(buf, np.stack(frames), extension=".gif", duration=1000 / fps, loop=0)
    else:
        raise ValueError(f"fmt must be 'mp4' or 'gif', got {fmt!r}")
    return buf.getvalue()


def show_video(frames: Sequence[np.ndarray], fps: int = 30, width: int = 360, fmt: str = "mp4", caption: str = ""):
    """Inline HTML5 video (or gif) of ``frames`` for a notebook; also renders in the built book."""
    from IPython.display import HTML

    data = base64.b64encode(frames_to_video(frames, fps=fps, fmt=fmt)).decode()
    if fmt == "mp4":
        media = (f'<video width="{width}" controls autoplay loop muted playsinline>'
                 f'<source src="data:video/mp4;base64,{data}" type="video/mp4"></video>')
    else:
        media = f'<img width="{width}" src="data:image/gif;base64,{data}"/>'
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return HTML(f'<figure style="display:inline-block;margin:4px">{media}{cap}</figure>')


def show_videos(videos: Sequence[tuple[str, Sequence[np.ndarray]]], fps: int = 30, width: int = 300, fmt: str = "mp4"):
    """Several captioned videos side by side, e.g. ``[("random", f1), ("trained", f2)]``."""
    from IPython.display import HTML

    return HTML("".join(show_video(f, fps=fps, width=width, fmt=fmt, caption=c).data for c, f in videos))
