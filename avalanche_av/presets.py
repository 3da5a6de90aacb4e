"""Benchmark presets: the paper's settings for Continual-VS and Continual-AS.

When ``avalanche-av run`` or ``compare`` is given ``--benchmark continual-vs`` or
``--benchmark continual-as``, every setting below that the user did not give on the command line
takes the paper's value instead of our small-CPU default:

* run settings (STELLA paper, Sec. 5.1 and Appendix A, Table 6): rehearsal memory of 2,000
  clips on Continual-VS and 5,000 on Continual-AS (Sec. 5.1, "2K (Continual-VS) and 5K
  (Continual-AS) instances"); 10 / 15 epochs per task; Adam at a constant lr 1e-4; batch size 48 (Table 6
  lists one pre-training batch size for both streams, and Appendix E confirms 48 for the main
  Continual-VS run);
* per-method options from Table 5 (our option names; the mapping is in
  ``docs/baselines_replay.md`` and ``docs/stella.md``). Only the methods with a row in Table 5
  have one: Avalanche's regularisation baselines keep their own defaults
  (``docs/baselines_avalanche.md``).

An option the user sets (``--option KEY=VALUE`` or ``--option METHOD:KEY=VALUE``) always wins.
The synthetic stream has no preset: its defaults are sized for 2 CPU cores.
See ``docs/compare.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

__all__ = ["BenchmarkPreset", "PRESETS", "PRESET_SETTINGS", "get_preset", "resolve_settings", "preset_options",
           "resolve_strategy_options"]

#: RunConfig fields a preset may set (the command line leaves them unset unless given).
PRESET_SETTINGS = ("mem_size", "epochs", "batch_size", "lr", "lr_schedule")

_STELLA_FAMILY = ("stella", "stella+", "stella-random", "stella-mats", "stella-lpis", "stella-rca",
                  "stella-audio-freq", "stella-audio-none")


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class BenchmarkPreset:
    """The paper's settings for one benchmark.

    Attributes:
        benchmark: the ``--benchmark`` name.
        settings: ``RunConfig`` field -> value (only names in :data:`PRESET_SETTINGS`).
        method_options: strategy name -> {option: value}, the plugin keyword arguments Table 5
            fixes for that method.
        source: where the values come from, for ``docs/`` and the printed notice.
    """

    benchmark: str
    settings: Mapping[str, Any]
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str = ""


def _table5(*, der_alpha: float, gmed_reg: float, lump_alpha: float, esmer_gamma: float,
            stella_beta: float) -> Dict[str, Mapping[str, Any]]:
    """Table 5's rows in our option names; the two streams differ only in the arguments."""
    stella = {"alpha": 0.5, "beta": stella_beta, "rho_a": 0.5, "rho_v": 0.5}
    rows: Dict[str, Mapping[str, Any]] = {
        "mir": _frozen({"candidate_factor": 5}),
        "der++": _frozen({"alpha": der_alpha}),
        # GMED's γ = 1.0 is a stride decay that does nothing at 1.0: no option (docs/baselines_replay.md).
        "gmed": _frozen({"edit_stride": 0.1, "edit_reg": gmed_reg}),
        "cls-er": _frozen({"consistency_weight": 0.1, "stable_decay": 0.999, "plastic_decay": 0.999,
                           "stable_rate": 0.6, "plastic_rate": 0.8}),
        "lump": _frozen({"alpha": lump_alpha}),
        "esmer": _frozen({"loss_alpha": 0.99, "loss_margin": 1.0, "consistency_weight": esmer_gamma,
                          "ema_decay": 0.999, "ema_rate": 0.2}),
    }
    # The ablations are STELLA with one part changed: they share its Table 5 row.
    rows.update({name: _frozen(stella) for name in _STELLA_FAMILY})
    return rows


#: ``--benchmark`` name -> its preset.
PRESETS: Mapping[str, BenchmarkPreset] = MappingProxyType({
    "continual-vs": BenchmarkPreset(
        "continual-vs",
        _frozen({"mem_size": 2000, "epochs": 10, "batch_size": 48, "lr": 1e-4, "lr_schedule": "constant"}),
        _frozen(_table5(der_alpha=0.5, gmed_reg=0.05, lump_alpha=0.1, esmer_gamma=0.15, stella_beta=0.4)),
        "STELLA paper Sec. 5.1 (memory 2K), Table 6 (epochs, lr, batch size), Table 5 (method options)",
    ),
    "continual-as": BenchmarkPreset(
        "continual-as",
        _frozen({"mem_size": 5000, "epochs": 15, "batch_size": 48, "lr": 1e-4, "lr_schedule": "constant"}),
        _frozen(_table5(der_alpha=1.0, gmed_reg=0.01, lump_alpha=0.05, esmer_gamma=0.2, stella_beta=0.1)),
        "STELLA paper Sec. 5.1 (memory 5K), Table 6 (epochs, lr, batch size), Table 5 (method options)",
    ),
})


