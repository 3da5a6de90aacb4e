"""Run checkpoints that load with ``torch.load(..., weights_only=True)``.

A checkpoint holds everything needed to continue a run exactly: model and optimizer state, the
AMP scaler, the state of every plugin that has ``state_dict()``/``load_state_dict()`` (replay
buffers, STELLA's AVM and memory), the strategy clock, and the torch / CUDA / numpy / Python RNG
states. Only tensors, numbers, strings, lists and dicts are stored, so loading never executes
pickled code. Writes are atomic (temporary file, then rename), so a crash mid-save never leaves
a truncated checkpoint behind.

Under torchrun every rank calls :func:`save_checkpoint`; rank 0 writes one file that merges every
rank's memories and RNG states (``state["world"]``), and :func:`load_checkpoint` gives each rank
its part, also when the number of ranks changed (``docs/distributed.md``).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from .distributed import merge_rank_states, seed_all, shard_rank_state

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "get_rng_state", "set_rng_state", "plugin_key"]

_FORMAT = "avalanche-av-checkpoint/1"

_CLOCK_FIELDS = (
    "train_iterations",
    "train_exp_counter",
    "train_exp_epochs",
    "train_exp_iterations",
    "train_epoch_iterations",
    "total_iterations",
)


def get_rng_state() -> dict:
    """All global RNG states as weights_only-safe objects."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [py[0], torch.tensor(py[1], dtype=torch.int64), py[2]],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(int(x) for x in py[1].tolist()), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plugin_key(index: int, plugin: Any) -> str:
    return f"{index}:{type(plugin).__name__}"


def _stateful_plugins(strategy) -> dict:
    return {
        plugin_key(i, p): p
        for i, p in enumerate(strategy.plugins)
        if callable(getattr(p, "state_dict", None)) and callable(getattr(p, "load_state_dict", None))
    }


def save_checkpoint(path: Union[str, Path], strategy, extra: Optional[dict] = None) -> Path:
    """Save ``strategy``'s full training state (and ``extra``, weights_only-safe values) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": _FORMAT,
        "model": strategy.model.state_dict(),
        "optimizer": strategy.optimizer.state_dict(),
        "scaler": strategy.scaler.state_dict() if getattr(strategy, "scaler", None) is not None else None,
        "plugins": {k: p.state_dict() for k, p in _stateful_plugins(strategy).items()},
        "clock": {f: int(getattr(strategy.clock, f)) for f in _CLOCK_FIELDS if hasattr(strategy.clock, f)},
        "skipped_steps": int(getattr(strategy, "skipped_steps", 0)),
        "rng": get_rng_state(),
        "extra": extra or {},
    }
    # Several ranks: every rank sends its memories and RNG states to rank 0, which writes one
    # file (docs/distributed.md); a single process writes its state as it is.
    state = merge_rank_states(state)
    if state is None:
        return path
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: Union[str, Path]) -> dict:
    """Load a checkpoint file without applying it: the saved state, ``extra`` included.

    Use it to inspect ``extra`` (e.g. the run config) before building anything, then pass the
    result to :func:`load_checkpoint` as ``state`` so that the file is read once.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file does not load with ``weights_only=True`` or is not an
            avalanche-av run checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file or pickled objects
        raise ValueError(f"checkpoint {path} could not be loaded with weights_only=True: {_one_line(exc)}") from exc
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(f"{path} is not an avalanche-av run checkpoint")
    return state


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's message on one line (torch's state-dict errors span many), shortened."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_checkpoint(path: Union[str, Path], strategy, restore_rng: bool = True, *,
                    state: Optional[dict] = None) -> dict:
    """Restore a state saved by :func:`save_checkpoint` into ``strategy``; returns ``extra``.

    Args:
        path: the checkpoint file (named in errors; read unless ``state`` is given).
        strategy: the strategy to restore, built like the one that saved the file.
        restore_rng: also restore the global RNG states.
        state: the file's content from :func:`read_checkpoint`, to avoid reading it twice.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not an avalanche-av checkpoint, or it does not fit
            ``strategy``: model weights of other names or shapes (another preset), an
            optimizer of another layout, or a plugin whose saved state is missing or of
            another kind (another method or method option).
    """
    path = Path(path)
    if state is None:
        state = read_checkpoint(path)
    # This rank's part of the memories and RNG states, for any number of ranks (unchanged in a
    # single process reading a single-process file).
    state = shard_rank_state(state)
    try:
        strategy.model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not fit the model (another preset or input shape?): "
                         f"{_one_line(exc)}") from exc
    for plugin in strategy.plugins:
        # plugins owning parameters (STELLA's AVM) register their optimizer group first
        if callable(getattr(plugin, "prepare_for_load", None)):
            plugin.prepare_for_load(strategy)
    try:
        strategy.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ValueError(f"checkpoint {path}: the optimizer state does not fit this strategy: {_one_line(exc)}") from exc
    # Tell Avalanche the optimizer is already built: otherwise its first make_optimizer()
    # call resets the state (Adam moments) we just restored.
    if hasattr(strategy, "optimized_param_id"):
        strategy.optimized_param_id = dict(strategy.model.named_parameters())
    if state["scaler"] is not None and getattr(strategy, "scaler", None) is not None:
        strategy.scaler.load_state_dict(state["scaler"])
    plugins = _stateful_plugins(strategy)
    missing = sorted(set(plugins) - set(state["plugins"]))
    if missing:
        raise ValueError(f"checkpoint {path} has no state for plugin(s) {missing}; saved: {sorted(state['plugins'])}")
    for key, plugin in plugins.items():
        try:
            plugin.load_state_dict(state["plugins"][key])
        except (KeyError, RuntimeError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"checkpoint {path}: the saved state of plugin {key} does not fit it (another method "
                             f"or option?): {type(exc).__name__}: {_one_line(exc)}") from exc
    for f, v in state["clock"].items():
        setattr(strategy.clock, f, v)
    strategy.skipped_steps = state.get("skipped_steps", 0)
    if restore_rng:
        set_rng_state(state["rng"])
        if "rng_reseed" in state:  # a rank the saving run did not have
            seed_all(state["rng_reseed"])
    return state["extra"]
