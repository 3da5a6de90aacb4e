"""Evidence tools: modality gap per task, localization scores and maps for every method, per-step
training diagnostics, and attention maps drawn from a run checkpoint."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from avalanche.training.plugins import EvaluationPlugin

from avalanche_av.evaluation import (
    LocalizationMetrics,
    cosine_from_tokens,
    intensity_map,
    RetrievalMetrics,
    cosine_importance,
    cosine_map,
    localization_auc,
    localization_forgetting,
    localization_score,
    modality_gap,
    modality_gap_curve,
    plot_localization_over_tasks,
    plot_modality_gap,
    sounding_patches,
    training_diagnostics,
    unimodal_tokens,
)
from avalanche_av.evaluation.training_metrics import (
    AVMMatchMetric,
    ExcludedFractionMetric,
    MemoryFillMetric,
    TrainLocalizationMetric,
)

from .conftest import make_strategy  # noqa: F401  (used by the checkpoint tests below)


# ----------------------------------------------------------------------------- modality gap
def test_modality_gap_equals_hand_computation_on_planted_embeddings():
    # Audio rows normalise to e1 and e2 (mean (1/2, 1/2, 0)); video rows to e3 and (e1 + e3)/√2.
    a = torch.tensor([[3.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    v = torch.tensor([[0.0, 0.0, 2.0], [1.0, 0.0, 1.0]])
    r = 1 / math.sqrt(2)
    mean_v = np.array([r / 2, 0.0, (1 + r) / 2])
    hand = float(np.linalg.norm(np.array([0.5, 0.5, 0.0]) - mean_v))
    assert modality_gap(a, v) == pytest.approx(hand, abs=1e-6)


def test_modality_gap_curve_and_plot():
    m = np.array([[0.50, 0.40, np.nan], [0.45, 0.48, 0.30], [0.44, 0.46, 0.47]])
    assert modality_gap_curve(m, "diagonal").tolist() == pytest.approx([0.50, 0.48, 0.47])
    assert modality_gap_curve(m, "seen").tolist() == pytest.approx([0.50, (0.45 + 0.48) / 2, (0.44 + 0.46 + 0.47) / 3])
    assert modality_gap_curve(m, 0).tolist() == pytest.approx([0.50, 0.45, 0.44])
    with pytest.raises(ValueError, match="task columns"):
        modality_gap_curve(m, 5)
    seeds = np.stack([m, m + 0.02])
    fig = plot_modality_gap({"stella": seeds, "er": m - 0.1})
    ax = fig.axes[0]
    assert ax.get_title() and ax.get_xlabel() == "after training task" and "modality gap" in ax.get_ylabel()
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.51, 0.49, 0.48])  # mean over the 2 seeds
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.40, 0.38, 0.37])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["stella (mean ± std, 2 seeds)", "er"]


def test_localization_plot_panels_share_one_colour_per_method():
    curves = {"er": np.array([[0.02, 0.01], [0.04, 0.03]]), "stella": np.array([0.05, 0.04]),
              "stella (AVM)": np.array([0.20, 0.25])}
    fig = plot_localization_over_tasks(curves, chance=[0.03, 0.03], groups={
        "cosine": ["er", "stella"], "AVM": ["stella (AVM)"]})
    cos_ax, avm_ax = fig.axes
    assert [cos_ax.get_title(), avm_ax.get_title()] == ["cosine", "AVM"]
    np.testing.assert_allclose(cos_ax.lines[0].get_ydata(), [0.03, 0.02])  # mean over the 2 seeds
    np.testing.assert_allclose(avm_ax.lines[0].get_ydata(), [0.20, 0.25])
    # a variant "m (…)" keeps m's colour across panels; different methods differ
    assert cos_ax.lines[1].get_color() == avm_ax.lines[0].get_color() != cos_ax.lines[0].get_color()
    assert avm_ax.lines[-1].get_label() == "chance (uniform map)"
    with pytest.raises(ValueError, match="not given"):
        plot_localization_over_tasks(curves, groups={"x": ["esmer"]})


# ----------------------------------------------------------------------------- scores
def _gt(rows: int = 3, n: int = 16) -> torch.Tensor:
    gt = torch.zeros(rows, n, dtype=torch.bool)
    gt[0, [1, 2]] = True  # area share 2/16
    gt[1, 5:9] = True  # 4/16
    # row 2 has no ground truth: it is left out
    return gt


def test_localization_score_is_one_on_the_mask_and_chance_for_a_uniform_map():
    gt = _gt()
    exact = gt.float() / gt.float().sum(1, keepdim=True).clamp_min(1)
    s = localization_score(exact, gt)
    assert s.n_clips == 2
    assert s.share == pytest.approx(1.0)
    assert s.chance == pytest.approx((2 / 16 + 4 / 16) / 2)
    assert s.lift == pytest.approx(1.0 / s.chance)
    assert s.auc == pytest.approx(1.0)
    u = localization_score(torch.ones(3, 16), gt)
    assert u.share == pytest.approx(u.chance) and u.share == pytest.approx(3 / 16)
    assert u.lift == pytest.approx(1.0) and u.auc == pytest.approx(0.5)
    none = localization_score(torch.ones(2, 16), torch.zeros(2, 16, dtype=torch.bool))
    assert none.n_clips == 0 and math.isnan(none.share)


def test_localization_auc_counts_ties_half_and_orders():
    gt = torch.tensor([[True, False, False, False]])
    assert localization_auc(torch.tensor([[0.9, 0.1, 0.2, 0.3]]), gt).item() == pytest.approx(1.0)
    assert localization_auc(torch.tensor([[0.0, 0.1, 0.2, 0.3]]), gt).item() == pytest.approx(0.0)
    # ties with one of three negatives: (1 + 1 + 0.5) / 3
    assert localization_auc(torch.tensor([[0.2, 0.1, 0.2, 0.0]]), gt).item() == pytest.approx(2.5 / 3)


def test_localization_forgetting_is_textbook_forgetting():
    m = np.array([[0.6, np.nan], [0.4, 0.5], [0.3, 0.2]])
    # task 0: max(0.6, 0.4) - 0.3; task 1: 0.5 - 0.2
    assert localization_forgetting(m) == pytest.approx(((0.6 - 0.3) + (0.5 - 0.2)) / 2)


def test_sounding_patches_flatten_frame_major_and_keep_sounding_frames():
    masks = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    masks[1, :, 0, 1] = True  # clip 1: cell (0, 1) in both frames
    active = torch.tensor([[True, True], [False, True]])
    gt = sounding_patches(masks, active, torch.tensor([1, 0]))
    assert gt.shape == (2, 8)
    assert gt[0].nonzero().flatten().tolist() == [4 + 1]  # frame 1 only, cell index 0 * 2 + 1
    assert not gt[1].any()
    with pytest.raises(ValueError, match="clip ids"):
        sounding_patches(masks, active, torch.tensor([2]))


# ----------------------------------------------------------------------------- cosine maps
class _PlantedTokens(torch.nn.Module):
    """Stands in for the backbone: the unimodal pass returns planted tokens (identity shared
    blocks and norms), so the map's arithmetic is checked on known vectors."""

    def __init__(self, tok_a: torch.Tensor, tok_v: torch.Tensor):
        super().__init__()
        self.tok_a, self.tok_v = tok_a, tok_v
        self.blocks_u = torch.nn.ModuleList()
        self.norm_a = self.norm_v = torch.nn.Identity()
        self.config = SimpleNamespace(temperature=0.05)

    def patchify(self, audio, video):
        return audio, video

    def encode_full(self, pa, pv):
        return self.tok_a, self.tok_v


