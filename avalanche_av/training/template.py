"""The self-supervised audio-video pre-training template.

:class:`AVPretraining` is an Avalanche ``SupervisedTemplate`` whose "criterion" is the model's
own self-supervised objective L = ℓ_r + λ·ℓ_c (paper Sec. 3.1; ``docs/training.md``). Labels are
never used for training; task labels are not required.

**The minibatch is named and owned by the template.** A minibatch from our streams is
``[audio, video, target, clip_id, task_label]``; the template unpacks it once and plugins read
named fields, never positions:

* ``strategy.mb_audio`` ``(B, T, F)`` float32 fbank and ``strategy.mb_video``
  ``(B, n, 3, H, W)`` ImageNet-normalised float32 (computed once per step from the compact rows);
  ``strategy.mb_audio_raw`` / ``mb_video_raw`` the compact rows themselves (fp16 / uint8);
* ``strategy.mb_target`` (alias ``mb_y``; evaluation only), ``strategy.mb_clip_id``,
  ``strategy.mb_task``;
* ``strategy.mb_n_current``: how many leading rows are current stream samples;
  :meth:`AVPretraining.current_clips` returns them in storage form;
* :meth:`AVPretraining.append_memory`: a plugin appends its replayed rows and registers the
  block as its own; :meth:`AVPretraining.memory_rows` tells any plugin which rows are whose;
* :meth:`AVPretraining.replace_inputs`: a plugin replaces what the model sees for every row
  (LUMP's mixed clips) while the stored clips stay the loaded ones;
* ``strategy.mb_patches``: a plugin may set a :class:`~avalanche_av.models.inputs.PatchBatch`
  covering every row in ``before_forward``; the template then trains on those patch subsets
  (STELLA does this);
* ``strategy.mb_output``: the :class:`~avalanche_av.models.AVMAEOutput`; in evaluation it also
  carries ``emb_a_unmasked``/``emb_v_unmasked`` (retrieval embeddings);
* ``strategy.step_skipped``: True after ``backward`` when the step's loss was not finite and
  the update is dropped (memories then store nothing from this step).

Evaluation computes the loss deterministically (the masking draws from a generator re-seeded at
each evaluation experience) under ``no_grad``. On CUDA the forward runs under autocast
(bf16 when supported, else fp16 with a ``GradScaler``); nothing assumes CUDA.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from avalanche.core import BasePlugin
from avalanche.training.plugins.evaluation import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate
from torch.profiler import record_function

from ..models.distributed import global_negatives
from ..models.inputs import PatchBatch, prepare_audio, prepare_video, to_uint8_frames
from .distributed import (all_ranks, broadcast_parameters, check_plugins_for_distributed, is_distributed,
                          set_loader_epoch, sharded_loader, sync_gradients)

__all__ = ["AVPretraining", "default_optimizer", "NonFiniteLossError", "MemoryBlock", "require_av_template"]

#: Positions of the named fields in a minibatch; the task label is always last.
_MB_INDEX = {"audio": 0, "video": 1, "target": 2, "clip_id": 3}
_MB_LEN = 5


@dataclass(frozen=True)
class MemoryBlock:
    """Rows ``[start, stop)`` of the current minibatch that ``owner`` appended from its memory."""

    owner: Any
    start: int
    stop: int

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start


def require_av_template(strategy, plugin) -> None:
    """Raise ``TypeError`` unless ``strategy`` is an :class:`AVPretraining` (or a subclass).

    Our plugins read named minibatch fields and the SSL output that only this template provides;
    on another template they would fail deep inside a hook.
    """
    if not isinstance(strategy, AVPretraining):
        raise TypeError(
            f"{type(plugin).__name__} needs the avalanche_av.training.AVPretraining template (or a subclass); "
            f"it was added to {type(strategy).__name__}"
        )


class NonFiniteLossError(RuntimeError):
    """Raised when too many consecutive training steps produced a NaN/Inf loss."""


def default_optimizer(model: torch.nn.Module, lr: float = 1e-4) -> torch.optim.Optimizer:
    """STELLA's optimizer (paper Sec. 4.1, ``docs/training.md``): Adam, betas (0.95, 0.999), weight decay 5e-7, constant lr."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.95, 0.999), weight_decay=5e-7)


class _SSLCriterion:
    """Avalanche-compatible ``criterion(output, target)`` that returns the model's SSL loss.

    The target is ignored: the objective is self-supervised.
    """

    def __call__(self, output, target=None):  # noqa: D401
        return output.loss


