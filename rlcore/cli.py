"""Command line: ``python -m rlcore list``, ``train <algo> ...`` and ``eval RUN_DIR ...``.

Examples::

    python -m rlcore list
    python -m rlcore train dqn --env CartPole-v1 --seed 1
    python -m rlcore train reinforce --env Pendulum-v1 --total-timesteps 200000 --set baseline=value
    python -m rlcore train ppo --help          # every hyperparameter with its docstring
    python -m rlcore train ppo --resume        # continue runs/ppo-CartPole-v1-1 (after Ctrl-C, or to a larger total)
    python -m rlcore eval runs/ppo-CartPole-v1-1 --episodes 20 --video ppo.mp4

A run writes ``history.jsonl`` (every metric), ``learning_curve.png`` and ``checkpoint.pt`` into
``--out`` (default ``runs/<algo>-<env>-<seed>``). Running the same command again refuses to replace
that run: ``--resume`` continues it, ``--overwrite`` replaces it. Ctrl-C stops at the end of the
current iteration, saves the checkpoint and prints the command that resumes (exit code 130).
Every error is one line on stderr, ``error: ...``, naming the fix (exit code 2).
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import shlex
import sys
import types
import typing
from pathlib import Path

from rlcore.algos import ALGORITHMS, config_class, field_docs, get_algorithm

__all__ = ["main", "build_config", "convert_value", "CLIError"]

_TRUE, _FALSE = {"1", "true", "yes", "on", "y", "t"}, {"0", "false", "no", "off", "n", "f"}
COMMANDS = ("list", "train", "eval")
EVAL_SEED = 1_000_000
"""First seed of ``python -m rlcore eval``'s episodes: the trainers seed their environments with ``seed + i``
(and their evaluations with ``seed + 100_000 + i``), so these are seeds training never used."""


class CLIError(Exception):
    """A mistake on the command line: printed as one ``error: ...`` line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line naming the fix (and ``main`` returns 2) instead of usage + exit."""

    def error(self, message):
        raise CLIError(f"{message} (see: {self.prog} --help)")


def convert_value(text: str, tp, name: str = "value"):
    """Convert the command-line string ``text`` to the annotated type ``tp`` of a config field.

    Supports ``int`` (``50000``, ``50_000``, ``5e4``; ``1.5e3`` = 1500 is an integer, ``1500.5`` is not),
    ``float`` (``inf`` too), ``bool`` (true/false/1/0/yes/no), ``str``, ``X | None`` (``none``/``null``)
    and ``tuple[int, ...]`` (``64,64``). An empty value is refused unless the field accepts ``None``.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() in ("none", "null"):
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return convert_value(text, a, name)
            except ValueError as exc:
                errors.append(str(exc))
        hint = " or none" if type(None) in args else ""
        raise ValueError("; ".join(errors) + hint)
    if origin in (tuple, list):
        item = args[0] if args else str
        raw = text.replace("(", "").replace(")", "").replace("[", "").replace("]", "")
        parts = [p.strip() for p in raw.split(",")]
        if not raw.strip():
            raise ValueError(f"{name} is empty; give comma-separated values such as {name}=64,64")
        if any(p == "" for p in parts[:-1]) or (parts[-1] == "" and len(parts) == 1):
            raise ValueError(f"{name} has an empty item in {text!r}; give comma-separated values such as {name}=64,64")
        vals = [convert_value(p, item, name) for p in parts if p != ""]
        return tuple(vals) if origin is tuple else vals
    if tp is bool:
        t = text.strip().lower()
        if t in _TRUE:
            return True
        if t in _FALSE:
            return False
        raise ValueError(f"{name} expects a boolean (true/false), got {text!r}")
    if tp is int:
        t = text.strip().replace("_", "")
        try:
            return int(t)
        except ValueError:
            pass
        try:
            f = float(t)
        except ValueError:
            f = math.nan
        if math.isfinite(f) and f == int(f):
            return int(f)
        raise ValueError(f"{name} expects an integer (e.g. 50000, 5e4 or 50_000), got {text!r}")
    if tp is float:
        try:
            return float(text.strip().replace("_", ""))
        except ValueError:
            raise ValueError(f"{name} expects a number (e.g. 3e-4), got {text!r}") from None
    if tp is str or tp is typing.Any:
        if not text.strip():
            raise ValueError(f"{name} is empty; give a value")
        return text
    raise ValueError(f"{name}: cannot convert {text!r} to {tp}")


