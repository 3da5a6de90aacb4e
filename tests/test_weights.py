"""Loading official CAV-MAE checkpoints, our own checkpoints, and the ImageNet-MAE initialisation.

Checkpoints are generated here with random values and the exact CAV-MAE key names and shapes
(derived from our cav_mae_base model by mapping names back, see cav_mae_state_dict_shapes).
"""
from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from avalanche_av.models import create_model, get_config
from avalanche_av.models.patching import patchify_audio, patchify_video, sincos_pos_embed_2d
from avalanche_av.models.weights import (
    WeightsError,
    cav_mae_state_dict_shapes,
    detect_format,
    init_from_imagenet_mae,
    load_cav_mae_checkpoint,
    load_weights,
    read_checkpoint,
)

# A narrow CAV-MAE-layout config (11 + 1 blocks, 1 frame) for the cheap tests.
SMALL = dict(embed_dim=64, num_heads=4, decoder_dim=32, decoder_heads=4, decoder_depth=2,
             audio_length=64, num_mel_bins=32, image_size=32)


def random_cav_mae(config, seed: int = 0, with_unused_norms: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in
            cav_mae_state_dict_shapes(config, with_unused_norms=with_unused_norms).items()}


def conv_audio_tokens(fbank: torch.Tensor, w: torch.Tensor, b: torch.Tensor, p: int) -> torch.Tensor:
    """CAV-MAE's audio patch embedding: conv on the (freq, time) image, tokens reordered time-major.

    ``(B, T, F)`` -> ``(B, n_time * n_freq, D)`` with token index ``t * n_freq + f``.
    """
    y = F.conv2d(fbank.transpose(1, 2).unsqueeze(1), w, b, stride=p)  # (B, D, n_freq, n_time)
    return y.permute(0, 3, 2, 1).reshape(fbank.shape[0], -1, w.shape[0])


# --------------------------------------------------------------------------- key list
def test_official_key_list_of_cav_mae_base():
    shapes = cav_mae_state_dict_shapes(get_config("cav_mae_base"))
    assert all(k.startswith("module.") for k in shapes)
    want = {
        "pos_embed_a": (1, 512, 768), "pos_embed_v": (1, 196, 768), "decoder_pos_embed_a": (1, 512, 512),
        "decoder_pos_embed_v": (1, 196, 512), "mask_token": (1, 1, 512), "modality_a": (1, 1, 768),
        "modality_v": (1, 1, 768), "decoder_modality_a": (1, 1, 512), "decoder_modality_v": (1, 1, 512),
        "patch_embed_a.proj.weight": (768, 1, 16, 16), "patch_embed_v.proj.weight": (768, 3, 16, 16),
        "patch_embed_a.proj.bias": (768,), "decoder_pred_a.weight": (256, 512), "decoder_pred_v.weight": (768, 512),
        "blocks_u.0.norm1_a.weight": (768,), "blocks_a.10.mlp.fc2.weight": (768, 3072),
        "decoder_blocks.7.attn.qkv.weight": (1536, 512),
    }
    for k, s in want.items():
        assert shapes["module." + k] == s, k
    assert "module.mask_token_a" not in shapes and "module.blocks_a.11.norm1.weight" not in shapes
    assert "module.blocks_u.1.norm1.weight" not in shapes and "module.blocks_a.0.norm1_a.weight" not in shapes
    full = cav_mae_state_dict_shapes(get_config("cav_mae_base"), with_unused_norms=True)
    assert full["module.blocks_a.0.norm1_a.weight"] == (768,) and full["module.decoder_blocks.0.norm2_v.bias"] == (512,)


