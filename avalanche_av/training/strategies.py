"""Named strategies for the command line and the benchmark suite.

A strategy here is the list of plugins added to :class:`~avalanche_av.training.AVPretraining`;
every method shares the template, the SSL loss and (for replay methods) the memory size. Each
entry is a :class:`StrategySpec`: the plugin class, preset options (the ablations are presets of
``StellaPlugin``) and whether it needs a memory. A method's options are its plugin's constructor
keyword arguments; :func:`validate_strategy_options` checks names and value types against that
signature before any data is built, so a typo fails in one line instead of a traceback later.
New methods register with :func:`register_strategy`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from avalanche.core import BasePlugin

from .plugins import DERPlugin, GMEDPlugin, MIRPlugin, OnlineReplayPlugin, StellaPlugin, check_mem_size
from .plugins import CLSERPlugin, ESMERPlugin, LUMPPlugin
from .joint import CumulativePlugin, MultitaskPlugin
from .plugins import ResumableReplayPlugin, ResumableReservoirSamplingBuffer
from .plugins import (SSLAGEMPlugin, SSLEWCPlugin, SSLFeatureDistillationPlugin, SSLLFLPlugin, SSLLwFPlugin,
                      SSLMASPlugin, SSLRWalkPlugin, SSLSynapticIntelligencePlugin)

__all__ = [
    "STRATEGIES",
    "StrategySpec",
    "register_strategy",
    "make_plugins",
    "list_strategies",
    "strategy_options",
    "validate_strategy_options",
    "memory_scope",
    "MEMORY_SCOPES",
]

#: Where a method's memory lives under torchrun (:attr:`StrategySpec.memory_scope`).
MEMORY_SCOPES = ("rank", "global")

#: Constructor arguments that ``make_plugins`` fills itself; never user options.
_MANAGED = {"self", "mem_size", "batch_size_mem", "storage_policy", "args", "kwargs"}


@dataclass(frozen=True)
class StrategySpec:
    """One named method.

    Attributes:
        name: the registry name (``--strategy``).
        plugin_cls: the plugin class, or ``None`` for plain fine-tuning.
        preset: options fixed by this name (e.g. ``store_patches=True`` for ``stella+``); not
            user-settable.
        uses_memory: needs ``mem_size >= 1``.
        description: one line for ``--list-strategies`` and the docs.
        build: optional custom builder ``(mem_size, batch_size, **options) -> plugins``.
        memory_scope: under torchrun, ``"rank"``: each rank holds a reservoir over its own
            shard, ``mem_size / N`` clips (our online memories); ``"global"``: every rank holds
            the same ``mem_size``-clip memory, drawn from the whole experience with the same
            random numbers, and Avalanche's distributed loaders give each rank a disjoint part
            of it per memory batch (``er_exp``, ``agem``: Avalanche's per-experience memories,
            which are datasets of indices into the experience). See ``docs/distributed.md``.
    """

    name: str
    plugin_cls: Optional[type]
    preset: Dict[str, Any] = field(default_factory=dict)
    uses_memory: bool = True
    description: str = ""
    build: Optional[Callable[..., List[BasePlugin]]] = None
    memory_scope: str = "rank"

    def __post_init__(self) -> None:
        if self.memory_scope not in MEMORY_SCOPES:
            raise ValueError(f"strategy {self.name!r}: memory_scope must be one of {MEMORY_SCOPES}, "
                             f"got {self.memory_scope!r}")

    def options(self) -> Dict[str, Any]:
        """User-settable options and their defaults (the plugin's keyword arguments)."""
        if self.plugin_cls is None or self.build is not None:
            return {}
        params = inspect.signature(self.plugin_cls.__init__).parameters
        return {
            n: p.default for n, p in params.items()
            if n not in _MANAGED and n not in self.preset and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }


STRATEGIES: Dict[str, StrategySpec] = {}


def register_strategy(spec: StrategySpec) -> StrategySpec:
    """Add (or replace) a named method."""
    STRATEGIES[spec.name] = spec
    return spec


def list_strategies() -> list[str]:
    return sorted(STRATEGIES)


def _spec(name: str) -> StrategySpec:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid strategies: {', '.join(list_strategies())}")
    return STRATEGIES[name]


def memory_scope(name: str) -> str:
    """``"rank"`` or ``"global"``: how strategy ``name``'s memory is split over ranks
    (:attr:`StrategySpec.memory_scope`)."""
    return _spec(name).memory_scope


def strategy_options(name: str) -> Dict[str, Any]:
    """The options strategy ``name`` accepts, with their defaults."""
    return _spec(name).options()


def _type_ok(value: Any, default: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def validate_strategy_options(name: str, options: Dict[str, Any]) -> None:
    """Check option names (and value types, against the defaults) for strategy ``name``.

    Raises:
        ValueError: an unknown strategy, an unknown option (the message lists the valid ones),
            or a value of the wrong type.
    """
    spec = _spec(name)
    valid = spec.options()
    for key, value in options.items():
        if key not in valid:
            listing = ", ".join(sorted(valid)) if valid else "none"
            raise ValueError(f"unknown option {key!r} for strategy {name!r}; valid options: {listing}")
        if not _type_ok(value, valid[key]):
            raise ValueError(
                f"option {key!r} of strategy {name!r} expects a {type(valid[key]).__name__} "
                f"(default {valid[key]!r}), got {value!r}"
            )


def make_plugins(name: str, *, mem_size: int, batch_size: int, run_seed: Optional[int] = None,
                 **options) -> List[BasePlugin]:
    """Plugins implementing strategy ``name``.

    Args:
        name: one of :func:`list_strategies`.
        mem_size: replay memory size in clips (must be ``>= 1`` for methods with a memory;
            ignored by the others).
        batch_size: current-batch size; replay methods draw memory batches of the same size.
        run_seed: the run's seed. A method with a ``seed`` option (the memory's reservoir and
            sampling generator, A-GEM's subset draws, the EMA teachers' update draws) gets it
            as that option unless ``options`` set ``seed``, so its random draws change with the
            run's seed like everything else. ``None`` leaves the option at its default (0).
            ``avalanche-av run`` passes ``--seed``, the same on every rank under torchrun.
        options: method-specific options (see :func:`strategy_options`).

    Raises:
        ValueError: unknown strategy or option, a bad value, or ``mem_size < 1`` for a method
            that needs a memory.
    """
    spec = _spec(name)
    validate_strategy_options(name, options)
    if spec.uses_memory:
        check_mem_size(mem_size, f"strategy {name!r}")
    if spec.build is not None:
        return spec.build(mem_size=mem_size, batch_size=batch_size, **options)
    if spec.plugin_cls is None:
        return []
    kwargs = {**spec.preset, **options}
    if run_seed is not None and "seed" not in kwargs and "seed" in spec.options():
        kwargs["seed"] = int(run_seed)
    if spec.uses_memory:
        kwargs.update(mem_size=mem_size, batch_size_mem=batch_size)
    return [spec.plugin_cls(**kwargs)]


def _er_exp(mem_size: int, batch_size: int) -> List[BasePlugin]:
    # Avalanche's ReplayPlugin and reservoir, with a checkpoint state (resume keeps the memory).
    return [
        ResumableReplayPlugin(
            mem_size=mem_size,
            batch_size_mem=batch_size,
            storage_policy=ResumableReservoirSamplingBuffer(max_size=mem_size),
        )
    ]


for _spec_ in (
    StrategySpec("finetune", None, uses_memory=False, description="no continual-learning method (lower bound)"),
    StrategySpec("er", OnlineReplayPlugin, description="experience replay on the task-free online reservoir"),
    StrategySpec("der++", DERPlugin, description="ER + MSE to stored pooled embeddings (DER++)"),
    StrategySpec("mir", MIRPlugin, description="MIR: replay the candidates a virtual SGD step hurts most (C = 5)"),
    StrategySpec("gmed", GMEDPlugin, description="GMED: edit memory clips toward higher post-update loss, then ER"),
    StrategySpec("stella", StellaPlugin, {"store_patches": False}, description="STELLA (ICML 2024)"),
    StrategySpec("stella+", StellaPlugin, {"store_patches": True},
                 description="STELLA+: memory stores only the selected patches"),
    StrategySpec("stella-random", StellaPlugin, {"store_patches": False, "selection": "random"},
                 description="ablation: uniform random patches (paper Table 3 'Random')"),
    StrategySpec("stella-mats", StellaPlugin, {"store_patches": False, "selection": "mats"},
                 description="ablation: motion-aware video tokens (paper Table 3 'MATS')"),
    StrategySpec("stella-lpis", StellaPlugin, {"store_patches": False, "use_correlation": False},
                 description="ablation: importance only, no exclusion (paper Table 3 'LPIS')"),
    StrategySpec("stella-rca", StellaPlugin, {"store_patches": False, "use_importance": False},
                 description="ablation: exclusion only, uniform importance (paper Table 3 'RCA')"),
    StrategySpec("stella-audio-freq", StellaPlugin, {"store_patches": False, "audio_selection": "frequency"},
                 description="ablation: audio selected by frequency bands (paper Fig. 9)"),
    StrategySpec("stella-audio-none", StellaPlugin, {"store_patches": False, "audio_selection": "none"},
                 description="ablation: audio selected without structure (paper Fig. 9)"),
    StrategySpec("cls-er", CLSERPlugin,
                 description="CLS-ER: ER + MSE to the better of a plastic and a stable EMA; evaluates the stable one"),
    StrategySpec("lump", LUMPPlugin, description="LUMP: train on Beta(a, a) mixups of current and memory clips"),
    StrategySpec("esmer", ESMERPlugin,
                 description="ESMER: EMA semantic memory, high-loss samples down-weighted and kept out of memory"),
    StrategySpec("ewc", SSLEWCPlugin, uses_memory=False,
                 description="Avalanche's EWC; Fisher from the SSL loss (docs/baselines_avalanche.md)"),
    StrategySpec("si", SSLSynapticIntelligencePlugin, uses_memory=False,
                 description="Avalanche's Synaptic Intelligence on the SSL loss's path integral"),
    StrategySpec("mas", SSLMASPlugin, uses_memory=False,
                 description="Avalanche's MAS; importance from the norm of the pooled embeddings"),
    StrategySpec("rwalk", SSLRWalkPlugin, uses_memory=False,
                 description="Avalanche's RWalk; online Fisher and path score from the SSL loss"),
    StrategySpec("lwf", SSLLwFPlugin, uses_memory=False,
                 description="Avalanche's LwF; distils the previous model's pooled embeddings (not logits)"),
    StrategySpec("lfl", SSLLFLPlugin, uses_memory=False,
                 description="Avalanche's LFL; Euclidean loss to the previous model's pooled embeddings"),
    StrategySpec("feature-distillation", SSLFeatureDistillationPlugin, uses_memory=False,
                 description="Avalanche's feature distillation; cosine to the previous model's pooled embeddings"),
    StrategySpec("agem", SSLAGEMPlugin, memory_scope="global",
                 description="Avalanche's A-GEM; gradient projection against the SSL loss on its per-experience memory"),
    StrategySpec("cumulative", CumulativePlugin, uses_memory=False,
                 description="Avalanche's Cumulative: each task trains on the union of all tasks so far"),
    StrategySpec("multitask", MultitaskPlugin, uses_memory=False,
                 description="joint training once on the union of all tasks (upper bound; F is 0 by construction)"),
    StrategySpec("er_exp", ResumableReplayPlugin, build=_er_exp, memory_scope="global",
                 description="Avalanche's own ReplayPlugin + ReservoirSamplingBuffer (per-experience memory; resumable)"),
):
    register_strategy(_spec_)
