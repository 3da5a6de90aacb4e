"""MIR and GMED: planted retrieval, exact weight restoration, memory editing, options."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from avalanche_av.evaluation import av_evaluator
from avalanche_av.models import create_model
from avalanche_av.models.inputs import prepare_audio, prepare_video
from avalanche_av.training import AVPretraining, default_optimizer, make_plugins
from avalanche_av.training.plugins import GMEDPlugin, MIRPlugin
from avalanche_av.training.plugins.gmed import gmed_edit_gradients, to_compact_clip
from avalanche_av.training.virtual_step import (
    forward_with,
    masking_generator,
    next_seed,
    virtual_sgd_step,
)

from .conftest import make_strategy


def _clips(stream, n):
    """The first ``n`` training clips of experience 0 as ``(audio, video, target, clip_id, task)``."""
    ds = stream.train_stream[0].dataset
    return next(iter(DataLoader(ds, batch_size=n, collate_fn=getattr(ds, "collate_fn", None))))


def _set_minibatch(strategy, batch):
    strategy.model.train()
    strategy.mbatch = [t.clone() for t in batch]
    strategy._unpack_minibatch()


def _fill(plugin, batch, clip_id_offset=100):
    audio, video, target, clip_id, _ = batch
    plugin.storage.add({"audio": audio, "video": video, "target": target, "clip_id": clip_id + clip_id_offset})


class _Marked(nn.Module):
    """The tiny AVMAE plus one parameter ``w`` whose loss term ``w · marker`` reads a marker
    planted in ``audio[:, 0, 0]`` (zeroed before the backbone sees the clip).

    A virtual SGD step on current clips with marker +1 moves ``w`` from 0 to ``-lr``; a stored
    clip with marker ``-M`` then gains ``lr · M`` of loss, one with ``+M`` loses as much.
    """

    def __init__(self):
        super().__init__()
        self.inner = create_model("tiny")
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, audio, video, generator=None):
        marker = audio[:, 0, 0].float()
        audio = audio.clone()
        audio[:, 0, 0] = 0
        out = self.inner(audio, video, generator=generator)
        out.per_sample_loss = out.per_sample_loss + self.w * marker
        out.loss = out.per_sample_loss.mean()
        return out


def test_mir_replays_the_planted_most_interfered_candidate_and_restores_weights(tiny_stream):
    torch.manual_seed(0)
    model = _Marked()
    opt = default_optimizer(model, lr=1e-3)
    mir = MIRPlugin(mem_size=8, batch_size_mem=2, candidate_factor=4, seed=3)
    strategy = AVPretraining(model=model, optimizer=opt, train_mb_size=4, device="cpu", plugins=[mir],
                             evaluator=av_evaluator(loggers=[]))
    batch = _clips(tiny_stream, 12)
    mem, cur = [t[:8] for t in batch], [t[8:] for t in batch]
    mem[0] = mem[0].clone()
    mem[0][:, 0, 0] = 0
    mem[0][5, 0, 0] = -100.0  # planted: the update on marker-+1 clips raises its loss by lr·100
    mem[0][2, 0, 0] = 100.0  # planted opposite: its loss drops by as much
    cur[0] = cur[0].clone()
    cur[0][:, 0, 0] = 1.0
    _fill(mir, mem)
    # a real Adam step first, so the optimizer has state that must survive untouched
    _set_minibatch(strategy, cur)
    model(strategy.mb_audio, strategy.mb_video).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt_state = copy.deepcopy(opt.state_dict())
    gen_state = mir.mask_generator.get_state()

    _set_minibatch(strategy, cur)
    mir.before_forward(strategy)

    # every stored sample was a candidate (C·m = 8); the planted spike is replayed first
    assert mir.last_candidate_slots.shape == (8,)
    stored_ids = mir.storage.store.fields["clip_id"][mir.last_candidate_slots]
    top = torch.argsort(mir.last_scores, descending=True)
    assert int(stored_ids[top[0]]) == int(mem[3][5]) + 100
    assert int(stored_ids[top[-1]]) == int(mem[3][2]) + 100
    rows = strategy.memory_rows(mir)
    assert rows is not None and rows.stop - rows.start == 2
    assert int(strategy.mb_clip_id[rows][0]) == int(mem[3][5]) + 100
    assert torch.equal(strategy.mb_clip_id[rows], mir.storage.store.fields["clip_id"][mir.mem_slots])
    assert float(mir.last_scores.max()) == pytest.approx(1e-3 * 100, rel=0.05)

    # the scores are the loss increase under a real SGD step on a copy, on the same masks
    g = torch.Generator().manual_seed(0)
    g.set_state(gen_state)
    seed = next_seed(g)
    ref = copy.deepcopy(model)
    n = strategy.mb_n_current
    ref(strategy.mb_audio[:n], strategy.mb_video[:n], generator=masking_generator(seed)).loss.backward()
    torch.optim.SGD(ref.parameters(), lr=1e-3).step()
    cand = mir.storage.store.get(mir.last_candidate_slots)
    ca, cv = prepare_audio(cand["audio"]), prepare_video(cand["video"])
    with torch.no_grad():
        before = model(ca, cv, generator=masking_generator(seed + 1)).per_sample_loss
        after = ref(ca, cv, generator=masking_generator(seed + 1)).per_sample_loss
    torch.testing.assert_close(mir.last_scores, after - before, atol=2e-5, rtol=1e-3)

    # weights, gradients and optimizer state are bit-identical to before the scoring
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name]), name
        assert p.grad is None, name
    new_state = opt.state_dict()
    for k, st in opt_state["state"].items():
        for f, v in st.items():
            assert torch.equal(new_state["state"][k][f], v)


def test_gmed_edit_ascends_the_interference_objective():
    """``∇_x J`` is the gradient of GMED's objective: J's directional derivative along it is
    ``|∇J|² > 0`` (finite differences on the same masks), and with β = 0 a small step along it
    raises the loss increase that the virtual update causes."""
    torch.manual_seed(0)
    model = create_model("tiny")
    opt = default_optimizer(model, lr=1e-3)
    cfg = model.config
    cur_a = torch.randn(4, cfg.audio_length, cfg.num_mel_bins)
    cur_v = torch.randn(4, cfg.n_frames, 3, cfg.image_size, cfg.image_size)
    mem_a = torch.randn(4, cfg.audio_length, cfg.num_mel_bins)
    mem_v = torch.randn(4, cfg.n_frames, 3, cfg.image_size, cfg.image_size)
    theta = virtual_sgd_step(model, opt, cur_a, cur_v, generator=masking_generator(1))

    def objective(a, v, reg):
        with torch.no_grad():
            b = forward_with(model, None, a, v, masking_generator(2)).per_sample_loss.double()
            f = forward_with(model, theta, a, v, masking_generator(2)).per_sample_loss.double()
        return float((f - b).sum() - reg * b.sum()), float((f - b).sum())

    for reg in (0.05, 0.0):
        ga, gv, _ = gmed_edit_gradients(model, theta, mem_a, mem_v, reg, seed=2)
        sq = float(ga.double().pow(2).sum() + gv.double().pow(2).sum())
        eps = 0.3 / sq**0.5  # a step of L2 norm 0.3 in input space
        j_plus, _ = objective(mem_a + eps * ga, mem_v + eps * gv, reg)
        j_minus, _ = objective(mem_a - eps * ga, mem_v - eps * gv, reg)
        assert (j_plus - j_minus) / (2 * eps) == pytest.approx(sq, rel=0.15)
    _, inc0 = objective(mem_a, mem_v, 0.0)
    _, inc1 = objective(mem_a + eps * ga, mem_v + eps * gv, 0.0)
    assert inc1 > inc0


def test_gmed_writes_edits_back_in_range_and_replays_the_edited_clips(tiny_stream):
    gmed = GMEDPlugin(mem_size=8, batch_size_mem=4, edit_stride=3000.0, seed=1)
    strategy = make_strategy([gmed], mb=4)
    batch = _clips(tiny_stream, 12)
    _fill(gmed, [t[:8] for t in batch])
    original = {k: v.clone() for k, v in gmed.storage.store.fields.items()}
    _set_minibatch(strategy, [t[8:] for t in batch])
    params = {n: p.detach().clone() for n, p in strategy.model.named_parameters()}
    gmed.before_forward(strategy)

    slots = gmed.mem_slots
    stored = gmed.storage.store.get(slots)
    assert bool(gmed.last_changed.all())
    assert not torch.equal(stored["video"], original["video"][slots])
    assert stored["video"].dtype == torch.uint8 and stored["audio"].dtype == torch.float16
    assert torch.isfinite(stored["audio"]).all()
    # untouched slots keep their clips
    rest = torch.tensor([i for i in range(8) if i not in slots.tolist()])
    for name in ("audio", "video"):
        assert torch.equal(gmed.storage.store.fields[name][rest], original[name][rest])
    # the replayed rows are the edited clips now in memory, with their clip ids
    rows = strategy.memory_rows(gmed)
    assert torch.equal(strategy.mb_clip_id[rows], stored["clip_id"])
    assert torch.equal(strategy.mb_audio_raw[rows], stored["audio"])
    assert torch.equal(strategy.mb_video_raw[rows], stored["video"])
    # the stored (quantised) edit still points up the gradient of the editing objective
    n = strategy.mb_n_current
    theta = virtual_sgd_step(strategy.model, strategy.optimizer, strategy.mb_audio[:n], strategy.mb_video[:n])
    orig_a, orig_v = prepare_audio(original["audio"][slots]), prepare_video(original["video"][slots])
    ga, gv, _ = gmed_edit_gradients(strategy.model, theta, orig_a, orig_v, gmed.edit_reg, seed=5)
    da = prepare_audio(stored["audio"]) - orig_a
    dv = prepare_video(stored["video"]) - orig_v
    assert float((ga * da).sum() + (gv * dv).sum()) > 0
    for name, p in strategy.model.named_parameters():
        assert torch.equal(p, params[name]) and p.grad is None


def test_compact_clip_clamps_and_stochastic_rounding_is_unbiased():
    audio = torch.tensor([[[1e6, -1e6, 0.3]]])
    video = torch.full((1, 1, 3, 1, 2), 0.0)
    video[..., 0], video[..., 1] = 50.0, -50.0  # far outside the normalised pixel range
    a16, v8 = to_compact_clip(audio, video)
    assert torch.isfinite(a16).all() and float(a16.max()) == 65504.0
    assert v8.dtype == torch.uint8 and v8[..., 0].eq(255).all() and v8[..., 1].eq(0).all()
    # 10.3 pixel levels and an fbank value between two fp16 neighbours: stored means match
    pix = torch.full((4000, 1, 3, 1, 1), 10.3 / 255)
    norm = (pix - torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1)
    x = torch.full((4000, 1, 1), 1.0 + 0.25 * 2**-10)
    g = torch.Generator().manual_seed(0)
    a16, v8 = to_compact_clip(x, norm, "stochastic", g)
    assert set(v8.unique().tolist()) == {10, 11} and float(v8.float().mean()) == pytest.approx(10.3, abs=0.03)
    assert float(a16.float().mean()) == pytest.approx(float(x[0]), abs=2e-5)
    with pytest.raises(ValueError, match="rounding"):
        to_compact_clip(x, norm, "floor")


@pytest.mark.parametrize("name", ["mir", "gmed"])
def test_runs_end_to_end_from_the_registry(tiny_stream, name):
    plugins = make_plugins(name, mem_size=6, batch_size=4)
    strategy = make_strategy(plugins, mb=4)
    for exp in tiny_stream.train_stream:
        strategy.train(exp)
    res = strategy.eval(tiny_stream.test_stream[:1])
    assert any("R@1" in k for k in res) and all(v == v for v in res.values() if isinstance(v, float))
    assert len(plugins[0].storage) == 6
    if name == "mir":
        assert plugins[0].last_scores is not None and plugins[0].last_scores.shape == (6,)
    else:
        assert plugins[0].last_increase is not None and torch.isfinite(plugins[0].last_edit_norm).all()


@pytest.mark.parametrize("name, option, value", [
    ("mir", "candidate_factor", 0),
    ("mir", "virtual_lr", -1.0),
    ("gmed", "edit_stride", -0.1),
    ("gmed", "edit_reg", float("nan")),
    ("gmed", "virtual_lr", 0.0),
    ("gmed", "rounding", "floor"),
])
def test_bad_options_name_the_option(name, option, value):
    with pytest.raises(ValueError, match=option):
        make_plugins(name, mem_size=4, batch_size=2, **{option: value})


@pytest.mark.parametrize("name", ["mir", "gmed"])
def test_without_memory_says_it_needs_one(name):
    with pytest.raises(ValueError, match="mem_size >= 1"):
        make_plugins(name, mem_size=0, batch_size=2)
