"""STELLA and STELLA+ (ICML 2024) as one Avalanche plugin.

Usage: ``AVPretraining(model, ..., plugins=[StellaPlugin()])``; nothing else changes.

Per training iteration (paper Algorithms 2-3, SPEC §3):

1. Score the current batch: the backbone runs the **unmasked** clip through the modality and
   shared blocks **without gradients**; the AVM cross-attends over those joint features.
2. Train the AVM (BCE, half the batch deranged before fusion), current samples only, in the
   same optimizer step (its parameters are a second group of the strategy's optimizer).
3. Importance (Eq. 2), top-κ candidates and pooled queries (Eq. 3).
4. Draw a memory batch; pair each current sample with one memory sample; correlation and
   Bernoulli exclusion (Eq. 4).
5. Select κ_v video patches (multinomial; top-κ on the very first step) and κ_a audio patches
   (time chunks, Algorithm 1) for the current samples; memory samples are re-selected from their
   **stored** scores with fresh draws (STELLA) or replayed as stored patches (STELLA+).
6. Rewrite the minibatch into a :class:`~avalanche_av.models.inputs.PatchBatch` of
   ``[current; memory]``; the template's MAE + InfoNCE then runs inside the selection.
7. Add ``α·ℓ_p`` (MSE between stored and current pooled embeddings of memory samples, per
   modality) and ``ℓ_avm`` to the loss.
8. Offer the current samples to the reservoir (every iteration).

Evaluation is untouched: the hooks used here only run in training.

The pure math lives in :mod:`avalanche_av.training.selection` and :mod:`avalanche_av.models.avm`;
this class only wires it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from avalanche.training.plugins import SupervisedPlugin

from ...models.avm import AVMatching, avm_loss, make_avm_pairs
from ...models.patching import gather_patches, patchify_video
from .. import selection as sel
from ...models.inputs import PatchBatch, normalize_video_patches, prepare_video, to_uint8_frames
from ..storage_policy import StellaBuffer
from .replay import embedding_penalty

__all__ = ["StellaPlugin", "StellaStepStats"]

SELECTIONS = ("stella", "random", "mats")
AUDIO_SELECTIONS = ("time", "frequency", "none")


@dataclass
class StellaStepStats:
    """Detached per-step quantities, for logging and tests (tensors: no device sync)."""

    avm_loss: torch.Tensor
    avm_acc: torch.Tensor
    penalty: Optional[torch.Tensor]
    n_current: int
    n_memory: int
    excluded_frac_v: torch.Tensor
    excluded_frac_a: torch.Tensor


class StellaPlugin(SupervisedPlugin):
    """STELLA / STELLA+ continual audio-video pre-training.

    Args:
        mem_size: rehearsal memory size in clips (2000 in the paper; 5000 for AudioSet).
        batch_size_mem: memory batch size; default the current batch size. While the memory
            holds fewer samples, all of them are replayed.
        rho_a, rho_v: fraction of audio / video patches **kept** (κ = round(ρ·N)), in (0, 1].
        chunk_size: audio time-chunk length L_c (Algorithm 1).
        beta: importance temperature β.
        alpha: weight of the embedding penalty ℓ_p.
        use_importance: off = the RCA ablation (uniform importance, exclusion kept).
        use_correlation: off = the LPIS ablation (importance only, no exclusion).
        selection: ``'stella'``; ``'random'`` (uniform patches); ``'mats'`` (video by motion,
            audio with uniform importance through ``audio_selection``).
        audio_selection: ``'time'`` (Algorithm 1), ``'frequency'`` (whole frequency bands) or
            ``'none'`` (plain importance multinomial).
        store_patches: ``True`` = STELLA+: memory keeps only the selected patches.
        avm_heads: AVM heads; default the backbone's ``num_heads``.
        memory_device: where the memory lives (CPU, pinned when CUDA is present).
        seed: seed of the memory's sampling generator.

    Raises:
        ValueError: a ρ outside (0, 1], an unknown selection mode, ``mem_size < 1``, or (at the
            start of training) a κ that does not leave at least one masked patch.
    """

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
        store_patches: bool = False,
        avm_heads: Optional[int] = None,
        memory_device: str = "cpu",
        seed: int = 0,
    ):
        super().__init__()
        for name, rho in (("rho_a", rho_a), ("rho_v", rho_v)):
            if not 0.0 < rho <= 1.0:
                raise ValueError(f"{name} is the fraction of patches kept and must be in (0, 1], got {rho}")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if audio_selection not in AUDIO_SELECTIONS:
            raise ValueError(f"audio_selection must be one of {AUDIO_SELECTIONS}, got {audio_selection!r}")
        if not isinstance(mem_size, int) or mem_size < 1:
            raise ValueError(f"mem_size must be an int >= 1, got {mem_size!r}")
        if chunk_size < 1 or beta <= 0 or alpha < 0:
            raise ValueError(f"need chunk_size >= 1, beta > 0, alpha >= 0; got {chunk_size}, {beta}, {alpha}")
        if batch_size_mem is not None and batch_size_mem < 1:
            raise ValueError(f"batch_size_mem must be >= 1 or None, got {batch_size_mem}")
        self.mem_size = mem_size
        self.batch_size_mem = batch_size_mem
        self.rho_a, self.rho_v = rho_a, rho_v
        self.chunk_size, self.beta, self.alpha = chunk_size, beta, alpha
        self.use_importance, self.use_correlation = use_importance, use_correlation
        self.selection, self.audio_selection = selection, audio_selection
        self.store_patches = store_patches
        self.avm_heads = avm_heads
        self.storage = StellaBuffer(mem_size, store_patches=store_patches, device=memory_device)
        self.storage.seed(seed)
        self.avm: Optional[AVMatching] = None
        self.kappa_a = self.kappa_v = 0
        self.last_stats: Optional[StellaStepStats] = None
        self._step: dict = {}

    # ------------------------------------------------------------------ setup
    def _setup(self, strategy) -> None:
        """Build the AVM, register it with the optimizer and fix κ (idempotent)."""
        c = strategy.model.config
        if self.avm is None:
            self.avm = AVMatching(c.embed_dim, self.avm_heads or c.num_heads).to(strategy.device)
        params = list(self.avm.parameters())
        in_opt = {id(p) for g in strategy.optimizer.param_groups for p in g["params"]}
        if not any(id(p) in in_opt for p in params):
            # Same learning rate and optimizer as the backbone (SPEC §3).
            strategy.optimizer.add_param_group({"params": params})
        self.kappa_a = max(1, round(self.rho_a * c.num_audio_patches))
        self.kappa_v = max(1, round(self.rho_v * c.num_video_patches))
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
        self._setup(strategy)
        self.avm.train()

    # ------------------------------------------------------------------ selection helpers
    def _select_audio(self, imp: torch.Tensor, excl: torch.Tensor, first_step: bool, c) -> torch.Tensor:
        if self.selection == "random":
            return sel.select_random(c.num_audio_patches, imp.shape[0], self.kappa_a, device=imp.device)
        if self.audio_selection == "time":
            return sel.select_audio_time_chunks(imp, excl, c.n_time, c.n_freq, self.kappa_a, self.chunk_size)
        if self.audio_selection == "frequency":
            return sel.select_audio_frequency(imp, excl, c.n_time, c.n_freq, self.kappa_a)
        return sel.select_audio_none(imp, excl, self.kappa_a, first_step=first_step)

    def _select_video(self, imp: torch.Tensor, excl: torch.Tensor, first_step: bool, c) -> torch.Tensor:
        if self.selection == "random":
            return sel.select_random(c.num_video_patches, imp.shape[0], self.kappa_v, device=imp.device)
        if self.selection == "mats":
            return sel.select_video(imp, excl, self.kappa_v, first_step=True)
        return sel.select_video(imp, excl, self.kappa_v, first_step=first_step)

    # ------------------------------------------------------------------ the step
    def before_forward(self, strategy, **kwargs):
        model, c = strategy.model, strategy.model.config
        audio, video = strategy.mb_audio, strategy.mb_video
        b = audio.shape[0]
        pa, pv = model.patchify(audio, video)
        full_a = model._full_idx(pa)
        full_v = model._full_idx(pv)

        # 1-2. Joint features without gradients; AVM trained on current samples only.
        with torch.no_grad(), strategy.autocast():
            a_tok, v_tok = model.encode_modalities(pa, full_a, pv, full_v)
            fa, fv = model.fuse(a_tok, v_tok)
            perm, is_match = make_avm_pairs(b)
            # Fusion is per sample, so matched rows of the AVM batch equal (fa, fv): only the
            # deranged rows go through the shared blocks again. Indices come from CPU (no sync).
            neg = torch.nonzero(is_match == 0).squeeze(1).to(strategy.device)
            perm, is_match = perm.to(strategy.device), is_match.to(strategy.device)
            fa_n, fv_n = fa.clone(), fv.clone()
            if neg.numel():
                fa_n[neg], fv_n[neg] = model.fuse(a_tok[neg], v_tok[perm[neg]])
        with strategy.autocast():
            train_out = self.avm(fa_n.detach(), fv_n.detach(), return_attn=False)
            loss_avm = avm_loss(train_out.logit.float(), is_match)
        with torch.no_grad():
            with strategy.autocast():
                score = self.avm(fa, fv, return_attn=True)
            q_a, k_a, q_v, k_v = (t.float() for t in (score.q_a, score.k_a, score.q_v, score.k_v))

            # 3. Importance and pooled queries.
            if self.selection == "mats":
                imp_v = sel.mats_scores(pv, c.n_frames)
                imp_a = torch.ones(b, c.num_audio_patches, device=audio.device)
            elif self.use_importance and self.selection == "stella":
                imp_v = sel.importance(score.attn_logits_av, self.beta)
                imp_a = sel.importance(score.attn_logits_va, self.beta)
            else:
                imp_v = torch.ones(b, c.num_video_patches, device=audio.device)
                imp_a = torch.ones(b, c.num_audio_patches, device=audio.device)
            cand_a = sel.top_candidates(imp_a, self.kappa_a)
            cand_v = sel.top_candidates(imp_v, self.kappa_v)
            query_a = sel.pooled_query(q_a, imp_a, cand_a)  # (B, H, d)
            query_v = sel.pooled_query(q_v, imp_v, cand_v)

            # 4. Memory batch and replay-guided correlation.
            mem = None
            first_step = len(self.storage) == 0
            p_a = torch.zeros_like(imp_a)
            p_v = torch.zeros_like(imp_v)
            if not first_step:
                _, mem = self.storage.sample(self.batch_size_mem or b, device=strategy.device)
                if self.use_correlation and self.selection == "stella":
                    m = mem["query_a"].shape[0]
                    pair = torch.randint(0, m, (b,), device=strategy.device)
                    p_v = sel.correlation_prob(
                        k_v, mem["query_a"][pair].float(), query_a, sel.candidate_mask(cand_v, c.num_video_patches)
                    )
                    p_a = sel.correlation_prob(
                        k_a, mem["query_v"][pair].float(), query_v, sel.candidate_mask(cand_a, c.num_audio_patches)
                    )
            excl_a = sel.bernoulli_exclusion(p_a)
            excl_v = sel.bernoulli_exclusion(p_v)

            # 5. Select current patches; then memory patches.
            idx_a = self._select_audio(imp_a, excl_a, first_step, c)
            idx_v = self._select_video(imp_v, excl_v, first_step, c)
            parts = [PatchBatch(gather_patches(pa, idx_a), idx_a, gather_patches(pv, idx_v), idx_v)]
            if mem is not None:
                parts.append(self._memory_patches(model, mem, c))

        # 6. The backbone trains on [current; memory] inside the selection.
        strategy.mb_patches = PatchBatch.cat(parts)
        self._step = {
            "b": b, "mem": mem, "loss_avm": loss_avm, "idx_a": idx_a, "idx_v": idx_v,
            "query_a": query_a, "query_v": query_v, "imp_a": imp_a, "imp_v": imp_v, "p_a": p_a, "p_v": p_v,
            "pa": pa,
        }
        self.last_stats = StellaStepStats(
            avm_loss=loss_avm.detach(),
            avm_acc=((train_out.logit.detach() > 0).float() == is_match).float().mean(),
            penalty=None,
            n_current=b,
            n_memory=0 if mem is None else len(parts[1]),
            excluded_frac_v=excl_v.float().mean(),
            excluded_frac_a=excl_a.float().mean(),
        )

    def _memory_patches(self, model, mem: dict, c) -> PatchBatch:
        if self.store_patches:  # STELLA+: stored patches are replayed as they are
            return PatchBatch(
                mem["patches_a"].float(), mem["idx_a"].long(),
                normalize_video_patches(mem["patches_v"]), mem["idx_v"].long(),
            )
        pa, pv = model.patchify(mem["audio"].float(), prepare_video(mem["video"]))
        # Stored (stale) scores, fresh Bernoulli and multinomial draws.
        excl_a = sel.bernoulli_exclusion(mem["excl_a"].float())
        excl_v = sel.bernoulli_exclusion(mem["excl_v"].float())
        imp_a, imp_v = mem["imp_a"].float(), mem["imp_v"].float()
        idx_a = self._select_audio(imp_a, excl_a, False, c)
        idx_v = self._select_video(imp_v, excl_v, False, c)
        return PatchBatch(gather_patches(pa, idx_a), idx_a, gather_patches(pv, idx_v), idx_v)

    def before_backward(self, strategy, **kwargs):
        s = self._step
        loss = s["loss_avm"]
        mem = s["mem"]
        if mem is not None:
            out, b = strategy.mb_output, s["b"]
            pen = embedding_penalty(out.pooled_a[b:], out.pooled_v[b:], mem["pooled_a"], mem["pooled_v"])
            loss = loss + self.alpha * pen
            self.last_stats.penalty = pen.detach()
        strategy.loss = strategy.loss + loss

    def after_training_iteration(self, strategy, **kwargs):
        s = self._step
        b = s["b"]
        out, mb = strategy.mb_output, strategy.mbatch
        fields = {
            "target": mb[2][:b],
            "clip_id": mb[3][:b],
            "pooled_a": out.pooled_a[:b].detach(),
            "pooled_v": out.pooled_v[:b].detach(),
            "query_a": s["query_a"],
            "query_v": s["query_v"],
        }
        if self.store_patches:
            raw_v = patchify_video(to_uint8_frames(mb[1][:b]), strategy.model.config.patch_size)
            fields.update(
                patches_a=gather_patches(s["pa"], s["idx_a"]),
                idx_a=s["idx_a"],
                patches_v=gather_patches(raw_v, s["idx_v"]),
                idx_v=s["idx_v"],
            )
        else:
            fields.update(
                audio=mb[0][:b], video=to_uint8_frames(mb[1][:b]),
                imp_a=s["imp_a"], imp_v=s["imp_v"], excl_a=s["p_a"], excl_v=s["p_v"],
            )
        self.storage.add(fields)
        self._step = {}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "avm": self.avm.state_dict() if self.avm is not None else None,
            "storage": self.storage.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["avm"] is not None:
            if self.avm is None:
                raise ValueError("call prepare_for_load(strategy) before loading a StellaPlugin state")
            self.avm.load_state_dict(state["avm"])
        self.storage.load_state_dict(state["storage"])

    def memory_bytes_per_sample(self) -> int:
        return self.storage.bytes_per_sample()
