"""``tenfold train``: the paper's data-parallel training with compressed weight averaging.

The same options work, one process per rank, under
``torchrun --nproc_per_node=K -m tenfold train ...`` (rank and world size from torchrun's
environment; ``--workers`` defaults to the world size).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenfold.errors import ConfigError

if TYPE_CHECKING:
    from tenfold.train.config import TrainConfig

__all__ = ["add_arguments", "add_parser", "config_from_args", "run"]

DESCRIPTION = """\
Train a model with K data-parallel workers, each on its own shard of the data: the paper's
784-392-50-10 tanh network (--model paper-mlp, the default), a small BatchNorm CNN on
Fashion-MNIST (cnn) or a small character-level transformer on Shakespeare (char-gpt).
After every local epoch (or every --sync-every steps) the workers exchange tenfold packets
over torch.distributed (gloo) and all continue from the same new shared model.

By default each packet carries the worker's delta (how far it moved since the last shared
model) with error feedback (plus what earlier packets failed to carry), quantized and
ANS-coded at --rate 1 bit per parameter: ~32x less than float32. --scheme paper is the
paper's system (Øland & Raj): the weights themselves, entropy-adaptive N bits per layer,
canonical Huffman coding: measured 9.73 bits/param at the paper's settings, ~3.3x less
than float32.

Prints a progress bar and, per synchronisation, one line: epoch, test accuracy and loss
(char-gpt: validation loss in nats/char and perplexity), bits/param as sent, N per layer,
bytes on the wire. Writes config.json, metrics.jsonl, model.safetensors, accuracy.png
(char-gpt: val_loss.png) and bits.png into --out, and after every synchronisation a
checkpoint (checkpoint.safetensors): --resume DIR continues an interrupted run from it,
with exactly the result the uninterrupted run would have had.
"""

EPILOG = """\
examples:
  tenfold train                                    # 5 workers, Fashion-MNIST, deltas at 1 bit/param
  tenfold train --rate 0.5                         # deltas at 0.5 bits/param (about 64x)
  tenfold train --scheme paper                     # the paper: weights, EntropyAdaptive c=6
  tenfold train --policy fixed --bits 8 --epochs 20 --out runs/fixed8
  tenfold train --policy lossless --workers 2      # the uncompressed baseline
  tenfold train --dataset mnist --data ~/mnist     # the paper's data, from a directory
  tenfold train --simulate                         # all workers in this process, same weights
  tenfold train --model char-gpt --workers 4 --steps 500   # a transformer, DiLoCo-style syncs
  tenfold train --model cnn --steps 200            # a BatchNorm CNN (statistics averaged too)
  torchrun --standalone --nproc_per_node=4 -m tenfold train --epochs 5 --out runs/tr
  tenfold train --resume runs/fixed8                # continue an interrupted run

