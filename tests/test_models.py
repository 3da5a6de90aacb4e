"""Backbone behaviour: patching, subset embeddings, loss coverage, InfoNCE, presets."""
import math

import pytest
import torch
import torch.nn.functional as F

from avalanche_av.models import AVMAEConfig, create_model, get_config, info_nce
from avalanche_av.models.patching import (
    gather_patches,
    patchify_audio,
    patchify_video,
    unpatchify_audio,
    unpatchify_video,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("tiny").eval()


def _inputs(cfg, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, cfg.audio_length, cfg.num_mel_bins, generator=g)
    v = torch.randn(b, cfg.n_frames, 3, cfg.image_size, cfg.image_size, generator=g)
    return a, v


def test_patchify_roundtrip_and_layout():
    a = torch.randn(2, 64, 32)
    pa = patchify_audio(a, 16)
    assert pa.shape == (2, 4 * 2, 256)
    assert torch.equal(unpatchify_audio(pa, 4, 2, 16), a)
    # time-major: patch 1 is time block 0, frequency block 1
    assert torch.equal(pa[:, 1].reshape(2, 16, 16), a[:, 0:16, 16:32])
    assert torch.equal(pa[:, 2].reshape(2, 16, 16), a[:, 16:32, 0:16])

    v = torch.randn(2, 3, 3, 32, 48)
    pv = patchify_video(v, 16)
    assert pv.shape == (2, 3 * 2 * 3, 768)
    # frame 1, row 0, col 2 -> index 1*6 + 0*3 + 2
    patch = pv[:, 8].reshape(2, 16, 16, 3).permute(0, 3, 1, 2)
    assert torch.equal(patch, v[:, 1, :, 0:16, 32:48])
    v_sq = torch.randn(2, 3, 3, 32, 32)
    assert torch.equal(unpatchify_video(patchify_video(v_sq, 16), 3, 2, 16), v_sq)


def test_bad_shapes_raise(tiny):
    cfg = tiny.config
    a, v = _inputs(cfg)
    with pytest.raises(ValueError, match="audio must be"):
        tiny(a[:, :100], v)
    with pytest.raises(ValueError, match="video must be"):
        tiny(a, v[:, :2])
    with pytest.raises(ValueError, match="not divisible"):
        patchify_audio(torch.randn(1, 40, 32), 16)


def test_subset_tokens_match_full_embedding(tiny):
    """Every kept token carries exactly the patch + positional embedding of its original index."""
    cfg = tiny.config
    a, v = _inputs(cfg)
    pa, pv = tiny.patchify(a, v)
    g = torch.Generator().manual_seed(1)
    ia = torch.stack([torch.randperm(cfg.num_audio_patches, generator=g)[:10] for _ in range(4)])
    iv = torch.stack([torch.randperm(cfg.num_video_patches, generator=g)[:20] for _ in range(4)])
    full_a = tiny._embed(pa, tiny._full_idx(pa), "a")
    full_v = tiny._embed(pv, tiny._full_idx(pv), "v")
    sub_a = tiny._embed(gather_patches(pa, ia), ia, "a")
    sub_v = tiny._embed(gather_patches(pv, iv), iv, "v")
    torch.testing.assert_close(sub_a, gather_patches(full_a, ia))
    torch.testing.assert_close(sub_v, gather_patches(full_v, iv))
    # and the positions really differ between patches (so the check is not vacuous)
    assert not torch.allclose(tiny.pos_embed_v[0], tiny.pos_embed_v[1])
    # frame_pos_embed in tiny: same cell in two frames gets different positions
    g2 = cfg.grid * cfg.grid
    assert not torch.allclose(tiny.pos_embed_v[0], tiny.pos_embed_v[g2])


def test_base_repeats_spatial_embedding_over_frames():
    cfg = get_config("base")
    m = create_model("tiny", frame_pos_embed=False)  # same construction rule, small
    g2 = m.config.grid**2
    torch.testing.assert_close(m.pos_embed_v[:g2], m.pos_embed_v[g2 : 2 * g2])
    assert cfg.num_audio_patches == 512 and cfg.num_video_patches == 784
    assert (cfg.modality_depth, cfg.shared_depth, cfg.mask_ratio) == (10, 2, 0.8)
    cav = get_config("cav_mae_base")
    assert (cav.modality_depth, cav.shared_depth, cav.n_frames) == (11, 1, 1)


def test_reconstruction_loss_covers_only_masked_patches():
    torch.manual_seed(0)
    m = create_model("tiny", norm_pix_loss=False).eval()
    cfg = m.config
    # Each audio patch is constant = its index; a zero decoder predicts 0 everywhere, so
    # the audio loss is the mean of index^2 over exactly the masked patches.
    vals = torch.arange(cfg.num_audio_patches, dtype=torch.float32)
    pa = vals.view(1, -1, 1).expand(3, -1, cfg.audio_patch_dim).contiguous()
    audio = unpatchify_audio(pa, cfg.n_time, cfg.n_freq, cfg.patch_size)
    _, video = _inputs(cfg, b=3)
    with torch.no_grad():
        m.decoder_pred_a.weight.zero_()
        m.decoder_pred_a.bias.zero_()
        out = m(audio, video, generator=torch.Generator().manual_seed(3))
    masked = out.audio_masked_idx.float()
    n_vis = cfg.num_visible(cfg.num_audio_patches)
    assert masked.shape == (3, cfg.num_audio_patches - n_vis)
    expected = (masked**2).mean()
    torch.testing.assert_close(out.loss_rec_a, expected)
    assert not math.isclose(out.loss_rec_a.item(), (vals**2).mean().item(), rel_tol=1e-3)
    # subset: masked indices stay inside the subset and the visible count is that of the full clip
    ia = torch.arange(0, 24).unsqueeze(0).expand(3, -1)
    out2 = m(audio, video, audio_idx=ia)
    assert out2.audio_masked_idx.shape == (3, 24 - n_vis)
    assert int(out2.audio_masked_idx.max()) < 24


def test_subset_too_small_raises(tiny):
    cfg = tiny.config
    a, v = _inputs(cfg)
    n_vis = cfg.num_visible(cfg.num_audio_patches)
    ia = torch.arange(n_vis).unsqueeze(0).expand(4, -1)
    with pytest.raises(ValueError, match="must stay visible"):
        tiny(a, v, audio_idx=ia)
    with pytest.raises(ValueError, match="indices must lie"):
        tiny(a, v, audio_idx=torch.full((4, 20), cfg.num_audio_patches))


def test_info_nce_hand_computed():
    ea = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    ev = F.normalize(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), dim=-1)
    tau = 0.5
    # sims: [[1/√2, 0], [1/√2, 1]] / τ
    s = torch.tensor([[1 / math.sqrt(2), 0.0], [1 / math.sqrt(2), 1.0]]) / tau
    a2v = [-(s[0, 0] - torch.logsumexp(s[0], 0)), -(s[1, 1] - torch.logsumexp(s[1], 0))]
    v2a = [-(s[0, 0] - torch.logsumexp(s[:, 0], 0)), -(s[1, 1] - torch.logsumexp(s[:, 1], 0))]
    expected = (sum(a2v) + sum(v2a)) / 4
    loss, per = info_nce(ea, ev, tau)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(per, torch.stack([(a2v[0] + v2a[0]) / 2, (a2v[1] + v2a[1]) / 2]))


