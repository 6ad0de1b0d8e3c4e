"""Experiment profiles: which training runs reproduce which figure of the paper.

A :class:`Profile` is a validated, frozen description of a sweep: the data (dataset, an
optional subset), the training hyperparameters shared by every run, the number of epochs,
the seeds, and the :class:`Setting` s (a codec policy plus optional TrainConfig overrides,
tagged with the figures that use it). :meth:`Profile.runs` expands it into one
:class:`RunSpec` per ``(setting, seed)``, each holding the complete
:class:`~tenfold.train.TrainConfig` of that run.

Two profiles ship (:data:`PROFILES`):

* ``quick`` - a CI smoke test: a 10,000-image subset, 3 epochs, 2 seeds, a handful of
  settings (one per figure); under a minute on 2 cores.
* ``full`` - the reproduction: the whole Fashion-MNIST training set, every setting of
  Figs. 1, 4 and 5 with 3 seeds, and the init x L1 ablation; sized from a measured epoch
  time to fit ~45 minutes on 2 cores (see :data:`FULL_EPOCHS`).

Groups (which figure or table a setting feeds):

=============  =================================================================
``baseline``   the unquantized (Lossless) reference of every figure
``fig1``       fixed N bits (paper Fig. 1)
``fig4a``      EntropyAdaptive with c + M = 10, c = 2..10 (10:10 = Fixed(10))
``fig4b``      EntropyAdaptive with M = 4, c = 2..8
``fig5``       bits/param per epoch, (c=5, M=4) and (c=6, M=4)
``headline``   the paper's headline table
``ablation``   the init x L1 grid at c=6, M=4 (how weight entropy sets the bits)
=============  =================================================================

Example:
    >>> p = get_profile("quick")
    >>> len(p.runs()) == sum(len(s.seeds or p.seeds) for s in p.settings)
    True
    >>> p.runs()[0].key
    'baseline__seed0'
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tenfold.train.config import DATASETS, INITS, TrainConfig, make_policy, sweep_fields

__all__ = [
    "ABLATION_INITS",
    "ABLATION_L1",
    "FIG1_BITS",
    "FIG4A_FLOORS",
    "FIG4B_FLOORS",
    "FULL_EPOCHS",
    "GROUPS",
    "PROFILES",
    "TRAIN",
    "Profile",
    "RunSpec",
    "Setting",
    "ablation_settings",
    "entropy_setting",
    "fixed_setting",
    "full_profile",
    "get_profile",
    "lossless_setting",
    "paper_settings",
    "quick_profile",
]

#: Figure / table tags a setting may carry (see the module docstring).
GROUPS = ("baseline", "fig1", "fig4a", "fig4b", "fig5", "headline", "ablation")

#: Paper Fig. 1: fixed quantization levels N (the paper went to 30; 24 is the codec's max).
FIG1_BITS: tuple[int, ...] = (*range(2, 17), 24)
#: Paper Fig. 4a: floors c with ceiling c + M = 10 (c = 10 is Fixed(10), "10:10").
FIG4A_FLOORS: tuple[int, ...] = tuple(range(2, 11))
#: Paper Fig. 4b: floors c at M = 4 (ceilings 6..12).
FIG4B_FLOORS: tuple[int, ...] = tuple(range(2, 9))
#: The ablation: initialisation schemes (shape and scale of the initial weights) ...
ABLATION_INITS: tuple[str, ...] = ("glorot-uniform", "lecun-normal", "torch-default")
#: ... times L1 strengths: the headline's 1e-6 ("light L1"), 1e-5, and 1e-4 (strong: the
#: subgradient alone moves a weight by ~0.02 over 16 epochs at lr 0.05, about layer 1's
#: weight scale).
ABLATION_L1: tuple[float, ...] = (1e-6, 1e-5, 1e-4)

#: Epochs of the full profile, sized from a measured epoch time: one epoch of 5 simulated
#: workers on the 60,000-image training set took 2.41 s alone and 2.49-2.91 s (median 2.65 s,
#: 3 measurements) with two runs in parallel (one torch thread each) on the 2-core build
#: machine when otherwise idle. 117 runs x 16 epochs x 2.65 s / 2 jobs = 41 min (45 min at
#: 2.91 s), plus ~1 min of process start-up and the report: within the ~45-60 min available.
#: Re-measure with ``make reproduce ARGS="--profile full --estimate --jobs 2"``; on a busier
#: machine lower ``--epochs``.
FULL_EPOCHS = 16

#: TrainConfig fields a Setting may override, and those the profile itself sets (the
#: config's Option.sweep rule is their one source).
_OVERRIDABLE = sweep_fields("setting")
_PROFILE_OWNED = sweep_fields("profile")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _freeze(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in mapping.items()}


@dataclass(frozen=True, kw_only=True)
class Setting:
    """One experimental condition: a codec policy (+ TrainConfig overrides), many seeds.

    Attributes:
        name: file-safe id (``[A-Za-z0-9._-]``, no ``__``); runs are saved as
            ``runs/<name>__seed<k>.json``.
        label: how figures and tables print it (``"N=8"``, ``"10:6"``, ``"baseline"``).
        policy: the policy's JSON config without a seed (``{"id": "fixed", "bits": 8}``);
            an EntropyAdaptive gets ``seed = run seed`` (as ``tenfold train`` does).
        groups: figure/table tags from :data:`GROUPS`.
        overrides: TrainConfig fields that differ from the profile's (e.g. ``init``, ``l1``).
        seeds: the seeds of this setting (None: the profile's).
        peer: a peer method's config (:func:`paper.peers.peer_from_config`)
            that replaces tenfold's codec for this setting (``policy`` is then ignored and
            should be ``{"id": "lossless"}``); None for tenfold's own policies.

    Example:
        >>> entropy_setting(c=6, M=4, groups=("headline",)).label
        '10:6'
    """

    name: str
    label: str
    policy: Mapping[str, Any]
    groups: tuple[str, ...] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] | None = None
    peer: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name) or "__" in self.name:
            raise ValueError(
                f"name must match [A-Za-z0-9][A-Za-z0-9._-]* without '__', got {self.name!r}"
            )
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"label must be a non-empty string, got {self.label!r}")
        if not isinstance(self.policy, Mapping) or "seed" in self.policy:
            raise ValueError(
                f"policy must be a policy config without 'seed' (added per run), got {self.policy!r}"
            )
        try:
            make_policy(_policy_with_seed(self.policy, 0))
        except ValueError as exc:
            raise ValueError(f"policy: {exc}") from exc
        groups = tuple(self.groups)
        bad = [g for g in groups if g not in GROUPS]
        if bad:
            raise ValueError(f"groups: unknown {bad}; known: {', '.join(GROUPS)}")
        object.__setattr__(self, "groups", groups)
        if not isinstance(self.overrides, Mapping):
            raise ValueError(f"overrides must be a mapping, got {self.overrides!r}")
        bad = [k for k in self.overrides if k not in _OVERRIDABLE]
        if bad:
            raise ValueError(f"overrides: {bad} cannot be overridden; allowed: {_OVERRIDABLE}")
        object.__setattr__(self, "policy", _freeze(self.policy))
        object.__setattr__(self, "overrides", _freeze(self.overrides))
        if self.seeds is not None:
            object.__setattr__(self, "seeds", _check_seeds(self.seeds, "seeds"))
        if self.peer is not None:
            from paper.peers import peer_from_config

            peer_from_config(self.peer)  # validates
            object.__setattr__(self, "peer", _freeze(self.peer))

    @property
    def is_baseline(self) -> bool:
        """True for the unquantized reference (Lossless policy, no peer method)."""
        return self.peer is None and self.policy.get("id") == "lossless"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field."""
        return {
            "name": self.name,
            "label": self.label,
            "policy": dict(self.policy),
            "groups": list(self.groups),
            "overrides": dict(self.overrides),
            "seeds": None if self.seeds is None else list(self.seeds),
            **({} if self.peer is None else {"peer": dict(self.peer)}),
        }