def get_preset(benchmark: str) -> Optional[BenchmarkPreset]:
    """The preset of ``benchmark``, or ``None`` (the synthetic stream has none)."""
    return PRESETS.get(benchmark)


def resolve_settings(benchmark: str, given: Mapping[str, Any],
                     defaults: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Fill the preset-able run settings the user left unset.

    Args:
        benchmark: the ``--benchmark`` value.
        given: setting -> value, ``None`` where the user did not give it.
        defaults: setting -> the ``RunConfig`` default, used where neither the user nor a preset
            gives a value.

    Returns:
        ``(settings, from_preset)``: every name of :data:`PRESET_SETTINGS` with its value, and
        the subset taken from the preset (to tell the user).
    """
    preset = get_preset(benchmark)
    settings: Dict[str, Any] = {}
    applied: Dict[str, Any] = {}
    for name in PRESET_SETTINGS:
        value = given.get(name)
        if value is None and preset is not None and name in preset.settings:
            value = applied[name] = preset.settings[name]
        settings[name] = defaults[name] if value is None else value
    return settings, applied


def preset_options(benchmark: str, strategy: str, user_options: Mapping[str, Any]) -> Dict[str, Any]:
    """The Table 5 options of ``strategy`` on ``benchmark`` that the user did not set.

    Args:
        benchmark: the ``--benchmark`` value.
        strategy: a registry name.
        user_options: the options the user set for this strategy (these win).

    Returns:
        option -> value; empty without a preset or a Table 5 row.
    """
    preset = get_preset(benchmark)
    if preset is None:
        return {}
    row = preset.method_options.get(strategy, {})
    return {k: v for k, v in row.items() if k not in user_options}


def resolve_strategy_options(
    strategies: Sequence[str],
    shared: Mapping[str, Any],
    per_method: Mapping[str, Mapping[str, Any]],
    benchmark: str = "synthetic",
) -> Dict[str, Dict[str, Any]]:
    """Each strategy's plugin options: the user's, then the benchmark preset's for the rest.

    Args:
        strategies: the registry names being run.
        shared: options given without a method (``--option KEY=VALUE``). Each goes to every
            listed strategy that accepts it; it is an error only when none does (a typo).
        per_method: method -> options given as ``--option METHOD:KEY=VALUE``; they go to that
            method only, which must be listed and must accept them.
        benchmark: the ``--benchmark`` value (for :func:`preset_options`).

    Returns:
        strategy -> {option: value}.

    Raises:
        ValueError: an unknown strategy (listing the valid ones), a per-method option for a
            strategy that is not run, an option no listed strategy accepts (listing each one's
            valid options), or a value of the wrong type.
    """
    from .training import strategy_options, validate_strategy_options  # noqa: PLC0415

    valid = {s: strategy_options(s) for s in strategies}  # unknown names raise here
    for method, opts in per_method.items():
        if method not in valid:
            strategy_options(method)  # an unknown name raises with the list of valid ones
            items = ", ".join(f"{method}:{k}" for k in opts)
            raise ValueError(f"--option {items}: strategy {method!r} is not run here "
                             f"(strategies: {', '.join(strategies)})")
    for key, value in shared.items():
        if not any(key in v for v in valid.values()):
            if len(strategies) == 1:
                validate_strategy_options(strategies[0], {key: value})  # the usual one-strategy message
            listing = "; ".join(f"{s}: {', '.join(sorted(v)) or 'none'}" for s, v in valid.items())
            raise ValueError(f"unknown option {key!r}: none of the strategies {', '.join(strategies)} accepts it "
                             f"(valid options: {listing})")
    out: Dict[str, Dict[str, Any]] = {}
    for s in strategies:
        user = {k: v for k, v in shared.items() if k in valid[s]}
        user.update(per_method.get(s, {}))
        validate_strategy_options(s, user)
        out[s] = {**preset_options(benchmark, s, user), **user}
    return out
