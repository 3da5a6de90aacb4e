"""STELLA and STELLA+ (ICML 2024) as one Avalanche plugin.

Usage: ``AVPretraining(model, ..., plugins=[StellaPlugin()])``; nothing else changes.

Each training iteration runs the paper's stages (Sec. 3.2-3.3, Algorithms 1-3), one method each,
passing a typed :class:`StellaStep`:

1. :meth:`StellaPlugin._score`: the backbone runs the **unmasked** current clips through the
   modality and shared blocks **without gradients** (``model.encode_full`` + ``model.fuse``);
   the AVM cross-attends over those joint features.
2. :meth:`StellaPlugin._avm_loss`: the AVM's matching loss (BCE, half the batch deranged before
   fusion), current samples only, trained in the same optimizer step (its parameters are a
   second group of the strategy's optimizer; the AVM lives outside the model).
3. :meth:`StellaPlugin._importance`: importance (Eq. 2), top-κ candidates and pooled queries
   (Eq. 3).
4. :meth:`StellaPlugin._exclusion`: each current sample is paired with one memory sample; the
   correlation with its stored query gives an exclusion **probability** per candidate patch
   (Eq. 4), and a Bernoulli draw gives the exclusion **mask**.
5. :meth:`StellaPlugin._select_current` and :meth:`StellaPlugin._select_memory`: κ_v video
   patches (multinomial; top-κ on the very first step) and κ_a audio patches (time chunks,
   Algorithm 1); memory samples are re-selected from their **stored** scores with fresh draws
   (STELLA) or replayed as stored patches (STELLA+).

The minibatch becomes a :class:`~avalanche_av.models.inputs.PatchBatch` of ``[current; memory]``
and the template's MAE + InfoNCE runs inside the selection. ``before_backward`` adds
``α·ℓ_p`` (MSE between stored and current pooled embeddings of the memory rows) and ``ℓ_avm``.
After the step the current samples are offered to the reservoir (the online-memory base).
Evaluation is untouched: these hooks only run in training.

**Score cache** (an option beyond the paper, off by default: ``score_cache_epochs=k``): a
clip's importance, pooled queries and exclusion probabilities are reused for ``k`` epochs
after it was scored, instead of re-scoring it at every step; only clips without valid cached
scores go through stages 1-4 (``docs/stella.md``, "Score cache").

Each stage is wrapped in a ``torch.profiler.record_function`` range named ``stella.<stage>``
(``score``, ``avm_loss``, ``importance``, ``exclusion``, ``select_current``, ``select_memory``,
``penalty``, ``memory_update``), which :mod:`avalanche_av.evaluation.efficiency` aggregates.
The pure math lives in :mod:`avalanche_av.training.selection` and :mod:`avalanche_av.models.avm`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor
from torch.profiler import record_function

from ...models.avm import AVMatching, AVMOutput, avm_loss, make_avm_pairs
from ...models.inputs import PatchBatch, normalize_video_patches, prepare_video
from ...models.patching import gather_patches, patchify_video
from .. import selection as sel
from ..losses import embedding_penalty
from ..score_cache import CACHED_FIELDS, ScoreCache
from ..storage_policy import StellaBuffer
from .memory import OnlineMemoryPlugin

__all__ = ["StellaPlugin", "StellaStep", "StellaScores", "StellaStepStats", "SELECTIONS", "AUDIO_SELECTIONS"]

#: Patch-selection modes: the method, and the Random / MATS ablations (paper Table 3).
SELECTIONS = ("stella", "random", "mats")
#: Audio selection constraints (paper Fig. 9): time chunks (Algorithm 1), frequency bands, none.
AUDIO_SELECTIONS = ("time", "frequency", "none")

_F16 = torch.float16


@dataclass
class StellaScores:
    """The scoring pass over the current samples (stage 1; no gradients).

    Attributes:
        patches_a: ``(B, Na, Pa)`` raw audio patches. patches_v: ``(B, Nv, Pv)`` normalised video
            patches.
        tokens_a, tokens_v: ``(B, N, D)`` modality-block outputs (the AVM's negatives are fused
            from these).
        fused_a, fused_v: ``(B, N, D)`` joint features from the shared blocks, before the final
            norm: the AVM's input.
        avm: the AVM's output on the true pairs, with attention logits and q/k.
    """

    patches_a: Tensor
    patches_v: Tensor
    tokens_a: Tensor
    tokens_v: Tensor
    fused_a: Tensor
    fused_v: Tensor
    avm: AVMOutput


@dataclass
class StellaStep:
    """Everything one STELLA iteration computes, stage by stage (shapes for ``B`` current rows).

    Attributes:
        n_current: ``B``. first_step: the memory was empty (plain top-κ, no exclusion).
        scores: stage 1. avm_loss, avm_acc: ``()`` stage 2 (the loss carries the AVM's graph).
        imp_a, imp_v: ``(B, N)`` importance (Eq. 2; uniform under the RCA / MATS ablations).
        cand_a, cand_v: ``(B, κ)`` top-κ candidate indices.
        query_a, query_v: ``(B, H, d)`` importance-weighted pooled queries (Eq. 3).
        p_excl_a, p_excl_v: ``(B, N)`` exclusion **probabilities** (Eq. 4; 0 off-candidate, and 0
            everywhere on the first step or with ``use_correlation=False``).
        excl_a, excl_v: ``(B, N)`` bool exclusion **masks** drawn from them.
        idx_a, idx_v: ``(B, κ)`` selected patch indices of the current samples.
        memory: the memory batch drawn this step (fields on the device) or ``None``.
        penalty: ``()`` the embedding penalty ℓ_p once computed (detached), else ``None``.
        scored_rows: with the score cache, the batch rows ``(m,)`` that went through stages 1-4
            this step (the others reused cached scores); ``scores`` then holds the full-batch
            patches, but tokens, fused features and the AVM output of these rows only (``None``
            when no row was scored). ``None`` without the cache (every row is scored).
        avm_stats: ``(loss, acc)`` reported in ``last_stats`` when they differ from
            ``(avm_loss, avm_acc)``: a step that scored no row repeats the last scored values.
    """

    n_current: int
    first_step: bool
    scores: StellaScores
    avm_loss: Tensor
    avm_acc: Tensor
    imp_a: Optional[Tensor] = None
    imp_v: Optional[Tensor] = None
    cand_a: Optional[Tensor] = None
    cand_v: Optional[Tensor] = None
    query_a: Optional[Tensor] = None
    query_v: Optional[Tensor] = None
    p_excl_a: Optional[Tensor] = None
    p_excl_v: Optional[Tensor] = None
    excl_a: Optional[Tensor] = None
    excl_v: Optional[Tensor] = None
    idx_a: Optional[Tensor] = None
    idx_v: Optional[Tensor] = None
    memory: Optional[Dict[str, Tensor]] = None
    penalty: Optional[Tensor] = None
    scored_rows: Optional[Tensor] = None
    avm_stats: Optional[tuple] = None


@dataclass
class StellaStepStats:
    """Detached per-step quantities, for logging and tests (tensors: no device sync)."""

    avm_loss: Tensor
    avm_acc: Tensor
    penalty: Optional[Tensor]
    n_current: int
    n_memory: int
    excluded_frac_v: Tensor
    excluded_frac_a: Tensor


class StellaPlugin(OnlineMemoryPlugin):
    """STELLA / STELLA+ continual audio-video pre-training.

    Args:
        mem_size: rehearsal memory size in clips (2000 in the paper; 5000 for AudioSet).
        batch_size_mem: memory batch size; default the current batch size. While the memory
            holds fewer samples, all of them are replayed.
        rho_a, rho_v: fraction of audio / video patches **kept** (κ = ⌊ρ·N⌋ as in the authors'
            code, at least 1), in (0, 1].
        chunk_size: audio time-chunk length L_c (Algorithm 1).
        beta: importance temperature β (Eq. 2).
        alpha: weight of the embedding penalty ℓ_p.
        use_importance: ``False`` is the RCA ablation: importance is uniform, so what remains is
            the replay-guided exclusion plus uniform sampling of the rest.
        use_correlation: ``False`` is the LPIS ablation: no exclusion, so what remains is
            importance-weighted sampling alone.
        selection: ``'stella'``; ``'random'`` (uniform patches, no AVM scores used);
            ``'mats'`` (video by motion, paper Table 3; audio with uniform importance through
            ``audio_selection``). The ablations keep training the AVM so costs stay comparable.
        audio_selection: ``'time'`` (Algorithm 1), ``'frequency'`` (whole frequency bands) or
            ``'none'`` (plain importance multinomial).
        store_patches: ``True`` = STELLA+: memory keeps only the selected patches. Default
            ``False``, or the mode of an injected ``storage_policy``.
        avm_heads: AVM heads; default the backbone's ``num_heads``.
        storage_policy: a :class:`~avalanche_av.training.storage_policy.StellaBuffer` to use.
        memory_device: where a new memory lives (CPU, pinned when CUDA is present).
        seed: seed of the memory's sampling generator.
        score_cache_epochs: ``0`` (default, the paper): every current clip is scored at every
            step. ``k >= 1`` (an option beyond the paper, ``docs/stella.md`` "Score cache"): a
            clip's importance, pooled queries and exclusion probabilities are reused for ``k``
            epochs after it was scored. Cached rows skip the scoring pass **and the AVM's
            matching loss**: the AVM trains on the scored rows only (on a step where every row
            is cached it gets no update). Cached rows are selected like memory samples (fresh
            draws from their stored scores). Costs ``2·(2·Na + 2·Nv + 2·D)`` bytes per clip seen
            on the strategy's device (8,256 B at ``base``).

        avm_gate: ``0`` (default, the paper): the AVM's importance is used from the first step.
            ``g`` in (0, 1) (an option beyond the paper, ``docs/stella.md`` "AVM gate"): at the
            start of every experience, and until a moving average (decay 0.9, restarted per
            experience) of the AVM's match accuracy on the current batches reaches ``g``,
            importance is uniform, as in the RCA ablation; the exclusion still runs. The
            average stays on the device and gates with ``torch.where``: no host sync.

    Raises:
        ValueError: a ρ outside (0, 1], an unknown selection mode, ``mem_size < 1``, a
            ``store_patches`` that contradicts the injected buffer, or (at the start of training)
            a κ that does not leave at least one masked patch, or another online-memory plugin
            in the same strategy (STELLA rewrites every row of the minibatch).
        TypeError: a ``storage_policy`` that is not a ``StellaBuffer``.
    """

    #: STELLA mode, stored per sample beyond the clip (all fp16; ``D`` width, ``H`` AVM heads of
    #: size ``d``, ``N`` patches). Tiny: 2·128 + 2·4·32 + 2·32 + 2·64 values -> 1,408 bytes.
    MEMORY_FIELDS = {
        "pooled_a": _F16,  # (D,) DER "logits": pooled audio embedding of the masked selected view
        "pooled_v": _F16,  # (D,)
        "query_a": _F16,  # (H, d) pooled audio query (Eq. 3), paired with later current samples
        "query_v": _F16,  # (H, d)
        "imp_a": _F16,  # (Na,) importance at insertion; memory samples are re-selected from it
        "imp_v": _F16,  # (Nv,)
        "p_excl_a": _F16,  # (Na,) exclusion probability at insertion
        "p_excl_v": _F16,  # (Nv,)
    }
    #: STELLA+ mode, stored beyond the selected patches (``PATCH_FIELDS`` of the buffer).
    PATCH_MEMORY_FIELDS = {"pooled_a": _F16, "pooled_v": _F16, "query_a": _F16, "query_v": _F16}
    exclusive = True

    def __init__(
        self,
        mem_size: int = 2000,
        batch_size_mem: Optional[int] = None,
        rho_a: float = 0.5,
        rho_v: float = 0.5,
        chunk_size: int = 4,
        beta: float = 0.4,
        alpha: float = 0.5,
        use_importance: bool = True,
        use_correlation: bool = True,
        selection: str = "stella",
        audio_selection: str = "time",
        store_patches: Optional[bool] = None,
        avm_heads: Optional[int] = None,
        storage_policy: Optional[StellaBuffer] = None,
        memory_device: str = "cpu",
        seed: int = 0,
        score_cache_epochs: int = 0,
        avm_gate: float = 0.0,
    ):
        if isinstance(score_cache_epochs, bool) or not isinstance(score_cache_epochs, int) or score_cache_epochs < 0:
            raise ValueError(f"score_cache_epochs must be an int >= 0 (0: off), got {score_cache_epochs!r}")
        for name, rho in (("rho_a", rho_a), ("rho_v", rho_v)):
            if not 0.0 < rho <= 1.0:
                raise ValueError(f"{name} is the fraction of patches kept and must be in (0, 1], got {rho}")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if audio_selection not in AUDIO_SELECTIONS:
            raise ValueError(f"audio_selection must be one of {AUDIO_SELECTIONS}, got {audio_selection!r}")
        if not (isinstance(chunk_size, int) and chunk_size >= 1):
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if storage_policy is not None:
            if not isinstance(storage_policy, StellaBuffer):
                raise TypeError(f"StellaPlugin needs a StellaBuffer storage policy, got {type(storage_policy).__name__}")
            if store_patches is not None and store_patches != storage_policy.store_patches:
                raise ValueError(
                    f"store_patches={store_patches} contradicts the injected StellaBuffer "
                    f"(store_patches={storage_policy.store_patches})"
                )
            store_patches = storage_policy.store_patches
        self.store_patches = bool(store_patches)
        super().__init__(mem_size, batch_size_mem, storage_policy, memory_device, seed)
        self.rho_a, self.rho_v = rho_a, rho_v
        self.chunk_size, self.beta, self.alpha = chunk_size, beta, alpha
        self.use_importance, self.use_correlation = use_importance, use_correlation
        self.selection, self.audio_selection = selection, audio_selection
        self.avm_heads = avm_heads
        self.avm: Optional[AVMatching] = None
        self.kappa_a = self.kappa_v = 0
        #: the step in flight (between before_forward and after_training_iteration)
        self.step: Optional[StellaStep] = None
        self.last_stats: Optional[StellaStepStats] = None
        self.score_cache_epochs = score_cache_epochs
        #: the score cache (``score_cache_epochs > 0``), or None
        self.score_cache: Optional[ScoreCache] = ScoreCache(score_cache_epochs) if score_cache_epochs else None
        #: training epochs completed (the cache's clock)
        self.epochs_seen = 0
        self._avm_carry: Optional[tuple] = None
        if not 0.0 <= float(avm_gate) < 1.0:
            raise ValueError(f"avm_gate must be in [0, 1), got {avm_gate}")
        self.avm_gate = float(avm_gate)
        #: moving average of the AVM's match accuracy in this experience (device scalar), or None
        self.avm_acc_ema: Optional[Tensor] = None

    # ------------------------------------------------------------------ memory layout
    def make_storage(self, mem_size: int, device: str) -> StellaBuffer:
        return StellaBuffer(mem_size, store_patches=self.store_patches, device=device)

    def memory_fields(self) -> Dict[str, torch.dtype]:
        return dict(self.PATCH_MEMORY_FIELDS if self.store_patches else self.MEMORY_FIELDS)

    # ------------------------------------------------------------------ setup
    def _setup(self, strategy) -> None:
        """Build the AVM, register it with the optimizer and fix κ (idempotent)."""
        c = strategy.model.config
        if self.avm is None:
            self.avm = AVMatching(c.embed_dim, self.avm_heads or c.num_heads).to(strategy.device)
        params = list(self.avm.parameters())
        in_opt = {id(p) for g in strategy.optimizer.param_groups for p in g["params"]}
        if not any(id(p) in in_opt for p in params):
            # Same optimizer and learning rate as the backbone (paper Sec. 4.1).
            strategy.optimizer.add_param_group({"params": params})
        # Floor, as the authors' code (int()); the epsilon keeps an exact product from losing one.
        self.kappa_a = max(1, int(self.rho_a * c.num_audio_patches + 1e-9))
        self.kappa_v = max(1, int(self.rho_v * c.num_video_patches + 1e-9))
        for name, kappa, n in (("audio", self.kappa_a, c.num_audio_patches), ("video", self.kappa_v, c.num_video_patches)):
            n_vis = c.num_visible(n)
            if kappa <= n_vis:
                raise ValueError(
                    f"STELLA keeps κ={kappa} {name} patches (ρ of {n}) but the mask ratio {c.mask_ratio} "
                    f"leaves {n_vis} visible; κ must exceed that so something is reconstructed. "
                    f"Raise rho_{name[0]} above {n_vis / n:.3f}."
                )

    def prepare_for_load(self, strategy) -> None:
        """Called by :func:`~avalanche_av.training.checkpoint.load_checkpoint` before the optimizer
        state is restored, so that the AVM's parameter group exists."""
        self._setup(strategy)

    def before_training(self, strategy, **kwargs):
        super().before_training(strategy, **kwargs)
        self._setup(strategy)
        self.avm.train()

    def before_training_exp(self, strategy, **kwargs):
        # The gate's average restarts with every experience: on new classes the AVM starts at chance.
        self.avm_acc_ema = None

    # ------------------------------------------------------------------ stages
    def _score(self, strategy, audio: Tensor, video: Tensor) -> StellaScores:
        """Stage 1: unmasked joint features of the current clips and the AVM on true pairs.

        Args:
            audio: ``(B, T, F)`` float32 fbank. video: ``(B, n, 3, H, W)`` normalised frames.
        """
        model = strategy.model
        with torch.no_grad(), strategy.autocast():
            pa, pv = model.patchify(audio, video)
            a_tok, v_tok = model.encode_full(pa, pv)
            fa, fv = model.fuse(a_tok, v_tok)
            out = self.avm(fa, fv, return_attn=True)
        return StellaScores(pa, pv, a_tok, v_tok, fa, fv, out)

    def _avm_loss(self, strategy, scores: StellaScores) -> tuple[Tensor, Tensor]:
        """Stage 2: the AVM's matching loss on the current samples (gradients reach only the AVM).

        Returns:
            ``loss ()`` with the AVM's graph, ``acc ()`` detached match accuracy.
        """
        b = scores.fused_a.shape[0]
        perm, is_match = make_avm_pairs(b)
        # Fusion is per sample, so the matched rows of the AVM batch equal the scored (fa, fv):
        # only the deranged rows go through the shared blocks again. Indices are built on CPU.
        neg = torch.nonzero(is_match == 0).squeeze(1).to(strategy.device)
        perm, is_match = perm.to(strategy.device), is_match.to(strategy.device)
        fa, fv = scores.fused_a.clone(), scores.fused_v.clone()
        if neg.numel():
            with torch.no_grad(), strategy.autocast():
                fa[neg], fv[neg] = strategy.model.fuse(scores.tokens_a[neg], scores.tokens_v[perm[neg]])
        with strategy.autocast():
            logit = self.avm(fa, fv, return_attn=False).logit.float()
        loss = avm_loss(logit, is_match)
        acc = ((logit.detach() > 0).float() == is_match).float().mean()
        return loss, acc

    def _importance(self, scores: StellaScores, n_frames: int) -> tuple[Tensor, ...]:
        """Stage 3: importance (Eq. 2), top-κ candidates and pooled queries (Eq. 3).

        Returns:
            ``imp_a (B, Na)``, ``imp_v (B, Nv)``, ``cand_a (B, κa)``, ``cand_v (B, κv)``,
            ``query_a (B, H, d)``, ``query_v (B, H, d)``.
        """
        out = scores.avm
        b, na = scores.patches_a.shape[:2]
        nv = scores.patches_v.shape[1]
        dev = scores.patches_a.device
        if self.selection == "mats":
            imp_v = sel.mats_scores(scores.patches_v, n_frames)
            imp_a = torch.ones(b, na, device=dev)
        elif self.selection == "stella" and self.use_importance:
            imp_v = sel.importance(out.attn_logits_av, self.beta)
            imp_a = sel.importance(out.attn_logits_va, self.beta)
            if self.avm_gate > 0 and self.avm_acc_ema is not None:
                # 1/N per patch: the same scale as the importance, so stored rows stay comparable.
                closed = self.avm_acc_ema < self.avm_gate
                imp_v = torch.where(closed, torch.full_like(imp_v, 1.0 / nv), imp_v)
                imp_a = torch.where(closed, torch.full_like(imp_a, 1.0 / na), imp_a)
        else:
            imp_v = torch.ones(b, nv, device=dev)
            imp_a = torch.ones(b, na, device=dev)
        cand_a = sel.top_candidates(imp_a, self.kappa_a)
        cand_v = sel.top_candidates(imp_v, self.kappa_v)
        query_a = sel.pooled_query(out.q_a.float(), imp_a, cand_a)
        query_v = sel.pooled_query(out.q_v.float(), imp_v, cand_v)
        return imp_a, imp_v, cand_a, cand_v, query_a, query_v

    def _exclusion(self, step: StellaStep, memory: Optional[Dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        """Stage 4: exclusion probabilities (Eq. 4) against one random memory sample per row.

        A video patch's probability compares the past (a memory sample's stored **audio**
        query) with the current pooled audio query; audio likewise with video queries.

        Returns:
            ``p_excl_a (B, Na)``, ``p_excl_v (B, Nv)``: zero without memory, with
            ``use_correlation=False``, under the Random/MATS ablations, and off-candidate.
        """
        p_a = torch.zeros_like(step.imp_a)
        p_v = torch.zeros_like(step.imp_v)
        if memory is None or not self.use_correlation or self.selection != "stella":
            return p_a, p_v
        out = step.scores.avm
        b = step.n_current
        m = memory["query_a"].shape[0]
        pair = torch.randint(0, m, (b,), device=p_a.device)
        p_v = sel.correlation_prob(
            out.k_v.float(), memory["query_a"][pair].float(), step.query_a,
            sel.candidate_mask(step.cand_v, p_v.shape[1]),
        )
        p_a = sel.correlation_prob(
            out.k_a.float(), memory["query_v"][pair].float(), step.query_v,
            sel.candidate_mask(step.cand_a, p_a.shape[1]),
        )
        return p_a, p_v

    def _select_audio(self, imp: Tensor, excl: Tensor, first_step: bool, c) -> Tensor:
        if self.selection == "random":
            return sel.select_random(c.num_audio_patches, imp.shape[0], self.kappa_a, device=imp.device)
        if self.audio_selection == "time":
            return sel.select_audio_time_chunks(
                imp, excl, c.n_time, c.n_freq, self.kappa_a, self.chunk_size, first_step=first_step
            )
        if self.audio_selection == "frequency":
            return sel.select_audio_frequency(imp, excl, c.n_time, c.n_freq, self.kappa_a, first_step=first_step)
        return sel.select_audio_none(imp, excl, self.kappa_a, first_step=first_step)

    def _select_video(self, imp: Tensor, excl: Tensor, first_step: bool, c) -> Tensor:
        if self.selection == "random":
            return sel.select_random(c.num_video_patches, imp.shape[0], self.kappa_v, device=imp.device)
        if self.selection == "mats":  # deterministic top-κ by motion
            return sel.select_video(imp, excl, self.kappa_v, first_step=True)
        return sel.select_video(imp, excl, self.kappa_v, first_step=first_step)

    def _select_current(self, step: StellaStep, c) -> PatchBatch:
        """Stage 5a: choose the current samples' patches from this step's scores and masks."""
        step.idx_a = self._select_audio(step.imp_a, step.excl_a, step.first_step, c)
        step.idx_v = self._select_video(step.imp_v, step.excl_v, step.first_step, c)
        s = step.scores
        return PatchBatch(gather_patches(s.patches_a, step.idx_a), step.idx_a,
                          gather_patches(s.patches_v, step.idx_v), step.idx_v)

    def _select_memory(self, model, memory: Dict[str, Tensor]) -> PatchBatch:
        """Stage 5b: memory patches. STELLA re-selects from the **stored** (stale) importance and
        exclusion probabilities with fresh Bernoulli and multinomial draws; STELLA+ replays the
        stored patches as they are."""
        if self.store_patches:
            return PatchBatch(
                memory["patches_a"].float(), memory["idx_a"].long(),
                normalize_video_patches(memory["patches_v"]), memory["idx_v"].long(),
            )
        c = model.config
        pa, pv = model.patchify(memory["audio"].float(), prepare_video(memory["video"]))
        excl_a = sel.bernoulli_exclusion(memory["p_excl_a"].float())
        excl_v = sel.bernoulli_exclusion(memory["p_excl_v"].float())
        idx_a = self._select_audio(memory["imp_a"].float(), excl_a, False, c)
        idx_v = self._select_video(memory["imp_v"].float(), excl_v, False, c)
        return PatchBatch(gather_patches(pa, idx_a), idx_a, gather_patches(pv, idx_v), idx_v)

    def _score_stages(self, strategy, memory: Optional[Dict[str, Tensor]], audio: Tensor, video: Tensor) -> StellaStep:
        """Stages 1-4 for ``audio (n, T, F)`` / ``video (n, ...)`` current clips: scoring, the AVM
        loss, importance and queries, exclusion probabilities and masks."""
        c = strategy.model.config
        with record_function("stella.score"):
            scores = self._score(strategy, audio, video)
        with record_function("stella.avm_loss"):
            loss_avm, acc = self._avm_loss(strategy, scores)
        if self.avm_gate > 0:
            self.avm_acc_ema = acc if self.avm_acc_ema is None else 0.9 * self.avm_acc_ema + 0.1 * acc
        step = StellaStep(n_current=audio.shape[0], first_step=memory is None, scores=scores, avm_loss=loss_avm,
                          avm_acc=acc, memory=memory)
        with torch.no_grad():
            with record_function("stella.importance"):
                (step.imp_a, step.imp_v, step.cand_a, step.cand_v,
                 step.query_a, step.query_v) = self._importance(scores, c.n_frames)
            with record_function("stella.exclusion"):
                step.p_excl_a, step.p_excl_v = self._exclusion(step, memory)
                step.excl_a = sel.bernoulli_exclusion(step.p_excl_a)
                step.excl_v = sel.bernoulli_exclusion(step.p_excl_v)
        return step

    def _score_stages_cached(self, strategy, memory: Optional[Dict[str, Tensor]], b: int) -> StellaStep:
        """Stages 1-4 with the score cache: rows with scores from the last ``score_cache_epochs``
        epochs reuse them (importance, queries, exclusion probabilities; fresh exclusion draws),
        the other rows go through :meth:`_score_stages` and refresh the cache."""
        cache, epoch = self.score_cache, self.epochs_seen
        ids = strategy.mb_clip_id_host[:b]  # host ids: the lookup never waits for the device
        audio, video = strategy.mb_audio[:b], strategy.mb_video[:b]
        with record_function("stella.score_cache"):
            hit, rows, miss = cache.lookup(ids, epoch)
        if hit.numel() == 0:  # nothing cached: the paper's step, then remember its scores
            step = self._score_stages(strategy, memory, audio, video)
            step.scored_rows = miss
            with record_function("stella.score_cache"):
                cache.put(ids, {k: getattr(step, k) for k in CACHED_FIELDS}, epoch)
            self._avm_carry = (step.avm_loss.detach(), step.avm_acc)
            return step
        dev = audio.device
        with torch.no_grad(), record_function("stella.score_cache"):
            full = {}
            got = cache.get(rows, dev)
            hit_d = hit.to(dev, non_blocking=True)
            for k, v in got.items():
                full[k] = torch.empty((b, *v.shape[1:]), dtype=torch.float32, device=dev)
                full[k][hit_d] = v
            pa, pv = strategy.model.patchify(audio, video)
        sub = None
        if miss.numel():
            miss_d = miss.to(dev, non_blocking=True)
            sub = self._score_stages(strategy, memory, audio[miss_d], video[miss_d])
            with torch.no_grad(), record_function("stella.score_cache"):
                for k in CACHED_FIELDS:
                    full[k][miss_d] = getattr(sub, k).float()
                cache.put(ids[miss], {k: getattr(sub, k) for k in CACHED_FIELDS}, epoch)
            self._avm_carry = (sub.avm_loss.detach(), sub.avm_acc)
            loss_avm, acc, s = sub.avm_loss, sub.avm_acc, sub.scores
            scores = StellaScores(pa, pv, s.tokens_a, s.tokens_v, s.fused_a, s.fused_v, s.avm)
            stats = None
        else:  # every row cached: no scoring pass, no AVM update this step
            loss_avm = torch.zeros((), device=dev)
            acc = torch.full((), float("nan"), device=dev)
            scores = StellaScores(pa, pv, None, None, None, None, None)
            stats = self._avm_carry
        step = StellaStep(n_current=b, first_step=memory is None, scores=scores, avm_loss=loss_avm, avm_acc=acc,
                          memory=memory, scored_rows=miss, avm_stats=stats, **full)
        with torch.no_grad(), record_function("stella.exclusion"):
            step.cand_a = sel.top_candidates(step.imp_a, self.kappa_a)
            step.cand_v = sel.top_candidates(step.imp_v, self.kappa_v)
            step.excl_a = sel.bernoulli_exclusion(step.p_excl_a)
            step.excl_v = sel.bernoulli_exclusion(step.p_excl_v)
        return step

    # ------------------------------------------------------------------ hooks
    def before_forward(self, strategy, **kwargs):
        model, c = strategy.model, strategy.model.config
        b = strategy.mb_n_current
        memory = self.draw_memory(strategy)
        if self.score_cache is None:
            step = self._score_stages(strategy, memory, strategy.mb_audio[:b], strategy.mb_video[:b])
        else:
            step = self._score_stages_cached(strategy, memory, b)
        loss_avm, acc = step.avm_loss, step.avm_acc
        with torch.no_grad():
            with record_function("stella.select_current"):
                parts = [self._select_current(step, c)]
            if memory is not None:
                with record_function("stella.select_memory"):
                    parts.append(self._select_memory(model, memory))
        if memory is not None:
            if self.store_patches:
                strategy.append_memory(self, None, n_rows=len(parts[1]))
            else:
                strategy.append_memory(self, {k: memory[k] for k in ("audio", "video", "target", "clip_id")})
        # The backbone trains on [current; memory] inside the selection.
        strategy.mb_patches = PatchBatch.cat(parts)
        self.step = step
        self.mem_batch = memory
        stats_loss, stats_acc = step.avm_stats or (loss_avm, acc)
        self.last_stats = StellaStepStats(
            avm_loss=stats_loss.detach(), avm_acc=stats_acc, penalty=None, n_current=b,
            n_memory=0 if memory is None else len(parts[1]),
            excluded_frac_v=step.excl_v.float().mean(), excluded_frac_a=step.excl_a.float().mean(),
        )

    def before_backward(self, strategy, **kwargs):
        step = self.step
        loss = step.avm_loss
        rows = strategy.memory_rows(self)
        if rows is not None:
            with record_function("stella.penalty"):
                out, mem = strategy.mb_output, step.memory
                pen = embedding_penalty(out.pooled_a[rows], out.pooled_v[rows], mem["pooled_a"], mem["pooled_v"])
            loss = loss + self.alpha * pen
            step.penalty = self.last_stats.penalty = pen.detach()
        strategy.loss = strategy.loss + loss

    def insert_fields(self, strategy) -> Dict[str, Tensor]:
        """What the current samples store: the fields of :attr:`MEMORY_FIELDS` (STELLA) or the
        selected patches plus :attr:`PATCH_MEMORY_FIELDS` (STELLA+)."""
        step, b, out = self.step, self.step.n_current, strategy.mb_output
        fields = {
            "target": strategy.mb_target[:b],
            "clip_id": strategy.mb_clip_id[:b],
            "pooled_a": out.pooled_a[:b].detach(),
            "pooled_v": out.pooled_v[:b].detach(),
            "query_a": step.query_a,
            "query_v": step.query_v,
        }
        if self.store_patches:
            clips = strategy.current_clips()
            raw_v = patchify_video(clips["video"], strategy.model.config.patch_size)
            fields.update(
                patches_a=gather_patches(step.scores.patches_a, step.idx_a), idx_a=step.idx_a,
                patches_v=gather_patches(raw_v, step.idx_v), idx_v=step.idx_v,
            )
        else:
            clips = strategy.current_clips()
            fields.update(
                audio=clips["audio"], video=clips["video"],
                imp_a=step.imp_a, imp_v=step.imp_v, p_excl_a=step.p_excl_a, p_excl_v=step.p_excl_v,
            )
        return fields

    def after_training_iteration(self, strategy, **kwargs):
        with record_function("stella.memory_update"):
            super().after_training_iteration(strategy, **kwargs)
        self.step = None

    def after_training_epoch(self, strategy, **kwargs):
        self.epochs_seen += 1  # the score cache's clock

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        state = {**super().state_dict(), "avm": self.avm.state_dict() if self.avm is not None else None}
        if self.score_cache is not None:
            state.update(score_cache=self.score_cache.state_dict(), epochs_seen=self.epochs_seen,
                         avm_carry=self._avm_carry)
        if self.avm_gate > 0:
            state["avm_acc_ema"] = None if self.avm_acc_ema is None else self.avm_acc_ema.detach().cpu()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["avm"] is not None:
            if self.avm is None:
                raise ValueError("call prepare_for_load(strategy) before loading a StellaPlugin state")
            self.avm.load_state_dict(state["avm"])
        if self.score_cache is not None and state.get("score_cache") is not None:
            dev = next(self.avm.parameters()).device if self.avm is not None else None
            self.score_cache.load_state_dict(state["score_cache"], dev)
            self.epochs_seen = int(state["epochs_seen"])
            self._avm_carry = state.get("avm_carry")
        if self.avm_gate > 0 and state.get("avm_acc_ema") is not None:
            dev = next(self.avm.parameters()).device if self.avm is not None else None
            self.avm_acc_ema = state["avm_acc_ema"].to(dev)
        super().load_state_dict(state)