def _check_seeds(seeds: Iterable[int], name: str) -> tuple[int, ...]:
    out = tuple(seeds)
    if not out:
        raise ValueError(f"{name} must hold at least one seed")
    for s in out:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"{name}: seeds must be integers >= 0, got {s!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: duplicate seeds in {out}")
    return out


def _policy_with_seed(policy: Mapping[str, Any], seed: int) -> dict[str, Any]:
    # Only EntropyAdaptive and TargetRate sample (entropy / rate estimates); others take no seed.
    out = dict(policy)
    if out.get("id") in ("entropy", "target_rate"):
        out["seed"] = seed
    return out


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One training run of a sweep: a setting at one seed, fully specified.

    Attributes:
        setting: the setting it belongs to.
        seed: the run's seed (TrainConfig.seed, and the EntropyAdaptive sampling seed).
        config: the complete TrainConfig.
        train_limit, test_limit: the data subset (first n images; None = all).
        entropy_F, entropy_M: the grid of sampled-entropy estimates recorded every epoch.
        profile: the profile's name.
    """

    setting: Setting
    seed: int
    config: TrainConfig
    train_limit: int | None
    test_limit: int | None
    entropy_F: tuple[float, ...]
    entropy_M: tuple[int, ...]
    profile: str

    @property
    def key(self) -> str:
        """``<setting>__seed<k>``: the run's file stem."""
        return f"{self.setting.name}__seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (what a pool worker receives and the run file records)."""
        return {
            "setting": self.setting.to_dict(),
            "seed": self.seed,
            "config": self.config.to_dict(),
            "train_limit": self.train_limit,
            "test_limit": self.test_limit,
            "entropy_F": list(self.entropy_F),
            "entropy_M": list(self.entropy_M),
            "profile": self.profile,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        """Inverse of :meth:`to_dict`."""
        s = dict(data["setting"])
        setting = Setting(
            name=s["name"],
            label=s["label"],
            policy=s["policy"],
            groups=tuple(s["groups"]),
            overrides=s["overrides"],
            seeds=None if s["seeds"] is None else tuple(s["seeds"]),
            peer=s.get("peer"),
        )
        return cls(
            setting=setting,
            seed=int(data["seed"]),
            config=TrainConfig.from_dict(data["config"]),
            train_limit=data["train_limit"],
            test_limit=data["test_limit"],
            entropy_F=tuple(float(f) for f in data["entropy_F"]),
            entropy_M=tuple(int(m) for m in data["entropy_M"]),
            profile=str(data["profile"]),
        )


@dataclass(frozen=True, kw_only=True)
class Profile:
    """A whole sweep: data, shared hyperparameters, epochs, seeds and settings.

    Attributes:
        name: the profile's name (``quick``, ``full``, or anything for a custom one).
        description: one sentence for ``--help`` and the report.
        epochs: local epochs per run (the paper: 100).
        seeds: default seeds of every setting (>= 1; the issue asks for >= 3 in ``full``).
        settings: the conditions (unique names).
        train: TrainConfig fields shared by every run (workers, batch_size, lr, lr_decay,
            l1, init, threads, ...); omitted fields keep TrainConfig's defaults.
        dataset: ``fashion-mnist`` (default; MNIST cannot be downloaded here) or ``mnist``.
        data_dir: a directory of IDX files instead of the dataset search.
        train_limit, test_limit: use only the first n training / test images (None: all).
        entropy_F: sample fractions F of the per-epoch entropy grid (paper Fig. 3).
        entropy_M: preliminary quantizer bits M of that grid.
    """

    name: str
    description: str
    epochs: int
    seeds: tuple[int, ...]
    settings: tuple[Setting, ...]
    train: Mapping[str, Any] = field(default_factory=dict)
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    entropy_F: tuple[float, ...] = (0.01, 0.03, 0.1, 1.0)
    entropy_M: tuple[int, ...] = (2, 4, 6, 8)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"name must be a file-safe identifier, got {self.name!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        object.__setattr__(self, "seeds", _check_seeds(self.seeds, "seeds"))
        settings = tuple(self.settings)
        if not settings or not all(isinstance(s, Setting) for s in settings):
            raise ValueError("settings must be a non-empty sequence of Setting")
        names = [s.name for s in settings]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"settings: duplicate names {dup}")
        object.__setattr__(self, "settings", settings)
        if not isinstance(self.train, Mapping):
            raise ValueError(f"train must be a mapping of TrainConfig fields, got {self.train!r}")
        bad = [k for k in self.train if k in _PROFILE_OWNED]
        if bad:
            raise ValueError(f"train: {bad} are set by the profile itself, not by train")
        object.__setattr__(self, "train", _freeze(self.train))
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ValueError(f"data_dir must be a path string or None, got {self.data_dir!r}")
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        fs = tuple(float(f) for f in self.entropy_F)
        if not fs or not all(0.0 < f <= 1.0 for f in fs):
            raise ValueError(f"entropy_F must be fractions in (0, 1], got {self.entropy_F!r}")
        ms = tuple(self.entropy_M)
        if not ms or not all(isinstance(m, int) and 1 <= m <= 16 for m in ms):
            raise ValueError(f"entropy_M must be integers in [1, 16], got {self.entropy_M!r}")
        object.__setattr__(self, "entropy_F", fs)
        object.__setattr__(self, "entropy_M", ms)
        # Building every run's TrainConfig validates the train mapping and the overrides.
        try:
            self.runs()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"train: {exc}") from exc

    # -- expansion ------------------------------------------------------------------------
    def config_for(self, setting: Setting, seed: int) -> TrainConfig:
        """The complete TrainConfig of ``setting`` at ``seed``."""
        fields_ = {
            "transmit": "weights",  # the paper's scheme unless a setting says otherwise
            **self.train,
            **setting.overrides,
            "policy": _policy_with_seed(setting.policy, seed),
            "seed": seed,
            "epochs": self.epochs,
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "download": False,  # a sweep never downloads behind the user's back
        }
        return TrainConfig(**fields_)

    def runs(self) -> list[RunSpec]:
        """Every run, seed-major (all settings at the first seed, then the next seed...).

        Seed-major order makes a partial sweep useful: after the first pass every figure
        has one seed, and later passes add spread.
        """
        seeds = sorted({s for st in self.settings for s in (st.seeds or self.seeds)})
        out = []
        for seed in seeds:
            for st in self.settings:
                if seed in (st.seeds or self.seeds):
                    out.append(
                        RunSpec(
                            setting=st,
                            seed=seed,
                            config=self.config_for(st, seed),
                            train_limit=self.train_limit,
                            test_limit=self.test_limit,
                            entropy_F=self.entropy_F,
                            entropy_M=self.entropy_M,
                            profile=self.name,
                        )
                    )
        return out

    def setting(self, name: str) -> Setting:
        """The setting called ``name`` (KeyError if none)."""
        for s in self.settings:
            if s.name == name:
                return s
        raise KeyError(name)

    def total_epochs(self) -> int:
        """Sum of epochs over every run (the unit of the wall-time prediction)."""
        return self.epochs * len(self.runs())

    def replace(self, **changes: Any) -> Profile:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field."""
        return {
            "name": self.name,
            "description": self.description,
            "epochs": self.epochs,
            "seeds": list(self.seeds),
            "settings": [s.to_dict() for s in self.settings],
            "train": dict(self.train),
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "train_limit": self.train_limit,
            "test_limit": self.test_limit,
            "entropy_F": list(self.entropy_F),
            "entropy_M": list(self.entropy_M),
        }


# ---- setting builders ---------------------------------------------------------------------


def lossless_setting() -> Setting:
    """The unquantized baseline: raw float32 in the same packet format."""
    return Setting(
        name="baseline", label="baseline", policy={"id": "lossless"}, groups=("baseline",)
    )


def fixed_setting(bits: int, groups: Sequence[str] = ("fig1",)) -> Setting:
    """Fixed N-bit quantization + Huffman coding (paper Fig. 1); label ``N=<bits>``."""
    return Setting(
        name=f"fixed-N{bits:02d}",
        label=f"N={bits}",
        policy={"id": "fixed", "bits": bits},
        groups=tuple(groups),
    )


def entropy_setting(
    *,
    c: int,
    M: int,
    F: float = 0.03,
    groups: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
    suffix: str = "",
    label: str | None = None,
    seeds: tuple[int, ...] | None = None,
) -> Setting:
    """EntropyAdaptive(F, M, c); labelled ceiling:floor, i.e. ``"<M+c>:<c>"`` as in Fig. 4."""
    return Setting(
        name=f"entropy-c{c}-M{M}{suffix}",
        label=label or f"{M + c}:{c}",
        policy={"id": "entropy", "F": F, "M": M, "c": c},
        groups=tuple(groups),
        overrides=dict(overrides or {}),
        seeds=seeds,
    )


def _l1_tag(l1: float) -> str:
    return "0" if l1 == 0 else f"{l1:.0e}".replace("e-0", "e-").replace("+0", "")


def ablation_settings(
    inits: Sequence[str] = ABLATION_INITS,
    l1s: Sequence[float] = ABLATION_L1,
    *,
    c: int = 6,
    M: int = 4,
    base_init: str,
    base_l1: float,
    seeds: tuple[int, ...] | None = None,
) -> list[Setting]:
    """The init x L1 grid at (c, M), minus the cell the main settings already run.

    The cell ``(base_init, base_l1)`` is the headline's own EntropyAdaptive(c, M) setting,
    which carries the ``ablation`` tag instead of being run twice; ``base_init`` and
    ``base_l1`` join the grid if they are not in it (the grid always holds that cell).
    """
    inits = list(dict.fromkeys([*inits, base_init]))
    if not any(math.isclose(l1, base_l1) for l1 in l1s):
        l1s = sorted([*l1s, base_l1])
    out = []
    for init in inits:
        if init not in INITS:
            raise ValueError(f"inits: unknown scheme {init!r}; known: {INITS}")
        for l1 in l1s:
            if init == base_init and math.isclose(l1, base_l1):
                continue
            out.append(
                entropy_setting(
                    c=c,
                    M=M,
                    groups=("ablation",),
                    overrides={"init": init, "l1": l1},
                    suffix=f"-{init}-l1-{_l1_tag(l1)}",
                    label=f"{init}, L1={l1:g}",
                    seeds=seeds,
                )
            )
    return out


def paper_settings(
    *,
    fixed_bits: Sequence[int] = FIG1_BITS,
    fig4a_floors: Sequence[int] = FIG4A_FLOORS,
    fig4b_floors: Sequence[int] = FIG4B_FLOORS,
    headline: Sequence[tuple[int, int]] = ((5, 4), (6, 4)),
) -> list[Setting]:
    """Baseline, Fig. 1's Fixed(N), Fig. 4's EntropyAdaptive grid, each condition once.

    A condition used by several figures is one setting with several group tags (e.g.
    c=6, M=4 feeds Fig. 4a, 4b, 5, the headline table and the ablation).
    """
    tags: dict[tuple[str, int, int], list[str]] = {}

    def tag(kind: str, a: int, b: int, group: str) -> None:
        tags.setdefault((kind, a, b), []).append(group)

    for n in fixed_bits:
        tag("fixed", n, 0, "fig1")
    for c in fig4a_floors:
        if c >= 10:
            tag("fixed", 10, 0, "fig4a")  # 10:10 is fixed 10-bit quantization
        else:
            tag("entropy", c, 10 - c, "fig4a")
    for c in fig4b_floors:
        tag("entropy", c, 4, "fig4b")
    for c, m in headline:
        tag("entropy", c, m, "fig5")
        tag("entropy", c, m, "headline")
    if (6, 4) in [tuple(h) for h in headline]:
        tag("entropy", 6, 4, "ablation")

    out = [lossless_setting()]
    for (kind, a, b), groups in sorted(tags.items(), key=lambda kv: (kv[0][0] != "fixed", kv[0])):
        if kind == "fixed":
            out.append(fixed_setting(a, groups))
        else:
            out.append(entropy_setting(c=a, M=b, groups=groups))
    return out


# ---- the two shipped profiles ---------------------------------------------------------------

#: Training hyperparameters every profile shares, pinned here (not read from TrainConfig at
#: run time) so that saved results keep matching their profile if the trainer's defaults
#: change. They are TrainConfig's documented defaults (its docstrings give the reasons; the
#: paper gives none of these values); ``tests/paper/test_profiles.py`` flags drift.
TRAIN: dict[str, Any] = {
    "workers": 5,
    "sync_every": 0,
    "threads": 1,
    "batch_size": 32,
    "lr": 0.05,
    "lr_decay": 0.95,
    "l1": 1e-6,
    "init": "glorot-uniform",
    "eval_every": 1,
    "eval_batch_size": 10_000,
}


def full_profile(*, epochs: int = FULL_EPOCHS, seeds: tuple[int, ...] = (0, 1, 2)) -> Profile:
    """The reproduction: every figure's settings on all of Fashion-MNIST, 3 seeds.

    Settings: baseline; Fixed(N) for N in 2..16, 24; EntropyAdaptive for c + M = 10
    (c = 2..9) and for M = 4 (c = 2..8); the init x L1 ablation at c=6, M=4 (8 cells
    besides the headline's own). 39 settings x 3 seeds = 117 runs.
    """
    settings = paper_settings()
    settings += ablation_settings(base_init=TRAIN["init"], base_l1=TRAIN["l1"])
    return Profile(
        name="full",
        description=(
            "all figures and the headline table on the whole Fashion-MNIST training set, "
            f"{len(seeds)} seeds, plus the init x L1 ablation"
        ),
        epochs=epochs,
        seeds=seeds,
        settings=tuple(settings),
        train=dict(TRAIN),
    )


def quick_profile() -> Profile:
    """A CI smoke test (~30-60 s on 2 cores): 10,000 training images, 3 epochs, 2 seeds.

    One or two settings per figure: baseline, Fixed(2, 4, 8, 10), EntropyAdaptive
    (c=5, M=4), (c=6, M=4), (c=8, M=2), and one ablation cell (another initialisation).
    """
    settings = paper_settings(
        fixed_bits=(2, 4, 8, 10), fig4a_floors=(6, 8, 10), fig4b_floors=(5, 6)
    )
    # one ablation cell: the headline's L1 with another initialisation
    other_init = next(i for i in ABLATION_INITS if i != TRAIN["init"])
    settings += ablation_settings(
        inits=(other_init,), l1s=(TRAIN["l1"],), base_init=TRAIN["init"], base_l1=TRAIN["l1"]
    )
    return Profile(
        name="quick",
        description="smoke test: a 10,000-image subset, 3 epochs, 2 seeds, a few settings",
        epochs=3,
        seeds=(0, 1),
        settings=tuple(settings),
        train=dict(TRAIN),
        train_limit=10_000,
        test_limit=2000,
    )


# ---- beyond the paper: deltas, rate control, ANS, and the peers ---------------------------

#: TargetRate targets of the beyond profile (bits/param), with ANS and (down to 0.5) with
#: Huffman only.
BEYOND_RATES = (2.0, 1.0, 0.5, 0.25, 0.1)
#: RelativeStep steps (in units of the fresh delta's RMS).
BEYOND_ALPHAS = (1.0, 2.0, 4.0)
#: The paper's weights coding on the same curve: EntropyAdaptive floors (M=4), Fixed N.
BEYOND_PAPER_FLOORS = (3, 4, 5, 6)
BEYOND_FIXED_BITS = (4, 6, 8)
BEYOND_EPOCHS = 12

_DELTA = {"transmit": "delta", "error_feedback": True}
_DELTA_NO_EF = {"transmit": "delta", "error_feedback": False}


def _rate_tag(rate: float) -> str:
    return f"{rate:g}".replace(".", "p")


def beyond_settings() -> list[Setting]:
    """The Pareto comparison: tenfold's delta coding, the paper's weights coding, the peers.

    Names of the paper-side settings equal the full profile's, so the two profiles share
    those run files when they sweep into the same directory.
    """
    out = [lossless_setting()]
    out += [fixed_setting(n, groups=()) for n in BEYOND_FIXED_BITS]
    out += [entropy_setting(c=c, M=4) for c in BEYOND_PAPER_FLOORS]
    for rate in BEYOND_RATES:
        # Below 1 bit/value Huffman's target is unreachable and TargetRate aims at 1.1x its
        # floor whatever the target: 0.25 and 0.1 would repeat the 0.5 run exactly.
        for coder in ("auto", "huffman") if rate >= 0.5 else ("auto",):
            out.append(
                Setting(
                    name=f"delta-rate{_rate_tag(rate)}-{'ans' if coder == 'auto' else 'huffman'}",
                    label=f"rate {rate:g}" + (" (Huffman only)" if coder == "huffman" else ""),
                    policy={"id": "target_rate", "bits_per_param": rate, "coder": coder},
                    overrides=_DELTA,
                )
            )
    for alpha in BEYOND_ALPHAS:
        out.append(
            Setting(
                name=f"delta-step{_rate_tag(alpha)}",
                label=f"step {alpha:g} RMS",
                policy={"id": "relative_step", "alpha": alpha, "coder": "auto"},
                overrides=_DELTA,
            )
        )
    for rate in (1.0, 0.25):
        out.append(
            Setting(
                name=f"delta-rate{_rate_tag(rate)}-no-ef",
                label=f"rate {rate:g}, no error feedback",
                policy={"id": "target_rate", "bits_per_param": rate, "coder": "auto"},
                overrides=_DELTA_NO_EF,
            )
        )
    peers: list[tuple[str, str, dict[str, Any], bool]] = [
        ("peer-fp16", "fp16 cast", {"id": "fp16"}, False),
        ("peer-bf16", "bf16 cast", {"id": "bf16"}, False),
        ("peer-int8-block", "int8 blockwise absmax", {"id": "int8-block", "block": 256}, False),
    ]
    for frac in (0.01, 0.03, 0.1):
        cfg = {"id": "topk", "fraction": frac, "value_bits": 2}
        peers.append((f"peer-topk{round(frac * 100)}", f"top-k {frac:.0%} + EF", cfg, True))
    for rank in (1, 4):
        cfg = {"id": "powersgd", "rank": rank}
        peers.append((f"peer-powersgd-r{rank}", f"PowerSGD rank {rank} + EF", cfg, True))
    for name, label, cfg, ef in peers:
        out.append(
            Setting(
                name=name,
                label=label,
                policy={"id": "lossless"},
                overrides=_DELTA if ef else _DELTA_NO_EF,
                peer=cfg,
            )
        )
    return out


def beyond_profile(*, epochs: int = BEYOND_EPOCHS, seeds: tuple[int, ...] = (0, 1, 2)) -> Profile:
    """The Pareto curve of accuracy vs bits/param on the paper's task (5 workers, per-epoch
    sync, all of Fashion-MNIST, 3 seeds): tenfold's pseudo-gradient coding at several
    rates and steps (ANS and Huffman only, with and without error feedback), the paper's
    weights coding, and the peers (fp16, bf16, blockwise int8, top-k, PowerSGD) on the same
    pseudo-gradients."""
    return Profile(
        name="beyond",
        description=(
            "accuracy vs bits/param: tenfold's delta coding against the paper's weights "
            f"coding and the peer methods, whole Fashion-MNIST, {len(seeds)} seeds"
        ),
        epochs=epochs,
        seeds=seeds,
        settings=tuple(beyond_settings()),
        train=dict(TRAIN),
    )


# ---- the paper's scale: 100 epochs ----------------------------------------------------------

#: Epochs of the long profile: the paper's 100.
LONG_EPOCHS = 100
#: The 2014-era initialisation of the long profile's second block and its L1 strengths.
LONG_OLD_INIT = "normal-0.01"
LONG_OLD_L1: tuple[float, ...] = (1e-6, 1e-5)


def long_settings() -> list[Setting]:
    """The headline settings at the paper's length, and the 2014-era initialisation.

    Baseline, EntropyAdaptive (c=5, M=4) and (c=6, M=4) (Fig. 5), Fixed N = 8, the trainer's
    default (pseudo-gradients with error feedback at TargetRate(DEFAULT_RATE)); then
    N(0, 0.01^2) weights with the baseline and (c=6, M=4), each at L1 1e-6 and 1e-5.
    Names of the first block equal the full profile's (the report pairs them by name).
    """
    from tenfold.train.config import DEFAULT_RATE

    out = [lossless_setting()]
    out += [entropy_setting(c=c, M=4, groups=("fig5", "headline")) for c in (5, 6)]
    out.append(fixed_setting(8, groups=("fig1",)))
    out.append(
        Setting(
            name="delta-default",
            label=f"delta, rate {DEFAULT_RATE:g} (default)",
            policy={"id": "target_rate", "bits_per_param": DEFAULT_RATE, "coder": "auto"},
            overrides=_DELTA,
        )
    )
    for l1 in LONG_OLD_L1:
        tag = f"-{LONG_OLD_INIT}-l1-{_l1_tag(l1)}"
        out.append(
            Setting(
                name=f"baseline{tag}",
                label=f"baseline, {LONG_OLD_INIT}, L1={l1:g}",
                policy={"id": "lossless"},
                groups=("ablation",),
                overrides={"init": LONG_OLD_INIT, "l1": l1},
            )
        )
        out.append(
            entropy_setting(
                c=6,
                M=4,
                groups=("ablation",),
                overrides={"init": LONG_OLD_INIT, "l1": l1},
                suffix=tag,
                label=f"10:6, {LONG_OLD_INIT}, L1={l1:g}",
            )
        )
    return out


def long_profile(*, epochs: int = LONG_EPOCHS, seeds: tuple[int, ...] = (0, 1, 2)) -> Profile:
    """The headline settings for the paper's 100 epochs on all of Fashion-MNIST, 3 seeds,
    so that convergence (epoch of peak accuracy, epochs to 99% of the baseline) is measured
    rather than censored at the end of a short run. 9 settings x 3 seeds = 27 runs."""
    return Profile(
        name="long",
        description=(
            f"the headline settings for {epochs} epochs on the whole Fashion-MNIST training "
            f"set, {len(seeds)} seeds, plus the {LONG_OLD_INIT} initialisation"
        ),
        epochs=epochs,
        seeds=seeds,
        settings=tuple(long_settings()),
        train=dict(TRAIN),
    )


#: Profile name -> builder.
PROFILES = {
    "quick": quick_profile,
    "full": full_profile,
    "beyond": beyond_profile,
    "long": long_profile,
}


def get_profile(name: str) -> Profile:
    """The shipped profile ``name`` (``quick``, ``full``, ``beyond`` or ``long``).

    Raises:
        ValueError: unknown name.
    """
    try:
        return PROFILES[name]()
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None
