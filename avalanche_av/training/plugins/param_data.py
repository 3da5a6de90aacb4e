"""Checkpoint state for Avalanche's per-parameter ``ParamData`` dictionaries.

EWC, SI, MAS and RWalk keep ``{parameter name: ParamData}`` tables (anchors, importances,
trajectories). A run checkpoint loads with ``weights_only=True``, so it holds plain tensors: these
two functions convert between the two, keeping a resumed run's penalties exactly.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from avalanche.training.utils import ParamData

__all__ = ["param_dict_state", "param_dict_from_state"]


def param_dict_state(d: Optional[Dict[str, ParamData]]) -> Optional[Dict[str, torch.Tensor]]:
    """``{name: ParamData}`` -> ``{name: tensor}`` (copies; ``None`` stays ``None``)."""
    return None if d is None else {k: v.data.detach().clone() for k, v in d.items()}


def param_dict_from_state(s: Optional[Dict[str, torch.Tensor]]) -> Optional[Dict[str, ParamData]]:
    """Inverse of :func:`param_dict_state`."""
    if s is None:
        return None
    return {k: ParamData(k, init_tensor=t.clone(), device=t.device) for k, t in s.items()}