def test_cosine_map_of_a_planted_embedding_peaks_on_the_planted_patch():
    g = torch.Generator().manual_seed(0)
    b, na, nv, d = 2, 4, 12, 16
    direction = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=-1)
    tok_a = direction[:, None, :] * torch.rand(b, na, 1, generator=g).add(0.5)  # all along `direction`
    tok_v = torch.randn(b, nv, d, generator=g)
    planted = torch.tensor([3, 9])
    tok_v[torch.arange(b), planted] = 7.0 * direction  # the sounding patch points where the audio does
    model = _PlantedTokens(tok_a, tok_v)
    audio, video = torch.zeros(b, 4, 4), torch.zeros(b, 1, 3, 2, 2, dtype=torch.uint8)
    cos = cosine_map(model, audio, video)
    assert cos.shape == (b, nv)
    assert cos.argmax(dim=1).tolist() == planted.tolist()
    assert cos[torch.arange(b), planted].tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    imp = cosine_importance(model, audio, video)
    assert imp.sum(1).tolist() == pytest.approx([1.0, 1.0])
    assert imp.argmax(dim=1).tolist() == planted.tolist()


def test_audio_swap_moves_an_audio_driven_map_off_the_planted_patch():
    # Clip 0's audio points along e0 and its sounding patch 3 too; clip 1's along e1, patch 9.
    d = 8
    e = torch.eye(d)
    tok_a = torch.stack([e[0].expand(4, d), e[1].expand(4, d)])
    tok_v = torch.full((2, 12, d), 0.1)
    tok_v[0, 3], tok_v[1, 9] = e[0], e[1]
    own = cosine_from_tokens(tok_a, tok_v)
    swapped = cosine_from_tokens(tok_a, tok_v, audio_perm=torch.tensor([1, 0]))
    gt = torch.zeros(2, 12, dtype=torch.bool)
    gt[0, 3], gt[1, 9] = True, True
    assert localization_score(own, gt).auc == pytest.approx(1.0)
    assert localization_score(swapped, gt).auc < 0.5  # the other clip's audio looks elsewhere