# --------------------------------------------------------------------------- full-size official checkpoint
def test_official_checkpoint_loads_strictly_into_cav_mae_base():
    torch.manual_seed(0)
    cfg = get_config("cav_mae_base")
    sd = random_cav_mae(cfg)
    assert detect_format({k[7:]: v for k, v in sd.items()}) == "cav-mae"
    model, rep = load_cav_mae_checkpoint(sd)
    assert rep.ok and not rep.missing and not rep.unexpected and not rep.shape_mismatch
    assert set(rep.loaded) == set(model.state_dict())
    assert set(rep.dropped) >= {"pos_embed_a", "pos_embed_v", "decoder_pos_embed_a", "decoder_pos_embed_v",
                                "blocks_a.0.norm1_a.weight", "decoder_blocks.7.norm2_v.bias"}
    ms = model.state_dict()
    for k in ("blocks_a.3.attn.qkv.weight", "blocks_v.10.mlp.fc1.bias", "blocks_u.0.norm1_v.weight", "norm_a.weight",
              "decoder_embed.weight", "decoder_blocks.5.attn.proj.weight", "modality_v", "decoder_pred_v.weight"):
        assert torch.equal(ms[k], sd["module." + k]), k
    assert torch.equal(ms["mask_token_a"], sd["module.mask_token"]) and torch.equal(ms["mask_token_v"], sd["module.mask_token"])

    with torch.no_grad():
        # Audio: our Linear on time-major (p_time, p_freq) patches == CAV-MAE's conv on the (freq, time) image.
        fbank = torch.randn(2, 1024, 128)
        ours = model.patch_embed_a(patchify_audio(fbank, 16))
        ref = conv_audio_tokens(fbank, sd["module.patch_embed_a.proj.weight"], sd["module.patch_embed_a.proj.bias"], 16)
        assert ours.shape == ref.shape == (2, 512, 768)
        assert torch.allclose(ours, ref, atol=1e-3), float((ours - ref).abs().max())
        # Video: one frame, our (row, col, channel) patches == the RGB conv.
        frames = torch.randn(2, 1, 3, 224, 224)
        ours_v = model.patch_embed_v(patchify_video(frames, 16))
        ref_v = F.conv2d(frames[:, 0], sd["module.patch_embed_v.proj.weight"], sd["module.patch_embed_v.proj.bias"],
                         stride=16).flatten(2).transpose(1, 2)
        assert torch.allclose(ours_v, ref_v, atol=1e-3)
        # Decoder audio head: the same pixel gets the same prediction in both layouts.
        y = torch.randn(3, 512)
        theirs = F.linear(y, sd["module.decoder_pred_a.weight"], sd["module.decoder_pred_a.bias"]).reshape(3, 16, 16)
        mine = model.decoder_pred_a(y).reshape(3, 16, 16)  # [time offset, freq offset]
        assert torch.allclose(mine, theirs.transpose(1, 2), atol=1e-4)
        # The whole forward runs on the loaded weights.
        out = model(torch.randn(2, 1024, 128), torch.randn(2, 1, 3, 224, 224))
        assert torch.isfinite(out.loss)


# --------------------------------------------------------------------------- small-config behaviour
@pytest.fixture(scope="module")
def small_cfg():
    return get_config("cav_mae_base", **SMALL)


def test_file_roundtrip_weights_only_and_wrong_shapes(small_cfg, tmp_path):
    sd = random_cav_mae(small_cfg, seed=1)
    path = tmp_path / "cav-mae.pth"
    torch.save(sd, path)
    model, rep = load_cav_mae_checkpoint(path, **SMALL)
    assert rep.ok and rep.source == str(path) and rep.format == "cav-mae"
    # Also through the generic entry point with format detection.
    m2 = create_model("cav_mae_base", **SMALL)
    assert load_weights(m2, path).ok
    assert torch.equal(m2.patch_embed_a.proj.weight, model.patch_embed_a.proj.weight)

    bad = dict(sd)
    bad["module.blocks_a.0.mlp.fc1.weight"] = torch.zeros(100, 64)
    bad["module.patch_embed_v.proj.weight"] = torch.zeros(64, 3, 14, 14)
    with pytest.raises(WeightsError) as ei:
        load_cav_mae_checkpoint(bad, **SMALL)
    msg = str(ei.value)
    assert "blocks_a.0.mlp.fc1.weight: checkpoint (100, 64), model expects (256, 64)" in msg
    assert "patch_embed_v.proj.weight: checkpoint (64, 3, 14, 14), model expects (64, 3, 16, 16)" in msg
    assert "missing" not in msg  # a wrong-shaped key is not reported twice

    odd = {k: v for k, v in sd.items() if k != "module.blocks_u.0.norm1_a.weight"}
    odd["module.mlp_head.0.weight"] = torch.zeros(3, 64)
    with pytest.raises(WeightsError, match=r"(?s)missing from the checkpoint \(1\): blocks_u\.0\.norm1_a\.weight"
                                           r".*unexpected in the checkpoint \(1\): mlp_head\.0\.weight"):
        load_cav_mae_checkpoint(odd, **SMALL)
    m3, rep3 = load_cav_mae_checkpoint(odd, strict=False, **SMALL)
    assert rep3.missing == ["blocks_u.0.norm1_a.weight"] and rep3.unexpected == ["mlp_head.0.weight"]
    assert torch.equal(m3.blocks_u[0].norm1.weight, sd["module.blocks_u.0.norm1.weight"])

    # Files that need pickle are refused (weights_only=True).
    torch.save({"model": sd, "args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pth")
    with pytest.raises(WeightsError, match="weights_only"):
        read_checkpoint(tmp_path / "pickled.pth")
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "none.pth")
    with pytest.raises(WeightsError, match="unknown checkpoint format"):
        load_weights(m2, {"foo.weight": torch.zeros(1)})