exit codes: 0 done, 1 the run failed (a rank died, diverged, timed out), 2 bad option, data
or checkpoint, 130 interrupted (Ctrl-C).
"""

#: --policy NAME -> the policy's id in the codec's registry (``Policy.from_config`` builds
#: it from ``{"id": ..., <fields>}``; ``get_config()["id"]`` gives it back).
POLICY_IDS = {
    "target-rate": "target_rate",
    "relative-step": "relative_step",
    "entropy": "entropy",
    "fixed": "fixed",
    "gradient-rms": "grad_rms",
    "lossless": "lossless",
}
POLICIES = tuple(POLICY_IDS)

#: --scheme paper: the paper's weights coding, exactly as tenfold reproduce runs it.
SCHEMES = ("paper",)

#: --c1 when not given: the bit floor of GradientRMS. log2(G + 1) is ~0 for the small
#: gradients of a trained network, so N ~ c1; 8 bits is where the paper's Fig. 1 recovers
#: the uncompressed accuracy.
DEFAULT_C1 = 8.0

#: Options that never conflict with --resume (output only).
_RESUME_NEUTRAL = {"quiet", "resume", "out"}

#: argparse types of the config fields' annotations (``from __future__ import annotations``
#: leaves them as strings).
_TYPES = {"int": int, "float": float, "float | None": float, "str": str, "str | None": str}

# Each policy option: the policy it belongs to (a stray --bits etc. is refused) and the
# field of that policy's config it sets.
_POLICY_PARAMS = {
    "rate": ("target-rate", "bits_per_param"),
    "alpha": ("relative-step", "alpha"),
    "bits": ("fixed", "bits"),
    "F": ("entropy", "F"),
    "M": ("entropy", "M"),
    "c": ("entropy", "c"),
    "c1": ("gradient-rms", "c1"),
    "c0": ("gradient-rms", "c0"),
}

#: The policies that draw samples: their config takes --seed.
_SEEDED = ("target-rate", "entropy")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``tenfold train`` (without torch: a stub that says what to install)."""
    try:
        import tenfold.train  # noqa: F401  (finds torch, imports nothing heavy)
    except ImportError as exc:
        stub = subparsers.add_parser(
            "train", help="train (needs: pip install 'tenfold[train]')", description=str(exc)
        )
        stub.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        stub.set_defaults(_missing=str(exc))
        return stub
    p = subparsers.add_parser(
        "train",
        help="train with K workers and compressed weight averaging",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    return p


_GIVEN = "_given_options"


def _mark_given(namespace: argparse.Namespace, dest: str) -> None:
    setattr(namespace, _GIVEN, {*getattr(namespace, _GIVEN, ()), dest})


class _Store(argparse.Action):
    """argparse's ``store``, also recording that the option was given on the command line.

    --resume must tell "--epochs 20 given" from "20 by default": only given options can
    conflict with the saved configuration.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        _mark_given(namespace, self.dest)


class _StoreTrue(argparse.Action):
    """argparse's ``store_true``, also recording that the option was given."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("default", False)
        super().__init__(option_strings, dest, nargs=0, const=True, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, True)
        _mark_given(namespace, self.dest)


def given_options(args: argparse.Namespace) -> set[str]:
    """The dests of the options given on the command line (not left at their default)."""
    return set(getattr(args, _GIVEN, ()))


def _dest(f: Any, o: Any) -> str:
    """argparse dest of a config field's option: the field's name, or the switch's."""
    return o.flag[2:].replace("-", "_") if o.invert else f.name


def _flagged() -> list[tuple[Any, Any]]:
    from tenfold.train.config import options

    return [(f, o) for f, o in options() if o.flag is not None]


def _default_text(f: Any) -> str:
    """`` (default X; cnn Y, char-gpt Z)``: the field's default and the models' own."""
    from tenfold.train.config import MODEL_DEFAULTS

    if f.default is dataclasses.MISSING or isinstance(f.default, bool) or f.default is None:
        return ""  # None: the help says what the default is
    per_model = [
        f"{m} {d[f.name]:g}" if isinstance(d[f.name], float) else f"{m} {d[f.name]}"
        for m, d in MODEL_DEFAULTS.items()
        if f.name in d
    ]
    extra = f"; {', '.join(per_model)}" if per_model else ""
    return (
        f" (default {f.default:g}{extra})"
        if isinstance(f.default, float)
        else (f" (default {f.default}{extra})")
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add every ``tenfold train`` option to ``p``.

    The options that set one config field each are generated from the field's
    :class:`~tenfold.train.config.Option` (flag, help, choices, group): the config is their
    one source. Defaults are left None here so that the chosen model's defaults apply to
    whatever the user does not set (``TrainConfig.for_model``).
    """
    from tenfold.train.config import DEFAULT_RATE, OPTION_GROUPS

    # Every option below records that it was given (see given_options).
    p.register("action", None, _Store)
    p.register("action", "store", _Store)
    p.register("action", "store_true", _StoreTrue)
    groups = {key: p.add_argument_group(title) for key, title in OPTION_GROUPS.items()}
    for f, o in _flagged():
        help_ = (o.help + _default_text(f)).replace("%", "%%")
        if o.invert:
            groups[o.group].add_argument(o.flag, dest=_dest(f, o), action="store_true", help=help_)
        elif isinstance(f.default, bool):  # a switch that sets the field to True
            groups[o.group].add_argument(
                o.flag, dest=f.name, action="store_true", default=None, help=help_
            )
        else:
            groups[o.group].add_argument(
                o.flag,
                dest=f.name,
                type=_TYPES[str(f.type)],
                choices=o.choices,
                metavar=o.metavar,
                default=None,
                help=help_,
            )
    g = groups["sync"]
    g.add_argument(
        "--simulate",
        action="store_true",
        help="run all K workers in this one process with the simulated averager "
        "(bit for bit the same weights; no torch.distributed)",
    )
    g = groups["send"]
    g.add_argument(
        "--scheme",
        choices=SCHEMES,
        default=None,
        help="paper: the paper's system exactly (--transmit weights --policy entropy, "
        "F=0.03, M=4, c=6)",
    )
    g.add_argument(
        "--policy",
        choices=POLICIES,
        default=None,
        help="target-rate (default): mid-tread step per tensor chosen for --rate bits/param, "
        "ANS coded; relative-step: step = --alpha x RMS of the delta; "
        "entropy: N = ceil(H + c), H estimated per layer (paper Alg. 1); "
        "fixed: N = --bits; gradient-rms: N from the gradient RMS (paper §3.2); "
        "lossless: raw float32 (the uncompressed baseline)",
    )
    g.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="BITS",
        help=f"target-rate: bits per parameter, every byte counted (default {DEFAULT_RATE:g})",
    )
    g.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="relative-step: the step in units of the delta's RMS (default 1)",
    )
    g.add_argument("--bits", type=int, default=None, help="fixed: bits per weight (default 8)")
    g.add_argument(
        "--F",
        "--sample-rate",
        dest="F",
        type=float,
        default=None,
        help="entropy: fraction of weights sampled for the entropy estimate (default 0.03)",
    )
    g.add_argument(
        "--M",
        type=int,
        default=None,
        help="entropy: bits of the preliminary quantizer for the estimate (default 4)",
    )
    g.add_argument(
        "--c", type=float, default=None, help="entropy: floor in bits, N = ceil(H + c) (default 6)"
    )
    g.add_argument(
        "--c1",
        type=float,
        default=None,
        help=f"gradient-rms: bit floor c1 in N = ceil(log2(G + c0) + c1) (default {DEFAULT_C1:g})",
    )
    g.add_argument(
        "--c0",
        type=float,
        default=None,
        help="gradient-rms: offset c0 > 0 (default 1, the paper's)",
    )
    g = groups["eval"]
    g.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="run directory (default runs/train-<date>-<time>)",
    )
    g.add_argument(
        "--overwrite", action="store_true", help="reuse an --out directory that holds a run"
    )
    g.add_argument(
        "--quiet", action="store_true", help="no progress bar or per-sync lines; summary only"
    )

    g = p.add_argument_group("checkpoint and resume")
    overridable = ", ".join(o.flag for _, o in _flagged() if o.resume == "override")
    g.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue the interrupted run in RUN_DIR from its last checkpoint (written "
        "after every synchronisation), with its saved configuration; the result is bit for "
        f"bit the uninterrupted run's. Only {overridable} and --quiet may be given with it",
    )


def _policy_name(args: argparse.Namespace) -> str:
    """--policy as given, or what --scheme implies, or the default (target-rate)."""
    if args.scheme == "paper":
        if args.policy not in (None, "entropy") or "transmit" in given_options(args):
            raise ConfigError("--scheme paper fixes --policy entropy and --transmit weights")
        return "entropy"
    return args.policy or "target-rate"


def _policy_config(args: argparse.Namespace) -> dict[str, Any]:
    """The policy's JSON config, built by the policy's own class through the registry
    (``Policy.from_config``), which validates it."""
    from tenfold.codec.policy import Policy
    from tenfold.train.config import DEFAULT_RATE

    # the CLI's defaults where the policy has none of its own (--rate, --bits, --c1)
    defaults: dict[str, dict[str, Any]] = {
        "target-rate": {"bits_per_param": DEFAULT_RATE},
        "fixed": {"bits": 8},
        "gradient-rms": {"c1": DEFAULT_C1},
    }
    name = _policy_name(args)
    config: dict[str, Any] = {"id": POLICY_IDS[name], **defaults.get(name, {})}
    for param, (owner, field) in _POLICY_PARAMS.items():
        value = getattr(args, param)
        if value is None:
            continue
        if name != owner:
            flag = "--F/--sample-rate" if param == "F" else f"--{param}"
            raise ConfigError(f"{flag} applies to --policy {owner}, not --policy {name}")
        config[field] = value
    if name in _SEEDED:
        config["seed"] = args.seed or 0
    return dict(Policy.from_config(config).get_config())


def config_from_args(args: argparse.Namespace, *, world_size: int | None = None) -> TrainConfig:
    """The :class:`~tenfold.train.config.TrainConfig` the options describe.

    Raises:
        ValueError: a bad value (the message names the option or field).
    """
    from tenfold.train.config import TrainConfig

    values: dict[str, Any] = {}
    for f, o in _flagged():
        value = getattr(args, _dest(f, o))
        if o.invert:
            if value:
                values[f.name] = False
        elif value is not None:
            values[f.name] = value
    if world_size is not None:
        workers = values.get("workers")
        if workers is not None and workers != world_size:
            raise ConfigError(
                f"--workers {workers} differs from torchrun's world size {world_size}"
            )
        values["workers"] = world_size
    values["policy"] = _policy_config(args)
    if args.scheme == "paper":
        values["transmit"] = "weights"
    return TrainConfig.for_model(values.pop("model", "paper-mlp"), **values)


def _err(message: str) -> None:
    print(f"tenfold train: error: {message}", file=sys.stderr)


#: The policies' class names, as their validation messages begin ("TargetRate.c0 ...").
_POLICY_CLASSES = ("TargetRate", "RelativeStep", "Fixed", "EntropyAdaptive", "GradientRMS")


def _flag_names() -> tuple[dict[str, str], dict[str, str]]:
    """``(config field -> flag, policy field -> flag)``: what a user typed for a field."""
    config = {f.name: o.flag for f, o in _flagged()}
    policy = {field: f"--{param}" for param, (_, field) in _POLICY_PARAMS.items()}
    policy["seed"] = "--seed"
    return config, policy


def user_message(exc: BaseException) -> str:
    """``exc``'s message with the internal field it names replaced by the option's flag.

    TrainConfig and the policies validate their own fields and name them
    (``TargetRate.bits_per_param must be in (0, 32], got -1.0``, ``timeout_s must be a
    positive finite number``); the user typed ``--rate`` and ``--timeout``.
    """
    import re

    message = str(exc)
    config, policy = _flag_names()
    classes = "|".join(_POLICY_CLASSES)
    m = re.match(rf"(?:policy: )?(?:bad policy config .*?: )?(?:{classes})\.(\w+)\b", message)
    if m and m.group(1) in policy:
        return policy[m.group(1)] + message[m.end() :]
    m = re.match(r"(\w+)\b", message)
    if m and m.group(1) in config:
        return config[m.group(1)] + message[m.end() :]
    return message


def _describe_transmit(config: TrainConfig) -> str:
    if config.transmit == "weights":
        return "weights"
    return "deltas" + (" + error feedback" if config.error_feedback else " (no error feedback)")


def _describe_policy(policy: Mapping[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in policy.items() if k not in ("id", "seed"))
    return f"{policy.get('id', '?')}({params})"


def run(args: argparse.Namespace) -> int:
    """Run ``tenfold train``; returns the exit code."""
    if getattr(args, "_missing", None):  # installed without the trainer's packages
        _err(args._missing)
        return 2
    where: dict[str, Path] = {}  # the run directory, once known (for the Ctrl-C message)
    try:
        return _run(args, where)
    except KeyboardInterrupt:
        _interrupted(where.get("out"), torchrun=_under_torchrun())
        return 130


def _under_torchrun() -> bool:
    from tenfold.train.launch import torchrun_env

    return torchrun_env() is not None


def _interrupted(out: Path | None, *, torchrun: bool) -> None:
    """Ctrl-C: say what was kept and the exact command that continues the run."""
    from tenfold.train.checkpoint import CHECKPOINT

    if out is None:
        print("tenfold train: interrupted before training started", file=sys.stderr)
        return
    if (out / CHECKPOINT).is_file():
        command = (
            f"the same torchrun command with --resume {out} (and no other training options)"
            if torchrun
            else f"tenfold train --resume {out}"
        )
        print(
            f"tenfold train: interrupted; {out} keeps the checkpoint of the last finished "
            f"synchronisation. Continue the run with: {command}",
            file=sys.stderr,
        )
    else:
        print(
            f"tenfold train: interrupted before the first synchronisation finished: nothing "
            f"to resume. Start again with --out {out} --overwrite (or another --out)",
            file=sys.stderr,
        )


def _run(args: argparse.Namespace, where: dict[str, Path]) -> int:
    from tenfold.train.data import DatasetError
    from tenfold.train.launch import RankFailure, spawn_training, torchrun_env, torchrun_main
    from tenfold.train.progress import plural
    from tenfold.train.recipes import get_recipe, locate_data

    env = torchrun_env()
    lead = env is None or env[0] == 0
    try:
        config = config_from_args(args, world_size=None if env is None else env[1])
    except ValueError as exc:
        _err(user_message(exc))
        return 2
    if args.resume is not None:
        where["out"] = Path(args.resume)
        return _resume(args, env)
    out = Path(args.out or time.strftime("runs/train-%Y%m%d-%H%M%S"))
    where["out"] = out
    if (out / "metrics.jsonl").exists() and not args.overwrite:
        _err(_occupied(out))
        return 2
    if out.exists() and not out.is_dir():
        _err(f"--out {out} exists and is not a directory")
        return 2

    if env is not None:  # one rank of a torchrun job: torchrun reports which rank failed
        try:
            torchrun_main(config, out, progress=not args.quiet)
        except DatasetError as exc:
            _err(str(exc))
            return 2
        except Exception as exc:
            _err(f"rank {env[0]}: {type(exc).__name__}: {exc}")
            return 1
        if lead:
            _summary(out)
        return 0

    try:
        # Find (or download) and check the data once, here, before starting any rank: bad
        # input is exit 2, and the ranks then read known-good data.
        config, data = locate_data(config)
    except DatasetError as exc:
        _err(str(exc))
        return 2
    recipe = get_recipe(config.model)
    if recipe.fingerprint(data)["train"] < config.workers:
        _err(f"{recipe.describe(data)}: too few to feed {plural(config.workers, 'worker')}")
        return 2
    cap = f" (at most {plural(config.steps, 'step')})" if config.steps else ""
    print(
        f"tenfold train: {config.model}, {plural(config.workers, 'worker')}, policy "
        f"{_describe_policy(config.policy)}, sending {_describe_transmit(config)}, "
        f"{plural(config.epochs, 'epoch')}{cap}, "
        f"sync every {plural(config.sync_every, 'step') if config.sync_every else 'epoch'}"
        f"{', overlapped (each checkpoint waits for its sync)' if config.overlap else ''}"
        f"{f', outer lr {config.effective_outer_lr:g}' if config.effective_outer_lr != 1 else ''}, "
        f"{recipe.describe(data)} -> {out}",
        flush=True,
    )
    del data
    t0 = time.perf_counter()
    try:
        if args.simulate:
            from tenfold.train.loop import run_simulated

            run_simulated(config, run_dir=out, progress=not args.quiet)
        else:
            spawn_training(config, out, progress=not args.quiet)
    except RankFailure as exc:
        _err(f"the run failed: {exc}")
        return 1
    except (RuntimeError, ValueError) as exc:  # --simulate raises in this process
        _err(f"the run failed: {type(exc).__name__}: {exc}")
        return 1
    _summary(out, wall_s=time.perf_counter() - t0)
    return 0


def _occupied(out: Path) -> str:
    """The refusal for an ``--out`` that already holds a run, with the advice that works for
    it: ``--resume`` only where there is something left to train."""
    from tenfold.train.checkpoint import CHECKPOINT, CheckpointError, read_checkpoint
    from tenfold.train.progress import plural

    taken = f"{out} already holds a run (metrics.jsonl)"
    if not (out / CHECKPOINT).is_file():
        return f"{taken} with no checkpoint to resume; pick another --out or pass --overwrite"
    try:
        ckpt = read_checkpoint(out)
    except CheckpointError:  # --resume would refuse it too, and say why
        return f"{taken} whose checkpoint cannot be read; pick another --out or pass --overwrite"
    if ckpt.complete and _finished(out, ckpt.metrics_count):
        # a resumed run keeps its --epochs and --steps: a finished one cannot be extended
        return (
            f"{taken} that has finished ({plural(ckpt.syncs, 'synchronisation')}; --resume "
            "cannot extend it); pick another --out or pass --overwrite to replace it"
        )
    return (
        f"{taken}; pick another --out, pass --overwrite to replace it, or --resume {out} to "
        "continue it"
    )


def _resume_config(args: argparse.Namespace, saved: TrainConfig, world: int | None) -> TrainConfig:
    """The saved config with the allowed overrides; any other given option must agree.

    Raises:
        ValueError: an option conflicts with the saved configuration (names both values).
    """
    given = given_options(args)
    if "overwrite" in given:
        raise ConfigError("--resume continues a run, --overwrite starts a new one: pick one")
    if "out" in given and Path(args.out).resolve() != Path(args.resume).resolve():
        raise ConfigError(f"--out {args.out} differs from --resume {args.resume}")
    wanted = config_from_args(args, world_size=world)  # also validates the given values
    fields_by_dest = {_dest(f, o): (f, o) for f, o in _flagged()}
    conflicts = []
    for dest in sorted(given - _RESUME_NEUTRAL):
        if dest in fields_by_dest:
            f, o = fields_by_dest[dest]
            if o.resume != "override" and getattr(wanted, f.name) != getattr(saved, f.name):
                flag = o.flag if o.invert else f"{o.flag} {getattr(args, dest)}"
                conflicts.append(f"{flag} (the run has {f.name}={getattr(saved, f.name)!r})")
        elif dest in ("policy", "scheme", *_POLICY_PARAMS):
            mine = {k: v for k, v in wanted.policy.items() if k != "seed"}
            theirs = {k: v for k, v in saved.policy.items() if k != "seed"}
            if mine != theirs:
                conflicts.append(f"--{dest} (the run's policy is {_describe_policy(saved.policy)})")
        elif dest != "simulate":  # the mode is checked against the checkpoint by the caller
            conflicts.append(f"--{dest.replace('_', '-')}")
    if world is not None and world != saved.workers:
        conflicts.append(f"torchrun's world size {world} (the run has workers={saved.workers})")
    if conflicts:
        raise ConfigError(
            "--resume continues the run with its saved configuration; these options "
            f"conflict with it: {'; '.join(conflicts)}"
        )
    changes: dict[str, Any] = {
        f.name: getattr(wanted, f.name)
        for dest, (f, o) in fields_by_dest.items()
        if o.resume == "override" and dest in given
    }
    if changes.get("data_dir") is not None:
        changes["data_dir"] = os.path.abspath(changes["data_dir"])
    return saved.replace(**changes)


def _resume(args: argparse.Namespace, env: tuple[int, int] | None) -> int:
    """``tenfold train --resume RUN_DIR``: continue a run from its checkpoint."""
    from tenfold.train.checkpoint import CheckpointError, read_checkpoint
    from tenfold.train.data import DatasetError
    from tenfold.train.launch import RankFailure, spawn_training, torchrun_main
    from tenfold.train.progress import plural
    from tenfold.train.recipes import get_recipe

    out = Path(args.resume)
    try:
        ckpt = read_checkpoint(out)
        config = _resume_config(args, ckpt.config, None if env is None else env[1])
    except (CheckpointError, ValueError) as exc:
        _err(user_message(exc))
        return 2
    simulated = ckpt.mode == "simulated"
    if args.simulate and not simulated:
        _err(f"{out} holds a {ckpt.mode} run: it cannot be resumed with --simulate")
        return 2
    if env is not None and simulated:
        _err(f"{out} holds a --simulate run: resume it without torchrun")
        return 2
    lead = env is None or env[0] == 0
    if lead:
        try:
            recipe = get_recipe(config.model)
            fingerprint = recipe.fingerprint(recipe.load_data(config))
        except DatasetError as exc:
            _err(f"{exc} (the run's data; pass --data PATH if it moved)")
            return 2
        if fingerprint["sha256"] != ckpt.data.get("sha256"):
            _err(
                f"the data at {config.data_dir or config.dataset} ({fingerprint['train']} "
                f"training / {fingerprint['test']} test examples) is not the data the run in "
                f"{out} was trained on; pass --data PATH with the original files"
            )
            return 2
    if ckpt.complete and _finished(out, ckpt.metrics_count):
        if lead:
            print(
                f"tenfold train: {out} holds a complete run "
                f"({plural(ckpt.syncs, 'synchronisation')}): nothing to train. Its results "
                f"are in {out}{os.sep} (metrics.jsonl, model.safetensors, run.json, *.png); "
                "to train again, start a new run with another --out (a resumed run keeps "
                "its --epochs and --steps)",
                flush=True,
            )
        return 0
    if lead:
        if ckpt.complete:
            state = "had finished training; nothing to train, rewriting its final files"
        else:
            epoch = ckpt.step / max(1, ckpt.total_steps) * config.epochs
            state = f"continues after sync {ckpt.syncs}, epoch {epoch:.2f} of {config.epochs}"
        print(f"tenfold train: resuming {out}: the {ckpt.mode} run {state}", flush=True)
    t0 = time.perf_counter()
    try:
        if env is not None:
            torchrun_main(config, out, progress=not args.quiet, resume=True)
        elif simulated:
            from tenfold.train.loop import run_simulated

            run_simulated(config, run_dir=out, progress=not args.quiet, resume=True)
        else:
            spawn_training(config, out, progress=not args.quiet, resume=True)
    except RankFailure as exc:
        _err(f"the run failed: {exc}")
        return 1
    except CheckpointError as exc:
        _err(str(exc))
        return 2
    except (RuntimeError, ValueError) as exc:
        _err(f"the run failed: {type(exc).__name__}: {exc}")
        return 1
    if lead:
        _summary(out, wall_s=time.perf_counter() - t0, before=ckpt.syncs)
    return 0


def _finished(out: Path, syncs: int) -> bool:
    """The run in ``out`` wrote its final files after its last (``syncs``-th) record."""
    import json

    from tenfold.train.rundir import METRICS, MODEL, RUN

    try:
        run_info = json.loads((out / RUN).read_text())
        records = (out / METRICS).read_bytes().count(b"\n")
    except (OSError, ValueError):
        return False
    return bool(run_info.get("finished")) and (out / MODEL).is_file() and records == syncs


def _recorded_wall_s(out: Path) -> float | None:
    """run.json's ``wall_seconds`` (this session's training), None if it has none."""
    import json

    from tenfold.train.rundir import RUN

    try:
        value = json.loads((out / RUN).read_text()).get("wall_seconds")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def _summary(out: Path, wall_s: float | None = None, before: int | None = None) -> None:
    """Print the final summary from the run directory's metrics.jsonl.

    ``before``: synchronisations an earlier process had done (a resumed run).
    """
    from tenfold.train.progress import format_bytes, format_position, plural
    from tenfold.train.rundir import read_metrics

    metrics = read_metrics(out)
    if not metrics:
        print(f"tenfold train: no synchronisation recorded in {out}")
        return
    evaluated = [r for r in metrics if r["test_accuracy"] is not None]
    last = evaluated[-1] if evaluated else None
    best = max(evaluated, key=lambda r: r["test_accuracy"]) if evaluated else None
    bits = sum(r["bits_per_param"] for r in metrics) / len(metrics)
    sent = sum(r["bytes_all_ranks"] for r in metrics)
    raw = sum(4 * r["num_values"] * r["world_size"] for r in metrics)
    syncs = plural(len(metrics), "synchronisation")
    if before is None:
        lines = [f"tenfold train: done, {syncs}"]
    elif len(metrics) > before:
        lines = [
            f"tenfold train: done, {plural(len(metrics) - before, 'synchronisation')} this "
            f"session ({len(metrics)} in all)"
        ]
    else:
        lines = [f"tenfold train: done, nothing left to train ({syncs})"]
    if wall_s is not None:
        lines[0] += f" in {wall_s:.1f} s"
        training_s = _recorded_wall_s(out)
        if training_s is not None:
            # run.json times rank 0 from its run directory to its final files; the time
            # above also starts and stops the workers: two numbers, each named
            lines.append(
                f"  {training_s:.1f} s of it training (run.json's wall_seconds), the rest "
                "starting and stopping the workers"
            )
    if last is not None and best is not None:
        lines.append(
            f"  final test accuracy {100 * last['test_accuracy']:.2f}% "
            f"(loss {last['test_loss']:.4f}); best {100 * best['test_accuracy']:.2f}% at "
            f"{format_position(best, metrics)}"
        )
    val = [r for r in metrics if r.get("val_loss") is not None]
    if val:
        best_val = min(val, key=lambda r: r["val_loss"])
        lines.append(
            f"  final validation loss {val[-1]['val_loss']:.4f} nats/char (perplexity "
            f"{val[-1]['val_perplexity']:.2f}); best {best_val['val_loss']:.4f} at "
            f"{format_position(best_val, metrics)}"
        )
    lines.append(
        f"  mean {bits:.2f} bits/param as sent (float32: 32, {32 / bits:.1f}x less)"
        if bits
        else "  nothing sent (one worker)"
    )
    lines.append(
        f"  on the wire: {format_bytes(sent)} of packets from all ranks "
        f"(float32 would be {format_bytes(raw)})"
    )
    lines.append(f"  run directory: {out}{os.sep} (metrics.jsonl, model.safetensors, *.png)")
    print("\n".join(lines), flush=True)