def test_intensity_map_peaks_on_the_bright_patch():
    video = torch.zeros(1, 2, 3, 32, 32, dtype=torch.uint8)
    video[0, 1, :, 16:, :16] = 255  # frame 1, patch row 1, col 0 -> index 4 + 2 = 6
    m = intensity_map(video, 16)
    assert m.shape == (1, 8) and m.sum().item() == pytest.approx(1.0)
    assert m.argmax().item() == 6


def test_unimodal_tokens_pool_to_the_retrieval_embeddings():
    from avalanche_av.models import create_model
    from avalanche_av.models.inputs import prepare_audio, prepare_video

    torch.manual_seed(0)
    model = create_model("tiny").eval()
    c = model.config
    audio = torch.randn(2, c.audio_length, c.num_mel_bins)
    video = torch.randint(0, 256, (2, c.n_frames, 3, c.image_size, c.image_size), dtype=torch.uint8)
    tok_a, tok_v = unimodal_tokens(model, audio, video)
    assert tok_v.shape == (2, c.num_video_patches, c.embed_dim)
    with torch.no_grad():
        ea, ev = model.embed(prepare_audio(audio), prepare_video(video))
    norm = torch.nn.functional.normalize
    torch.testing.assert_close(norm(tok_a.mean(1), dim=-1), ea)
    torch.testing.assert_close(norm(tok_v.mean(1), dim=-1), ev)


# ----------------------------------------------------------------------------- training diagnostics
def _fake_strategy(plugin, clip_ids):
    return SimpleNamespace(
        plugins=[object(), plugin],
        mb_clip_id=torch.as_tensor(clip_ids),
        experience=SimpleNamespace(current_experience=1, origin_stream=SimpleNamespace(name="train")),
        clock=SimpleNamespace(train_iterations=0),
    )


def test_training_metrics_report_the_planted_plugin_values():
    masks = torch.zeros(3, 1, 2, 2, dtype=torch.bool)
    masks[0, 0, 0, 0] = True  # clip 0: 1 of 4 patches
    masks[1, 0, 1] = True  # clip 1: 2 of 4 patches; clip 2: none
    plugin = SimpleNamespace(avm=object(), storage=[0] * 6, mem_size=8, last_stats=None, step=None)
    metrics = [AVMMatchMetric(every=2), ExcludedFractionMetric(every=2), MemoryFillMetric(every=2),
               TrainLocalizationMetric(masks, every=2)]
    strategy = _fake_strategy(plugin, [0, 1, 2])
    for m in metrics:
        m.before_training_exp(strategy)
    planted = [(0.75, 0.25, 0.5, 0.125), (0.25, 0.75, 0.25, 0.375)]  # acc, loss, excl_a, excl_v
    imp = torch.tensor([[1.0, 0.0, 0.0, 0.0],  # all on clip 0's sounding patch: share 1, AUC 1
                        [0.25, 0.25, 0.25, 0.25],  # uniform on clip 1: share = 2/4, AUC 0.5
                        [0.7, 0.1, 0.1, 0.1]])  # clip 2 has no ground truth: left out
    emitted = []
    for it, (acc, loss, ea, ev) in enumerate(planted):
        plugin.last_stats = SimpleNamespace(avm_acc=torch.tensor(acc), avm_loss=torch.tensor(loss),
                                            excluded_frac_a=torch.tensor(ea), excluded_frac_v=torch.tensor(ev))
        plugin.step = SimpleNamespace(imp_v=imp)
        strategy.clock.train_iterations = it
        for m in metrics:
            m.after_forward(strategy)
            m.after_forward(strategy)  # the same step seen twice counts once
            out = m.after_training_iteration(strategy)
            if it == 0:
                assert out is None  # nothing before the window closes
            else:
                emitted += out
    values = {mv.name: mv.value for mv in emitted}
    t = "/train_phase/train_stream/Task001"
    assert values[f"Train_AVM_Acc{t}"] == pytest.approx(0.5)
    assert values[f"Train_AVM_Loss{t}"] == pytest.approx(0.5)
    assert values[f"Train_Excluded_a{t}"] == pytest.approx(0.375)
    assert values[f"Train_Excluded_v{t}"] == pytest.approx(0.25)
    assert values[f"Train_MemoryFill{t}"] == pytest.approx(0.75)
    assert values[f"Train_Loc_Share{t}"] == pytest.approx((1.0 + 0.5) / 2)
    assert values[f"Train_Loc_Chance{t}"] == pytest.approx((0.25 + 0.5) / 2)
    assert values[f"Train_Loc_AUC{t}"] == pytest.approx((1.0 + 0.5) / 2)
    assert all(mv.x_plot == 1 for mv in emitted)
    assert metrics[0].history == [{"iteration": 1, "experience": 1, "values": {"AVM_Acc": 0.5, "AVM_Loss": 0.5}}]
    # a partial window is flushed at the end of the experience; an empty one emits nothing
    assert metrics[0].after_training_exp(strategy) is None