def _cav_mae_tables_from(model) -> dict[str, torch.Tensor]:
    """The model's own positional tables rewritten in CAV-MAE's token order (audio frequency-major)."""
    c = model.config
    out = {}
    for key in ("pos_embed_a", "decoder_pos_embed_a"):
        t = getattr(model, key)
        out[key] = t.reshape(c.n_time, c.n_freq, -1).transpose(0, 1).reshape(1, -1, t.shape[-1]).clone()
    for key in ("pos_embed_v", "decoder_pos_embed_v"):
        t = getattr(model, key)
        out[key] = t[: c.grid * c.grid].unsqueeze(0).clone()
    return out


def test_positional_tables_compared_or_copied(small_cfg):
    ref = create_model("cav_mae_base", **SMALL)
    sd = random_cav_mae(small_cfg, seed=2)
    sd.update({"module." + k: v for k, v in _cav_mae_tables_from(ref).items()})
    _, rep = load_cav_mae_checkpoint(sd, **SMALL)
    assert sum("matches the model's recomputed one" in n for n in rep.notes) == 4
    # Ours follows MAE (column first); the other convention swaps the halves -> reported as different.
    mae_v = torch.cat([sd["module.pos_embed_v"][..., 32:], sd["module.pos_embed_v"][..., :32]], dim=-1)
    assert torch.allclose(mae_v[0], sincos_pos_embed_2d(64, 2, 2, first="row"))
    assert torch.allclose(sd["module.pos_embed_v"][0], sincos_pos_embed_2d(64, 2, 2, first="col"))
    sd2 = dict(sd, **{"module.pos_embed_v": mae_v})
    _, rep2 = load_cav_mae_checkpoint(sd2, **SMALL)
    assert any(n.startswith("pos_embed_v: checkpoint table DIFFERS") for n in rep2.notes)
    # pos_embed="checkpoint" copies the checkpoint's tables into the buffers, reordered to our token order.
    model, rep3 = load_cav_mae_checkpoint(sd2, pos_embed="checkpoint", **SMALL)
    assert torch.equal(model.pos_embed_v[:4], mae_v[0]) and torch.equal(model.pos_embed_a, ref.pos_embed_a)
    assert "pos_embed_v" in rep3.converted


