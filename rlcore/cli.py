"""Command line: ``python -m rlcore list`` and ``python -m rlcore train <algo> ...``.

Examples::

    python -m rlcore list
    python -m rlcore train dqn --env CartPole-v1 --seed 1
    python -m rlcore train reinforce --env Pendulum-v1 --total-timesteps 200000 --set baseline=value
    python -m rlcore train ppo --help          # every hyperparameter with its docstring

A run writes ``history.jsonl`` (every metric), ``learning_curve.png`` and ``checkpoint.pt`` into
``--out`` (default ``runs/<algo>-<env>-<seed>``); ``--resume`` continues from that checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import types
import typing
from pathlib import Path

from rlcore.algos import ALGORITHMS, config_class, field_docs, get_algorithm

__all__ = ["main", "build_config", "convert_value"]

_TRUE, _FALSE = {"1", "true", "yes", "on", "y", "t"}, {"0", "false", "no", "off", "n", "f"}


def convert_value(text: str, tp, name: str = "value"):
    """Convert the command-line string ``text`` to the annotated type ``tp`` of a config field.

    Supports ``int`` (``50000``, ``50_000``, ``5e4``), ``float`` (``inf`` too), ``bool``
    (true/false/1/0/yes/no), ``str``, ``X | None`` (``none``/``null``) and ``tuple[int, ...]`` (``64,64``).
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() in ("none", "null", ""):
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return convert_value(text, a, name)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if origin in (tuple, list):
        item = args[0] if args else str
        parts = [p for p in text.replace("(", "").replace(")", "").replace("[", "").replace("]", "").split(",") if p.strip()]
        vals = [convert_value(p.strip(), item, name) for p in parts]
        return tuple(vals) if origin is tuple else vals
    if tp is bool:
        t = text.strip().lower()
        if t in _TRUE:
            return True
        if t in _FALSE:
            return False
        raise ValueError(f"{name} expects a boolean (true/false), got {text!r}")
    if tp is int:
        try:
            return int(text.replace("_", ""))
        except ValueError:
            pass
        try:
            f = float(text)
        except ValueError:
            f = math.nan
        if math.isfinite(f) and f == int(f):
            return int(f)
        raise ValueError(f"{name} expects an integer, got {text!r}")
    if tp is float:
        try:
            return float(text.replace("_", ""))
        except ValueError:
            raise ValueError(f"{name} expects a number, got {text!r}") from None
    if tp is str or tp is typing.Any:
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
            raise ValueError(f"{cls.__name__} has no field {key!r}; valid fields: {', '.join(names)}")
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
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _train_parser(algo: str | None) -> argparse.ArgumentParser:
    epilog = None
    if algo is not None:
        try:
            epilog = _fields_help(config_class(get_algorithm(algo)))
        except ValueError as exc:
            epilog = str(exc)
    p = argparse.ArgumentParser(prog="python -m rlcore train", description="Train an algorithm on a Gymnasium task.",
                                epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("algo", help=f"one of: {', '.join(ALGORITHMS)}")
    p.add_argument("--env", dest="env_id", default=None, help="Gymnasium id, e.g. CartPole-v1 (default: the config's)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the config's)")
    p.add_argument("--total-timesteps", type=lambda s: convert_value(s, int, "--total-timesteps"), default=None,
                   help="environment steps (default: the config's)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config field; repeatable")
    p.add_argument("--out", default=None, help="output folder (default runs/<algo>-<env>-<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
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


def _train(argv: list[str]) -> int:
    algo = next((a for a in argv if not a.startswith("-")), None)
    args = _train_parser(algo).parse_args(argv)
    module = get_algorithm(args.algo)
    cls = config_class(module)
    names = {f.name for f in dataclasses.fields(cls)}
    typed = {k: v for k, v in (("env_id", args.env_id), ("seed", args.seed),
                               ("total_timesteps", args.total_timesteps), ("device", args.device)) if v is not None}
    overrides = _parse_set(args.overrides)
    env_id = typed.get("env_id", overrides.get("env_id", getattr(cls, "env_id", "env")))
    seed = typed.get("seed", overrides.get("seed", getattr(cls, "seed", 0)))
    out = Path(args.out or f"runs/{args.algo}-{env_id}-{seed}")
    if "checkpoint_path" in names and "checkpoint_path" not in overrides:
        typed["checkpoint_path"] = str(out / "checkpoint.pt")
    if "log_path" in names and "log_path" not in overrides:
        typed["log_path"] = str(out / "history.jsonl")
    # algorithms with per-environment presets (PPO, TRPO, ...) start from them
    cfg = build_config(cls, overrides, typed, factory=getattr(module, "default_config", None))
    out.mkdir(parents=True, exist_ok=True)
    print(f"training {args.algo} -> {out}", flush=True)
    result = module.train(cfg, resume=args.resume, progress=not args.no_progress)
    print(_summary(result, args.algo))
    _plot(result, args.algo, out / "learning_curve.png")
    print(f"wrote {out / 'history.jsonl'}, {out / 'learning_curve.png'}, {out / 'checkpoint.pt'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m rlcore", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="commands:\n  list                 list the algorithms\n"
                                            "  train <algo> [...]   train one (see: train <algo> --help)")
    parser.add_argument("command", choices=["list", "train"])
    if not argv or argv[0] not in ("list", "train"):
        parser.parse_args(argv[:1])  # prints usage / help and exits
    try:
        if argv[0] == "list":
            for name, mod in ALGORITHMS.items():
                try:
                    get_algorithm(name)
                    status = ""
                except ValueError:
                    status = "  (not available yet)"
                print(f"{name:10s} {mod}{status}")
            return 0
        return _train(argv[1:])
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