def test_training_metrics_stay_silent_without_a_matching_plugin():
    strategy = _fake_strategy(SimpleNamespace(), [0])
    m = AVMMatchMetric(every=1)
    m.after_forward(strategy)
    assert m.after_training_iteration(strategy) == []
    with pytest.raises(ValueError, match="every"):
        AVMMatchMetric(every=0)


# ----------------------------------------------------------------------------- on real strategies
@pytest.mark.parametrize("method", ["stella", "er"])
def test_localization_and_training_metrics_in_a_real_run(tiny_stream, method):
    from avalanche_av.models import create_model
    from avalanche_av.training import AVPretraining, default_optimizer, make_plugins

    bench = tiny_stream
    tracked = int(bench.test_stream[0].dataset[0][3])
    loc = LocalizationMetrics(bench.sounding_masks, bench.active_frames, track_clips=[tracked], n_tasks=2)
    diags = training_diagnostics(every=1, sounding_masks=bench.sounding_masks, active_frames=bench.active_frames)
    torch.manual_seed(0)
    model = create_model("tiny")
    strategy = AVPretraining(
        model=model, optimizer=default_optimizer(model, lr=1e-3), train_mb_size=8, train_epochs=1,
        eval_mb_size=16, device="cpu", plugins=make_plugins(method, mem_size=8, batch_size=8),
        evaluator=EvaluationPlugin(RetrievalMetrics(n_tasks=2), loc, *diags, loggers=[]),
    )
    for exp in bench.train_stream:
        strategy.train(exp)
        strategy.eval(bench.test_stream)
    share = loc.matrix("cosine", "share")
    assert share.shape == (2, 2) and np.isfinite(share).all()
    assert ((share >= 0) & (share <= 1)).all()
    # the chance level is the mean area share of each task's retrieval clips' sounding patches
    for t in range(2):
        ids = torch.tensor([int(bench.test_stream[t].dataset[i][3]) for i in range(len(bench.test_stream[t].dataset))])
        gt = sounding_patches(bench.sounding_masks, bench.active_frames, ids)
        gt = gt[gt.any(1)].float()
        assert loc.matrix("cosine", "chance")[-1, t] == pytest.approx(float(gt.mean(1).mean()), rel=1e-5)
    assert math.isfinite(loc.forgetting("cosine", "share"))
    maps = loc.tracked_maps(-1)[tracked]
    assert maps["cosine"].shape == (bench.sounding_masks[0].numel(),)
    assert float(maps["cosine"].sum()) == pytest.approx(1.0, abs=1e-4)
    last = strategy.evaluator.get_last_metrics()
    mem = strategy.plugins[0]
    assert last["Train_MemoryFill/train_phase/train_stream/Task001"] == pytest.approx(len(mem.storage) / mem.mem_size)
    assert np.isfinite(loc.matrix("cosine", "share_swap")).all()
    # the intensity reference uses neither audio nor weights: the same after every task
    inten = loc.matrix("intensity", "share")
    np.testing.assert_allclose(inten[0], inten[1], rtol=1e-6)
    if method == "stella":
        assert np.isfinite(loc.matrix("avm", "auc")).all()
        assert np.isfinite(loc.matrix("avm", "auc_swap")).all()
        assert 0 <= last["Train_AVM_Acc/train_phase/train_stream/Task001"] <= 1
        assert 0 <= last["Train_Loc_Share/train_phase/train_stream/Task001"] <= 1
        assert set(maps) == {"cosine", "avm", "intensity"}
    else:
        assert np.isnan(loc.matrix("avm", "share")).all()
        assert not any(k.startswith("Train_AVM") for k in last)
    frames = bench.test_stream[0].dataset[0][1]
    fig = loc.plot_tracked(tracked, frames, rows=(0, -1))
    n_rows = 5 if method == "stella" else 3  # (cosine, avm) x (after task 1, after task 2) + intensity once
    assert len(fig.axes) == n_rows * frames.shape[0]
    assert fig.axes[0].get_ylabel() == "audio→video cosine\nafter task 1"
    assert loc.plot_tracked(10_000, frames) is None
    json.dumps(loc.to_dict())  # JSON-ready
    state = loc.state_dict()
    again = LocalizationMetrics(bench.sounding_masks, bench.active_frames)
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.matrix("cosine", "share"), share)