class AVPretraining(SupervisedTemplate):
    """Continual self-supervised audio-video pre-training as an Avalanche strategy.

    Args:
        model: an :class:`~avalanche_av.models.AVMAE` (or any module with its interface).
        optimizer: defaults to :func:`default_optimizer` (Adam, lr 1e-4).
        train_mb_size, train_epochs, eval_mb_size, plugins, eval_every, peval_mode: as in Avalanche.
        evaluator: an ``EvaluationPlugin`` or a factory; default
            :func:`avalanche_av.evaluation.av_evaluator` (loss + retrieval metrics, progress bars).
        device: ``'cpu'``, ``'cuda'``, a ``torch.device``; ``None`` picks CUDA when available.
        amp: ``'auto'`` (bf16 on CUDA when supported, else fp16; off on CPU), ``'bf16'``,
            ``'fp16'`` or ``None`` / ``'off'``.
        eval_seed: seed of the evaluation masking, so evaluation losses are reproducible.
        nan_policy: ``'skip'`` (drop a step whose loss is NaN/Inf, count it in
            ``skipped_steps``, and raise :class:`NonFiniteLossError` after
            ``max_consecutive_nonfinite`` in a row) or ``'raise'`` (raise at once).
        max_consecutive_nonfinite: see ``nan_policy``.
        nan_check_every: read the loss's finiteness on the host every ``k`` steps (default 1:
            every step, exactly as ``nan_policy`` says). Each read is a host sync on a GPU; with
            ``k > 1`` the steps in between are checked **on the device**: a non-finite step's
            gradients are zeroed before the update (a fused optimizer skips it exactly, through
            its ``found_inf``; Adam/AdamW otherwise still apply their decayed momentum, and
            their step counter advances), its memory insertion is dropped when the memory next
            reads it, and it is counted in ``skipped_steps`` at the next check (every ``k``-th
            step and at the end of each experience); ``'raise'`` and
            ``max_consecutive_nonfinite`` act at that check, up to ``k - 1`` steps late. See
            ``docs/training.md`` ("Non-finite losses").
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        optimizer: Optional[torch.optim.Optimizer] = None,
        train_mb_size: int = 32,
        train_epochs: int = 1,
        eval_mb_size: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        plugins: Optional[Sequence[BasePlugin]] = None,
        evaluator: Union[EvaluationPlugin, Callable[[], EvaluationPlugin], None] = None,
        eval_every: int = -1,
        peval_mode: str = "epoch",
        amp: Optional[str] = "auto",
        eval_seed: int = 0,
        nan_policy: str = "skip",
        max_consecutive_nonfinite: int = 20,
        nan_check_every: int = 1,
        **kwargs,
    ):
        if train_mb_size < 2:
            raise ValueError(f"train_mb_size must be >= 2 (the contrastive term needs negatives), got {train_mb_size}")
        if nan_policy not in ("skip", "raise"):
            raise ValueError(f"nan_policy must be 'skip' or 'raise', got {nan_policy!r}")
        if isinstance(nan_check_every, bool) or not isinstance(nan_check_every, int) or nan_check_every < 1:
            raise ValueError(f"nan_check_every must be an int >= 1 (steps between host checks), got {nan_check_every!r}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if evaluator is None:
            from ..evaluation import av_evaluator

            evaluator = av_evaluator
        super().__init__(
            model=model,
            optimizer=optimizer if optimizer is not None else default_optimizer(model),
            criterion=_SSLCriterion(),
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size or train_mb_size,
            device=device,
            plugins=list(plugins or []),
            evaluator=evaluator,
            eval_every=eval_every,
            peval_mode=peval_mode,
            **kwargs,
        )
        self.amp_dtype = self._resolve_amp(amp, device)
        self.scaler = (
            torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 and device.type == "cuda" else None
        )
        self.eval_seed = eval_seed
        self.nan_policy = nan_policy
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.skipped_steps = 0
        self._consecutive_nonfinite = 0
        self._skip_update = False
        self._eval_generator: Optional[torch.Generator] = None
        self.mb_patches: Optional[PatchBatch] = None
        self.mb_n_current = 0
        self.mb_memory_blocks: List[MemoryBlock] = []
        #: the plugin that replaced this step's model inputs (:meth:`replace_inputs`), or None
        self.mb_inputs_owner: Any = None
        self.step_skipped = False
        self._mb_cache: Dict[str, torch.Tensor] = {}
        self.nan_check_every = nan_check_every
        #: ``()`` bool on the device while the step's finiteness is not known on the host
        #: (``nan_check_every > 1``), else None; memories pass it on as their ``keep`` flag
        self.step_finite: Optional[torch.Tensor] = None
        self._unchecked_steps = 0
        self._deferred: Optional[Dict[str, torch.Tensor]] = None
        self._mb_clip_id_host: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _resolve_amp(amp: Optional[str], device: torch.device) -> Optional[torch.dtype]:
        allowed = ("auto", "bf16", "fp16", "off", None)
        if amp not in allowed:
            raise ValueError(f"amp must be one of {allowed}, got {amp!r}")
        if amp in (None, "off") or device.type != "cuda":
            return None
        if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return torch.float16

    def autocast(self):
        """Autocast context for the current device (a no-op on CPU or with AMP off)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ minibatch views
    def _mb_field(self, name: str) -> torch.Tensor:
        return self.mbatch[_MB_INDEX[name]]

    @property
    def mb_audio_raw(self) -> torch.Tensor:
        """``(R, T, F)`` fbank rows as loaded (fp16 or float32), all ``R`` rows."""
        return self._mb_field("audio")

    @property
    def mb_video_raw(self) -> torch.Tensor:
        """``(R, n, 3, H, W)`` frames as loaded (uint8, or float in [0, 1])."""
        return self._mb_field("video")

    @property
    def mb_audio(self) -> torch.Tensor:
        """``(R, T, F)`` float32 fbank of every row of the minibatch."""
        if "audio" not in self._mb_cache:
            self._mb_cache["audio"] = prepare_audio(self.mb_audio_raw)
        return self._mb_cache["audio"]

    @property
    def mb_video(self) -> torch.Tensor:
        """``(R, n_frames, 3, H, W)`` ImageNet-normalised float32 frames of every row."""
        if "video" not in self._mb_cache:
            self._mb_cache["video"] = prepare_video(self.mb_video_raw)
        return self._mb_cache["video"]

    @property
    def mb_x(self):
        return self.mb_audio, self.mb_video

    @property
    def mb_target(self) -> torch.Tensor:
        """``(R,)`` class targets; only evaluation metrics read them."""
        return self._mb_field("target")

    @property
    def mb_y(self) -> torch.Tensor:
        return self.mb_target

    @property
    def mb_clip_id(self) -> torch.Tensor:
        """``(R,)`` clip ids."""
        return self._mb_field("clip_id")

    @property
    def mb_clip_id_host(self) -> torch.Tensor:
        """``(B,)`` clip ids of the current rows as the data loader produced them (host memory,
        so reading them is no device sync)."""
        return self._mb_clip_id_host

    @property
    def mb_task(self) -> torch.Tensor:
        """``(R,)`` task labels."""
        return self.mbatch[-1]

    @property
    def mb_n_rows(self) -> int:
        """Rows in the minibatch: current ones plus every appended memory block."""
        return self.mbatch[0].shape[0]

    def current_clips(self) -> Dict[str, torch.Tensor]:
        """The current rows in storage form: ``audio (B, T, F)``, ``video (B, n, 3, H, W)``
        uint8, ``target (B,)``, ``clip_id (B,)``. What a memory is offered after a step."""
        n = self.mb_n_current
        return {
            "audio": self.mb_audio_raw[:n],
            "video": to_uint8_frames(self.mb_video_raw[:n]),
            "target": self.mb_target[:n],
            "clip_id": self.mb_clip_id[:n],
        }

    def append_memory(self, owner: Any, fields: Optional[Dict[str, torch.Tensor]] = None,
                      n_rows: Optional[int] = None) -> MemoryBlock:
        """Append ``owner``'s replayed rows to the minibatch and register them as its block.

        Args:
            owner: the plugin replaying (any object; compared by identity).
            fields: ``audio (M, T, F)``, ``video (M, n, 3, H, W)`` (uint8 or float in [0, 1]),
                ``target (M,)``, ``clip_id (M,)``, optional ``task (M,)`` (default: the task label
                of the current rows). ``None`` registers ``n_rows`` rows that exist only in the
                plugin's :class:`PatchBatch` (STELLA+ replays stored patches, not clips).
            n_rows: with ``fields=None``, how many rows the block has.

        Returns:
            The :class:`MemoryBlock`; its ``rows`` slice addresses the block in ``mb_output``.
        """
        if self.mb_patches is not None:
            raise RuntimeError(
                f"{type(owner).__name__} appends memory rows after another plugin rewrote the minibatch "
                "into patches; plugins that append memory must run before it"
            )
        if self.mb_inputs_owner is not None:
            raise RuntimeError(
                f"{type(owner).__name__} appends memory rows after {type(self.mb_inputs_owner).__name__} "
                "replaced the model inputs; plugins that append memory must run before it"
            )
        start = self.mb_n_rows if not self.mb_memory_blocks else self.mb_memory_blocks[-1].stop
        if fields is None:
            if n_rows is None or n_rows < 0:
                raise ValueError("append_memory needs fields, or n_rows >= 0 for a patch-only block")
            block = MemoryBlock(owner, start, start + n_rows)
            self.mb_memory_blocks.append(block)
            return block
        if start != self.mb_n_rows:
            raise RuntimeError("clip rows cannot follow a patch-only memory block")
        m = fields["audio"].shape[0]
        for name in ("video", "target", "clip_id"):
            if fields[name].shape[0] != m:
                raise ValueError(f"append_memory: field {name!r} has {fields[name].shape[0]} rows, audio has {m}")
        dev = self.device
        cur_v = self.mb_video_raw
        mem_v = fields["video"].to(dev, non_blocking=True)
        if cur_v.dtype == torch.uint8:
            mem_v = to_uint8_frames(mem_v)
        else:
            mem_v = mem_v.to(cur_v.dtype) / 255.0 if mem_v.dtype == torch.uint8 else mem_v.to(cur_v.dtype)
        task = fields.get("task")
        if task is None:
            task = self.mb_task[:1].expand(m)
        mb = self.mbatch
        mb[_MB_INDEX["audio"]] = torch.cat([mb[0], fields["audio"].to(dev, mb[0].dtype, non_blocking=True)])
        mb[_MB_INDEX["video"]] = torch.cat([mb[1], mem_v])
        mb[_MB_INDEX["target"]] = torch.cat([mb[2], fields["target"].to(dev, mb[2].dtype)])
        mb[_MB_INDEX["clip_id"]] = torch.cat([mb[3], fields["clip_id"].to(dev, mb[3].dtype)])
        mb[-1] = torch.cat([mb[-1], task.to(dev, mb[-1].dtype)])
        self._mb_cache.clear()
        block = MemoryBlock(owner, start, start + m)
        self.mb_memory_blocks.append(block)
        return block

    def replace_inputs(self, owner: Any, audio: torch.Tensor, video: torch.Tensor) -> None:
        """Make the model see ``audio`` / ``video`` for every row of this step instead of the loaded clips.

        LUMP trains on mixed clips this way. Only what the forward reads changes (``mb_audio``,
        ``mb_video``); the compact rows (``mb_audio_raw``/``mb_video_raw``, :meth:`current_clips`)
        stay the loaded clips, so memories still store real clips. Valid until the next minibatch;
        no plugin may append memory rows afterwards (that raises ``RuntimeError``).

        Args:
            owner: the plugin replacing the inputs (recorded in ``mb_inputs_owner``).
            audio: ``(R, T, F)`` float fbank, ``R`` = every row of the minibatch.
            video: ``(R, n, 3, H, W)`` float ImageNet-normalised frames.

        Raises:
            ValueError: a shape differs from ``mb_audio`` / ``mb_video``.
        """
        for name, new, cur in (("audio", audio, self.mb_audio), ("video", video, self.mb_video)):
            if tuple(new.shape) != tuple(cur.shape):
                raise ValueError(f"replace_inputs: {name} must have shape {tuple(cur.shape)}, got {tuple(new.shape)}")
        self._mb_cache["audio"] = audio.to(self.device, torch.float32)
        self._mb_cache["video"] = video.to(self.device, torch.float32)
        self.mb_inputs_owner = owner

    def memory_rows(self, owner: Any) -> Optional[slice]:
        """The rows ``owner`` appended in this step, or ``None``."""
        for block in self.mb_memory_blocks:
            if block.owner is owner:
                return block.rows
        return None

    def _unpack_minibatch(self):
        mbatch = self.mbatch
        if isinstance(mbatch, tuple):
            mbatch = list(mbatch)
            self.mbatch = mbatch
        if len(mbatch) != _MB_LEN:
            raise ValueError(
                "an avalanche-av minibatch must be [audio, video, target, clip_id, task_label]; "
                f"got {len(mbatch)} elements"
            )
        # the clip ids as loaded (host memory): plugins that key state by clip read them here
        # without a device-to-host copy
        self._mb_clip_id_host = mbatch[_MB_INDEX["clip_id"]]
        for i in range(len(mbatch)):
            mbatch[i] = mbatch[i].to(self.device, non_blocking=True)
        self.mb_n_current = mbatch[0].shape[0]
        self.mb_memory_blocks = []
        self.mb_patches = None
        self.mb_inputs_owner = None
        self._mb_cache = {}

    # ------------------------------------------------------------------ forward / loss
    def forward(self):
        model = self.model
        gen = None if self.is_training else self._eval_generator
        # Training draws contrastive negatives from every rank (a no-op in a single process).
        with record_function("av.forward"), self.autocast(), global_negatives(self.is_training):
            if self.mb_patches is not None:
                p = self.mb_patches
                n_rows = self.mb_memory_blocks[-1].stop if self.mb_memory_blocks else self.mb_n_current
                if len(p) != n_rows:
                    raise ValueError(f"mb_patches has {len(p)} rows, the minibatch has {n_rows} (current + memory)")
                out = model.forward_patches(
                    p.audio_patches, p.audio_idx, p.video_patches, p.video_idx, generator=gen
                )
            else:
                out = model(self.mb_audio, self.mb_video, generator=gen)
            if not self.is_training:
                ea, ev = model.embed(self.mb_audio, self.mb_video)
                out.emb_a_unmasked, out.emb_v_unmasked = ea.float(), ev.float()
        return out

    def criterion(self):
        return self.mb_output.loss

    def _before_eval_exp(self, **kwargs):
        # Re-seeded per experience: the evaluation loss of an experience never depends on
        # what was evaluated before it.
        self._eval_generator = torch.Generator(device="cpu").manual_seed(self.eval_seed)
        super()._before_eval_exp(**kwargs)

    # ------------------------------------------------------------------ several ranks (docs/distributed.md)
    #: seed of the per-experience data shards under torchrun (the run's seed; same on every rank)
    shard_seed: int = 0

    @property
    def train_shard_seed(self) -> int:
        """Seed of this experience's training shards under torchrun: from :attr:`shard_seed` and
        the experience, the same on every rank (replay loaders of plugins use it too)."""
        return self.shard_seed * 100_003 + int(getattr(self.experience, "current_experience", 0))

    def make_train_dataloader(self, **kwargs):
        """Avalanche's loader in a single process; under torchrun this rank's shuffled shard."""
        if not is_distributed():
            return super().make_train_dataloader(**kwargs)
        self.dataloader = sharded_loader(self.adapted_dataset, self.train_mb_size, train=True,
                                         seed=self.train_shard_seed, device=self.device, **kwargs)

    def make_eval_dataloader(self, **kwargs):
        """Avalanche's loader in a single process; under torchrun this rank's (padded) shard."""
        if not is_distributed():
            return super().make_eval_dataloader(**kwargs)
        self.dataloader = sharded_loader(self.adapted_dataset, self.eval_mb_size, train=False, device=self.device,
                                         **kwargs)

    def _before_training_exp(self, **kwargs):
        super()._before_training_exp(**kwargs)
        # Every rank starts the experience from rank 0's weights (a no-op when they agree, as
        # they do; modules built lazily by plugins, e.g. STELLA's AVM, are in the optimizer).
        if is_distributed():
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            broadcast_parameters([*self.model.parameters(), *params])

    def _before_training_epoch(self, **kwargs):
        set_loader_epoch(self.dataloader, self.clock.train_exp_epochs)  # a new shard shuffle per epoch
        super()._before_training_epoch(**kwargs)

    def _check_distributed_training_compatibility(self):
        return check_plugins_for_distributed(self.plugins)

    # ------------------------------------------------------------------ deferred loss check
    def _backward_unchecked(self) -> None:
        """Backward of a step whose loss is not read on the host (``nan_check_every > 1``).

        The finiteness flag stays on the device: it zeroes a non-finite step's gradients, skips a
        fused optimizer's update (``found_inf``), is the memories' ``keep`` flag, and feeds the
        counters that :meth:`_settle_unchecked` reads at the next check.
        """
        finite = torch.isfinite(self.loss.detach()).all()
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # every rank drops the same steps (their gradient all-reduce must match); a device
            # collective, no host read
            flag = finite.to(torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = flag.bool()
        bad = ~finite
        d = self._deferred
        if d is None:
            zero = torch.zeros((), dtype=torch.int64, device=self.loss.device)
            run = torch.full((), self._consecutive_nonfinite, dtype=torch.int64, device=self.loss.device)
            d = self._deferred = {"count": zero, "run": run, "max_run": run.clone()}
        d["count"] = d["count"] + bad
        d["run"] = torch.where(bad, d["run"] + 1, torch.zeros_like(d["run"]))
        d["max_run"] = torch.maximum(d["max_run"], d["run"])
        self._unchecked_steps += 1
        self.step_finite = finite
        with record_function("av.backward"):
            if self.scaler is not None:
                self.scaler.scale(self.loss).backward(retain_graph=self.retain_graph)
            else:
                self.loss.backward(retain_graph=self.retain_graph)
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.masked_fill_(bad, 0.0)
        if self.scaler is None and getattr(self.optimizer, "_step_supports_amp_scaling", False):
            self.optimizer.found_inf = bad.float()  # fused optimizers skip the step on the device

    def _settle_unchecked(self) -> None:
        """Read the device counters of the unchecked steps (one host read), count the non-finite
        ones in ``skipped_steps``, and warn or raise as ``nan_policy`` says."""
        d, self._deferred = self._deferred, None
        n_unchecked, self._unchecked_steps = self._unchecked_steps, 0
        if d is None:
            return
        count, run, max_run = torch.stack([d["count"], d["run"], d["max_run"]]).tolist()
        self.skipped_steps += count
        self._consecutive_nonfinite = run
        if not count:
            return
        msg = (f"{count} of the last {n_unchecked} training step(s) had a non-finite loss (checked on the device, "
               f"nan_check_every={self.nan_check_every}; before experience {self.clock.train_exp_counter}, "
               f"iteration {self.clock.train_exp_iterations})")
        if self.nan_policy == "raise" or max_run >= self.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                msg + f"; up to {max_run} consecutive non-finite steps. Check the inputs (NaN fbank/frames), "
                "lower the learning rate, or disable AMP."
            )
        warnings.warn(msg + "; their updates and memory insertions were dropped (nan_policy='skip')")

    def _after_training_exp(self, **kwargs):
        self._settle_unchecked()  # skipped_steps is exact at every experience boundary
        super()._after_training_exp(**kwargs)

    # ------------------------------------------------------------------ backward / step
    def backward(self):
        self._skip_update = False
        self.step_skipped = False
        self.step_finite = None
        if getattr(self.optimizer, "found_inf", None) is not None and self.scaler is None:
            self.optimizer.found_inf = None  # set by the previous unchecked step
        if self.nan_check_every > 1:
            if self._unchecked_steps + 1 < self.nan_check_every:
                return self._backward_unchecked()
            self._settle_unchecked()  # this step is read on the host below, as with nan_check_every=1
        # all_ranks: every rank skips the same steps, or their collectives would not match.
        if not all_ranks(torch.isfinite(self.loss.detach()).all()):
            self.step_skipped = True
            self.skipped_steps += 1
            self._consecutive_nonfinite += 1
            msg = (
                f"non-finite loss ({self.loss.detach().flatten()[0].item()}) at experience "
                f"{self.clock.train_exp_counter}, iteration {self.clock.train_exp_iterations}"
            )
            if self.nan_policy == "raise" or self._consecutive_nonfinite >= self.max_consecutive_nonfinite:
                raise NonFiniteLossError(
                    msg + f"; {self._consecutive_nonfinite} consecutive non-finite steps. Check the inputs "
                    "(NaN fbank/frames), lower the learning rate, or disable AMP."
                )
            warnings.warn(msg + "; step skipped (nan_policy='skip')")
            self._skip_update = True
            self.optimizer.zero_grad(set_to_none=True)
            return
        self._consecutive_nonfinite = 0
        with record_function("av.backward"):
            if self.scaler is not None:
                self.scaler.scale(self.loss).backward(retain_graph=self.retain_graph)
            else:
                self.loss.backward(retain_graph=self.retain_graph)

    def optimizer_step(self):
        if self._skip_update:
            return
        sync_gradients(self.optimizer)  # average over ranks; no-op in a single process
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