# --------------------------------------------------------------------------- our own checkpoints
def test_own_run_checkpoint_and_bare_state_dict(tmp_path):
    from avalanche_av.training.checkpoint import save_checkpoint
    from tests.conftest import make_strategy

    strategy = make_strategy()
    path = save_checkpoint(tmp_path / "run.pt", strategy, extra={"completed_experiences": 1})
    fresh = create_model("tiny")
    rep = load_weights(fresh, path)
    assert rep.ok and rep.format == "avalanche-av"
    for (k, a), b in zip(strategy.model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    torch.save(strategy.model.state_dict(), tmp_path / "bare.pt")
    other = create_model("tiny")
    assert load_weights(other, tmp_path / "bare.pt").ok
    assert torch.equal(other.patch_embed_v.proj.weight, strategy.model.patch_embed_v.proj.weight)
    # DataParallel-style prefixes are removed; a different preset is refused by key.
    torch.save({"module." + k: v for k, v in strategy.model.state_dict().items()}, tmp_path / "dp.pt")
    assert load_weights(create_model("tiny"), tmp_path / "dp.pt").ok
    with pytest.raises(WeightsError, match="patch_embed_a.proj.weight: checkpoint"):
        load_weights(create_model("tiny", embed_dim=64, num_heads=4), tmp_path / "bare.pt")


# --------------------------------------------------------------------------- ImageNet MAE -> 10 + 2
def test_imagenet_mae_initialisation_of_base_layout():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=12, num_heads=4)
    sd = {k: v + 0.01 * torch.randn_like(v) for k, v in vit.state_dict().items()}  # distinct norm values
    sd["decoder_pred.weight"], sd["decoder_pred.bias"] = torch.randn(768, 32), torch.randn(768)
    sd["mask_token"] = torch.randn(1, 1, 32)
    assert detect_format(sd) == "imagenet-mae"
    model = create_model("base", embed_dim=64, num_heads=4, decoder_dim=32, decoder_heads=4, decoder_depth=1,
                         audio_length=64, num_mel_bins=32, image_size=32, n_frames=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rep = init_from_imagenet_mae(model, {"model": sd})
    assert rep.ok
    ms = model.state_dict()
    for i in range(10):
        for part in ("norm1.weight", "attn.qkv.weight", "mlp.fc2.bias"):
            assert torch.equal(ms[f"blocks_a.{i}.{part}"], sd[f"blocks.{i}.{part}"])
            assert torch.equal(ms[f"blocks_v.{i}.{part}"], sd[f"blocks.{i}.{part}"])
    for j in range(2):
        for n in ("norm1", "norm1_a", "norm1_v"):
            assert torch.equal(ms[f"blocks_u.{j}.{n}.weight"], sd[f"blocks.{10 + j}.norm1.weight"])
        assert torch.equal(ms[f"blocks_u.{j}.attn.proj.weight"], sd[f"blocks.{10 + j}.attn.proj.weight"])
    for n in ("norm_a", "norm_v", "norm"):
        assert torch.equal(ms[f"{n}.bias"], sd["norm.bias"])
    assert {"cls_token", "pos_embed", "head.weight", "mask_token", "decoder_pred.weight"} <= set(rep.dropped)
    assert "modality_a" in rep.fresh and "decoder_pred_a.weight" in rep.fresh
    assert torch.equal(ms["decoder_pred_v.weight"], before["decoder_pred_v.weight"])  # decoder untouched by default
    w, b = sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"]
    with torch.no_grad():
        frames = torch.randn(1, 2, 3, 32, 32)
        ours_v = model.patch_embed_v(patchify_video(frames, 16))[:, :4]
        ref_v = F.conv2d(frames[:, 0], w, b, stride=16).flatten(2).transpose(1, 2)
        assert torch.allclose(ours_v, ref_v, atol=1e-4)
        # Audio: the channel-summed RGB kernel applied to the (freq, time) image, as CAV-MAE feeds audio.
        fbank = torch.randn(1, 64, 32)
        ours_a = model.patch_embed_a(patchify_audio(fbank, 16))
        ref_a = conv_audio_tokens(fbank, w.sum(1, keepdim=True), b, 16)
        assert torch.allclose(ours_a, ref_a, atol=1e-4)
        # A grey image through the RGB conv == its single channel through the summed kernel.
        grey = torch.randn(1, 1, 32, 32)
        assert torch.allclose(F.conv2d(grey.expand(-1, 3, -1, -1), w), F.conv2d(grey, w.sum(1, keepdim=True)), atol=1e-4)

    m2 = create_model("base", embed_dim=64, num_heads=4, decoder_dim=32, decoder_heads=4, decoder_depth=1,
                      audio_length=64, num_mel_bins=32, image_size=32, n_frames=2)
    rep2 = init_from_imagenet_mae(m2, sd, audio_kernel="mean", init_decoder=True)
    assert torch.equal(m2.decoder_pred_v.weight, sd["decoder_pred.weight"])
    assert torch.equal(m2.mask_token_a, sd["mask_token"]) and "mask_token" not in rep2.dropped
    assert torch.allclose(m2.patch_embed_a.proj.weight * 3, model.patch_embed_a.proj.weight, atol=1e-5)
    short = {k: v for k, v in sd.items() if not k.startswith("blocks.11.")}
    with pytest.raises(WeightsError, match="11 blocks; the model needs 10 modality-specific \\+ 2 shared"):
        init_from_imagenet_mae(create_model("base", embed_dim=64, num_heads=4, decoder_dim=32, decoder_heads=4,
                                            decoder_depth=1, audio_length=64, num_mel_bins=32, image_size=32), short)