def test_forward_outputs_and_gradients(tiny):
    cfg = tiny.config
    a, v = _inputs(cfg)
    m = create_model("tiny")
    out = m(a, v)
    assert out.pooled_a.shape == (4, cfg.embed_dim) and out.emb_v.shape == (4, cfg.embed_dim)
    torch.testing.assert_close(out.emb_a.norm(dim=-1), torch.ones(4))
    expected = out.loss_rec_a + out.loss_rec_v + cfg.contrastive_weight * out.loss_c
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert m.patch_embed_a.proj.weight.grad.abs().sum() > 0
    assert m.mask_token_v.grad.abs().sum() > 0
    ea, ev = m.embed(a, v)
    torch.testing.assert_close(ev.norm(dim=-1), torch.ones(4))
    fa, fv = m.forward_joint(a, v)
    assert fa.shape == (4, cfg.num_audio_patches, cfg.embed_dim)
    assert fv.shape == (4, cfg.num_video_patches, cfg.embed_dim)


def test_eval_masking_deterministic_with_generator(tiny):
    a, v = _inputs(tiny.config)
    with torch.no_grad():
        l1 = tiny(a, v, generator=torch.Generator().manual_seed(5)).loss
        l2 = tiny(a, v, generator=torch.Generator().manual_seed(5)).loss
        l3 = tiny(a, v, generator=torch.Generator().manual_seed(6)).loss
    assert l1.item() == l2.item()
    assert l1.item() != l3.item()


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="allowed"):
        create_model("huge")
    with pytest.raises(ValueError, match="unknown AVMAEConfig field"):
        create_model("tiny", depth=3)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        AVMAEConfig(audio_length=100)
    with pytest.raises(ValueError, match="mask_ratio"):
        AVMAEConfig(mask_ratio=1.0)


def test_num_visible_floors_like_the_authors_code():
    cfg = get_config("base")
    # The authors' code keeps int(L * (1 - mask_ratio)) tokens: 156.8 -> 156 video, 102.4 -> 102 audio.
    assert cfg.num_visible(784, 0.8) == 156
    assert cfg.num_visible(cfg.num_video_patches) == 156
    assert cfg.num_visible(cfg.num_audio_patches) == 102
    assert get_config("cav_mae_base").num_visible(196) == 49  # 0.25 * 196, exact
    # Exact products stay exact although 1 - 0.8 is 0.19999999999999996 in floats.
    assert cfg.num_visible(10, 0.8) == 2 and cfg.num_visible(5, 0.8) == 1
    assert cfg.num_visible(3, 0.9) == 1  # never below one visible token


@pytest.mark.parametrize("preset", ["tiny", "base", "cav_mae_base"])
def test_default_stella_kappa_leaves_patches_to_reconstruct(preset):
    # STELLA keeps κ = ρ·N patches (ρ = 0.5 by default) and needs κ > visible count.
    cfg = get_config(preset)
    for n in (cfg.num_audio_patches, cfg.num_video_patches):
        assert round(0.5 * n) > cfg.num_visible(n)


def test_base_encoder_sees_156_video_tokens_of_a_subset():
    # A tiny-width model with base's token grid: the masked count follows the floored visible count.
    m = create_model(
        "base", embed_dim=32, num_heads=2, modality_depth=0, shared_depth=1, decoder_dim=16,
        decoder_depth=1, decoder_heads=2,
    ).eval()
    cfg = m.config
    a, v = _inputs(cfg, b=1)
    iv = torch.arange(0, 392).unsqueeze(0)  # κ_v = 392 kept video patches
    with torch.no_grad():
        out = m(a, v, video_idx=iv, generator=torch.Generator().manual_seed(0))
    assert out.video_masked_idx.shape == (1, 392 - 156)
    assert out.audio_masked_idx.shape == (1, 512 - 102)