# ----------------------------------------------------------------------------- attention from a checkpoint
def _stella_checkpoint(tiny_stream, path):
    from avalanche_av.experiment import RunConfig
    from avalanche_av.training import save_checkpoint
    from avalanche_av.training.plugins import StellaPlugin

    stella = StellaPlugin(mem_size=8)
    strategy = make_strategy([stella], mb=8)
    strategy.train(tiny_stream.train_stream[0])
    cfg = RunConfig(strategy="stella", n_tasks=2, classes_per_task=2, train_clips_per_class=8, eval_clips_per_class=4,
                    mem_size=8, batch_size=8, epochs=1)
    save_checkpoint(path, strategy, extra={"run_config": json.dumps(cfg.to_json()), "completed_experiences": 1})
    return strategy, stella


def test_draw_attention_from_a_run_checkpoint(tiny_stream, tmp_path):
    from avalanche_av.analysis import clip_batch, draw_attention, load_run
    from avalanche_av.evaluation import avm_importance

    strategy, stella = _stella_checkpoint(tiny_stream, tmp_path / "run" / "checkpoint.pt")
    run = load_run(tmp_path / "run" / "checkpoint.pt", benchmark=tiny_stream)
    assert run.completed_experiences == 1 and run.avm is not None
    for name, p in stella.avm.state_dict().items():
        torch.testing.assert_close(run.avm.state_dict()[name], p)
    clip = int(tiny_stream.test_stream[1].dataset[2][3])
    audio, video, gt = clip_batch(tiny_stream, [clip, 0])
    assert torch.equal(video[0], tiny_stream.test_stream[1].dataset[2][1])  # the retrieval clip itself
    assert torch.equal(audio[1], tiny_stream.train_stream[0].dataset[0][0])  # a training clip
    assert torch.equal(gt, sounding_patches(tiny_stream.sounding_masks, tiny_stream.active_frames, torch.tensor([clip, 0])))
    records = draw_attention(tmp_path / "run" / "checkpoint.pt", [clip], run=run)
    (rec,) = records
    assert rec["path"].endswith(f"attention/attention_clip{clip}.png") and (tmp_path / "run" / "attention").is_dir()
    assert open(rec["path"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # the drawn AVM map is the trained AVM's: its score matches a direct computation
    strategy.model.eval()
    _, imp_v, _ = avm_importance(strategy.model, stella.avm, audio[:1], video[:1])
    assert rec["scores"]["avm"]["share"] == pytest.approx(localization_score(imp_v, gt[:1]).share, rel=1e-4)
    assert set(rec["scores"]) == {"avm", "cosine"}
    with pytest.raises(ValueError, match="not a clip of this benchmark"):
        clip_batch(tiny_stream, [10_000])


def test_cli_attention_draws_and_reports_user_errors(tiny_stream, tmp_path, capsys):
    from avalanche_av.cli import main

    ckpt = tmp_path / "run" / "checkpoint.pt"
    _stella_checkpoint(tiny_stream, ckpt)
    clip = int(tiny_stream.test_stream[0].dataset[1][3])
    assert main(["attention", "--checkpoint", str(ckpt), "--clip", str(clip), "--out", str(tmp_path / "maps")]) == 0
    out = capsys.readouterr().out
    assert f"clip {clip}: {tmp_path / 'maps' / f'attention_clip{clip}.png'}" in out
    assert "avm: share" in out and "cosine: share" in out
    assert (tmp_path / "maps" / f"attention_clip{clip}.png").is_file()
    assert main(["attention", "--checkpoint", str(ckpt), "--clip", "99999"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("avalanche-av: error: clip 99999 is not a clip of this benchmark") and err.count("\n") == 1
    assert main(["attention", "--checkpoint", str(tmp_path / "nope.pt"), "--clip", "0"]) == 2
    assert "does not exist" in capsys.readouterr().err