def build_config(cls: type, overrides: dict[str, str], typed: dict | None = None, factory=None):
    """Instantiate the config dataclass ``cls`` from string ``overrides`` (``--set key=value``)
    converted with the field types, plus already-typed values ``typed`` (``--env``, ``--seed``...).

    ``factory`` (an algorithm's ``default_config(env_id, **overrides)``) starts from the
    per-environment preset instead of the dataclass defaults."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = dict(typed or {})
    for key, text in overrides.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"{cls.__name__} has no field {key!r}{hint}; valid fields: {', '.join(names)}")
        kwargs[key] = convert_value(text, hints[key], key)
    return (factory or cls)(**kwargs)


def _fields_help(cls: type) -> str:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    lines = [f"{cls.__name__} fields (set with --set key=value):"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        tp = getattr(hints[f.name], "__name__", None) or str(hints[f.name]).replace("typing.", "")
        lines.append(f"  {f.name} ({tp}, default {default!r})")
        if docs.get(f.name):
            lines += [f"      {line}" for line in docs[f.name].splitlines()]
    return "\n".join(lines)


def _parse_set(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise CLIError(f"--set expects KEY=VALUE (e.g. --set learning_rate=3e-4), got {item!r}")
        out[k.strip()] = v.strip()
    return out


def _total_timesteps(text: str) -> int:
    try:
        return convert_value(text, int, "--total-timesteps")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _train_parser(algo: str | None) -> argparse.ArgumentParser:
    epilog = None
    if algo is not None:
        try:
            epilog = _fields_help(config_class(get_algorithm(algo)))
        except ValueError as exc:
            epilog = str(exc)
    p = _Parser(prog="python -m rlcore train", description="Train an algorithm on a Gymnasium task.",
                epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("algo", help=f"one of: {', '.join(ALGORITHMS)}")
    p.add_argument("--env", dest="env_id", default=None, help="Gymnasium id, e.g. CartPole-v1 (default: the config's)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the config's)")
    p.add_argument("--total-timesteps", type=_total_timesteps, default=None,
                   help="environment steps (default: the config's); an integer, 1.5e3 = 1500 is fine. PPO, TRPO "
                        "(and DQN with several envs) train whole batches of steps: another total is rounded up, "
                        "with a notice. With --resume, a larger total extends the run: PPO's annealed learning "
                        "rate and DQN's epsilon continue linearly from their value at the checkpoint (no jump)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config field; repeatable")
    p.add_argument("--out", default=None, help="output folder (default runs/<algo>-<env>-<seed>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in --out from its checkpoint (an error if there is none)")
    mode.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _eval_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m rlcore eval",
                description="Evaluate the agent of a training run greedily (argmax / Gaussian mean) on fresh seeds.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (with checkpoint.pt) or a checkpoint file")
    p.add_argument("--episodes", type=int, default=10, help="episodes to run (default 10)")
    p.add_argument("--seed", type=int, default=None,
                   help=f"seed of the first episode, then +1 each (default {EVAL_SEED}: seeds training never used)")
    p.add_argument("--video", default=None, metavar="PATH", help="also record episodes to this .mp4 (or .gif) file")
    p.add_argument("--video-episodes", type=int, default=1, help="episodes recorded with --video (default 1)")
    p.add_argument("--max-steps", type=int, default=100_000, help="step limit per episode (default 100000)")
    return p


def _summary(result, algo: str) -> str:
    h = result.history
    lines = [f"{algo} on {result.config.env_id} (seed {result.config.seed}): "
             f"{result.env_steps} env steps in {result.wall_seconds:.1f} s"]
    if "episode_return" in h:
        rets = h["episode_return"]
        lines.append(f"  episodes: {len(rets)}, mean return of the last 10: {rets[-10:].mean():.2f}, "
                     f"best episode return: {rets.max():.2f}")
    if "eval_return" in h:
        ev = h["eval_return"]
        lines.append(f"  evaluation return: last {ev[-1]:.2f}, best {ev.max():.2f}")
    return "\n".join(lines)


def _plot(result, algo: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlcore.training import plot_learning_curves

    h = result.history
    fig, ax = plt.subplots(figsize=(6, 3.5))
    runs = {}
    if "episode_return" in h:
        runs[f"{algo} training episodes"] = [(h.steps("episode_return"), h["episode_return"])]
    if "eval_return" in h and len(h["eval_return"]) > 1:
        runs[f"{algo} evaluation"] = [(h.steps("eval_return"), h["eval_return"])]
    if runs:
        plot_learning_curves(runs, ax=ax, smooth=1, title=f"{algo} on {result.config.env_id}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _resume_command(argv: list[str]) -> str:
    args = [a for a in argv if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return "python -m rlcore train " + shlex.join(args)


def _train(argv: list[str]) -> int:
    from rlcore.lifecycle import TrainingInterrupted, check_writable

    algo = next((a for a in argv if not a.startswith("-")), None)
    args = _train_parser(algo).parse_args(argv)
    module = get_algorithm(args.algo)
    cls = config_class(module)
    names = {f.name for f in dataclasses.fields(cls)}
    typed = {k: v for k, v in (("env_id", args.env_id), ("seed", args.seed),
                               ("total_timesteps", args.total_timesteps), ("device", args.device)) if v is not None}
    overrides = _parse_set(args.overrides)
    flags = {"env_id": "--env", "seed": "--seed", "total_timesteps": "--total-timesteps", "device": "--device"}
    twice = sorted(set(typed) & set(overrides))
    if twice:
        raise CLIError(f"{twice[0]} is given twice ({flags[twice[0]]} and --set {twice[0]}=...); give it once")
    env_id = typed.get("env_id", overrides.get("env_id", getattr(cls, "env_id", "env")))
    seed = typed.get("seed", overrides.get("seed", getattr(cls, "seed", 0)))
    out = Path(args.out or f"runs/{args.algo}-{env_id}-{seed}")
    if "checkpoint_path" in names and "checkpoint_path" not in overrides:
        typed["checkpoint_path"] = str(out / "checkpoint.pt")
    if "log_path" in names and "log_path" not in overrides:
        typed["log_path"] = str(out / "history.jsonl")
    # algorithms with per-environment presets (PPO, TRPO, ...) start from them
    cfg = build_config(cls, overrides, typed, factory=getattr(module, "default_config", None))
    plot_path = out / "learning_curve.png"
    if out.is_dir():  # the trainer checks its own files; the plot is written by us, at the end
        check_writable(plot_path, "learning-curve plot")
    print(f"training {args.algo} -> {out}", flush=True)
    ckpt = getattr(cfg, "checkpoint_path", None)
    try:
        result = module.train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    except TrainingInterrupted as exc:
        where = (f"checkpoint saved at step {exc.step} in {exc.checkpoint_path}" if exc.checkpoint_path
                 else "no checkpoint_path was set, so nothing was saved")
        print(f"interrupted: {where}", file=sys.stderr)
        if exc.checkpoint_path:
            print(f"resume with: {_resume_command(argv)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # a second Ctrl-C (or one outside the training loop): stopped at once
        last = f"the last checkpoint written, if any, is {ckpt}" if ckpt else "nothing was saved"
        print(f"interrupted at once, without a new checkpoint: {last}", file=sys.stderr)
        if ckpt and Path(ckpt).exists():
            print(f"resume with: {_resume_command(argv)}", file=sys.stderr)
        return 130
    print(_summary(result, args.algo))
    _plot(result, args.algo, plot_path)
    written = [p for p in (getattr(cfg, "log_path", None), str(plot_path), ckpt) if p and Path(p).exists()]
    print(f"wrote {', '.join(map(str, written))}")
    return 0


def _seed_ranges(algo: str, cfg: dict) -> list[tuple[int, int, str]]:
    """``(first, last, what)`` seed ranges a training run used for its environments."""
    s = int(cfg.get("seed", 0))
    n = {"dqn": cfg.get("num_envs", 1), "ppo": cfg.get("num_envs", 1), "trpo": cfg.get("num_envs", 1),
         "reinforce": cfg.get("episodes_per_update", 1)}.get(algo)
    ranges = []
    if n:
        ranges.append((s, s + int(n) - 1, "training environments"))
    if cfg.get("eval_every"):
        ranges.append((s + 100_000, s + 100_000 + int(cfg.get("eval_episodes", 10)) - 1, "evaluations during training"))
    return ranges


def _eval(argv: list[str]) -> int:
    from rlcore.algos import evaluate, module_for_checkpoint
    from rlcore.lifecycle import CheckpointError, check_writable, load_run_checkpoint

    args = _eval_parser().parse_args(argv)
    for name, low in (("episodes", 1), ("video_episodes", 1), ("max_steps", 1)):
        if getattr(args, name) < low:
            raise CLIError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.seed is not None and args.seed < 0:
        raise CLIError(f"--seed must be a non-negative integer, got {args.seed}")
    run = Path(args.run_dir)
    ckpt = run / "checkpoint.pt" if run.is_dir() else run
    if not run.exists():
        raise CLIError(f"{str(run)!r} does not exist; pass the folder of a run (python -m rlcore train ... --out DIR)")
    if not ckpt.exists():
        raise CLIError(f"no checkpoint.pt in {str(run)!r}; train first (python -m rlcore train ... --out {run}) "
                       f"or pass the checkpoint file")
    state = load_run_checkpoint(ckpt)
    if "algo" not in state or not isinstance(state.get("config"), dict):
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has no algorithm name or config; it was not written by "
                              f"`python -m rlcore train` (or by an older rlcore): train again")
    algo = state["algo"]
    module = module_for_checkpoint(algo)
    if args.video is not None:
        suffix = Path(args.video).suffix.lower()
        if suffix not in (".mp4", ".gif"):
            raise CLIError(f"--video expects a file ending in .mp4 (or .gif), got {args.video!r}")
        check_writable(args.video, "video")
    cfg = state["config"]
    env_id = cfg["env_id"]
    used = _seed_ranges(algo, cfg)
    if args.seed is None:
        seed = max([EVAL_SEED] + [last + 1 for first, last, _ in used if last >= EVAL_SEED])
    else:
        seed = args.seed
    last_seed = seed + args.episodes - 1
    overlap = [what for first, last, what in used if first <= last_seed and seed <= last]
    agent = module.load_agent(state)
    act = module.act
    returns = evaluate(lambda o: act(agent, o), env_id, args.episodes, seed=seed, max_steps=args.max_steps)
    step = state.get("global_step")
    print(f"{algo} on {env_id} (checkpoint {ckpt}{f', step {step}' if step is not None else ''}): "
          f"{args.episodes} greedy episodes on seeds {seed}..{last_seed}")
    used_text = [f"seeds {first}..{last} ({what})" for first, last, what in used]
    if algo == "grpo_control":
        used_text.append("random reset seeds drawn from 0..2^31-2 (GRPO's groups; a clash is very unlikely)")
    if used_text:
        print(f"  training used {' and '.join(used_text)}")
    if overlap:
        print(f"note: seeds {seed}..{last_seed} include seeds used by the {' and '.join(overlap)}; "
              f"drop --seed to evaluate on unseen seeds", file=sys.stderr)
    print(f"  return: {returns.mean():.2f} ± {returns.std():.2f} (mean ± std; min {returns.min():.2f}, "
          f"max {returns.max():.2f})")
    if args.video is not None:
        from rlcore.envs import frames_to_video, record_episode

        frames = []
        for i in range(min(args.video_episodes, args.episodes)):
            f, ret = record_episode(env_id, lambda o: act(agent, o), seed=seed + i, max_steps=args.max_steps)
            frames += f
        fmt = Path(args.video).suffix.lower().lstrip(".")
        Path(args.video).write_bytes(frames_to_video(frames, fmt=fmt))
        n = min(args.video_episodes, args.episodes)
        print(f"wrote {args.video} ({n} episode{'s' if n > 1 else ''}, {len(frames)} frames)")
    return 0


def _list() -> int:
    for name, mod in ALGORITHMS.items():
        try:
            get_algorithm(name)
            status = ""
        except ValueError:
            status = "  (not available yet)"
        print(f"{name:10s} {mod}{status}")
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _Parser(prog="python -m rlcore", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="commands:\n  list                 list the algorithms\n"
                            "  train <algo> [...]   train one (see: train <algo> --help)\n"
                            "  eval RUN_DIR [...]   evaluate a trained run (see: eval --help)")
    parser.add_argument("command", choices=COMMANDS)
    try:
        import gymnasium

        gym_errors: tuple = (gymnasium.error.Error,)
    except ImportError:  # pragma: no cover
        gym_errors = ()
    try:
        if not argv or argv[0] not in COMMANDS:
            if argv and not argv[0].startswith("-"):
                close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise CLIError(f"unknown command {argv[0]!r}{hint}; choose one of: {', '.join(COMMANDS)}")
            parser.parse_args(argv[:1])  # --help, or the missing command
        if argv[0] == "list":
            return _list()
        if argv[0] == "eval":
            return _eval(argv[1:])
        return _train(argv[1:])
    except (CLIError, ValueError, TypeError, OSError, *gym_errors) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
