"""CLS-ER, LUMP and ESMER: EMA rates, evaluation swap, mixup, error-sensitive weighting and
admission, end-to-end runs and option checks (tiny preset, a few steps each)."""
import math
from types import SimpleNamespace

import pytest
import torch
from avalanche.core import SupervisedPlugin

from avalanche_av.models.inputs import prepare_audio, prepare_video
from avalanche_av.training import make_plugins
from avalanche_av.training.ema import EMAModel
from avalanche_av.training.losses import embedding_penalty, pair_probability
from avalanche_av.training.plugins import CLSERPlugin, ESMERPlugin, LUMPPlugin, OnlineReplayPlugin
from avalanche_av.training.plugins.esmer import error_sensitivity_weights

from .conftest import make_strategy


class _Hook(SupervisedPlugin):
    """Runs ``fn(strategy)`` at one hook."""

    def __init__(self, hook, fn):
        super().__init__()
        setattr(self, hook, lambda strategy, **kw: fn(strategy))


# ---------------------------------------------------------------------------- EMA helper
def test_ema_update_value_by_hand_with_and_without_warmup():
    live = torch.nn.Linear(3, 2)
    for warmup, step_decay in ((True, 0.5), (False, 0.9)):  # a_1 = min(1 - 1/2, 0.9) = 0.5 with warm-up
        with torch.no_grad():
            live.weight.fill_(1.0)
            live.bias.fill_(-2.0)
        ema = EMAModel(decay=0.9, update_rate=1.0, warmup=warmup)
        ema.attach(live)
        assert not any(p.requires_grad for p in ema.model.parameters())
        with torch.no_grad():
            live.weight.fill_(3.0)
            live.bias.fill_(4.0)
        assert ema.step(live) and ema.updates == 1 and ema.steps == 1
        a = step_decay
        assert torch.allclose(ema.model.weight, torch.full((2, 3), a * 1.0 + (1 - a) * 3.0))
        assert torch.allclose(ema.model.bias, torch.full((2,), a * -2.0 + (1 - a) * 4.0))
    assert EMAModel(0.999).decay_at(5000) == 0.999 and EMAModel(0.999).decay_at(3) == pytest.approx(0.75)


def test_clser_ema_rates_count_updates_and_value_on_the_backbone():
    plugin = CLSERPlugin(mem_size=4, seed=3)
    model = torch.nn.Linear(2, 2)
    plugin.plastic.attach(model)
    plugin.stable.attach(model)
    n = 4000
    for _ in range(n):
        plugin.plastic.step(model)
        plugin.stable.step(model)
    # binomial(n, r): within 5 standard deviations of n*r, and the two rates are told apart
    for ema, r in ((plugin.plastic, 0.8), (plugin.stable, 0.6)):
        assert ema.steps == n
        assert abs(ema.updates - n * r) < 5 * math.sqrt(n * r * (1 - r)), (ema.name, ema.updates)
    # the same seed gives the same update pattern
    again = CLSERPlugin(mem_size=4, seed=3)
    again.plastic.attach(model)
    assert sum(again.plastic.step(model) for _ in range(n)) == plugin.plastic.updates

    # one update of the stable model of a real backbone, by hand: a = min(1 - 1/(t+1), 0.999)
    strategy = make_strategy([], mb=4)
    live = strategy.model
    ema = CLSERPlugin(mem_size=4).stable
    ema.attach(live)
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for p in live.parameters():
            p.add_(0.25)
    ema.steps = 9  # the next step is t = 10: a = 1 - 1/11
    ema.update_rate = 1.0
    ema.step(live)
    a = 1 - 1 / 11
    for name, p in live.named_parameters():
        assert torch.allclose(ema.model.state_dict()[name], a * before[name] + (1 - a) * p, atol=1e-6)


def test_pair_probability_is_the_geometric_mean_of_both_directions():
    emb_a = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    emb_v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # similarities [[2, 0], [1, 0]] at tau = 1
    e = math.e
    a2v = torch.tensor([e**2 / (e**2 + 1), 1 / (e + 1)])
    v2a = torch.tensor([e**2 / (e**2 + e), 0.5])
    assert torch.allclose(pair_probability(emb_a, emb_v, 1.0), (a2v * v2a).sqrt())


# ---------------------------------------------------------------------------- CLS-ER
def test_clser_picks_the_more_confident_teacher_per_sample(tiny_stream):
    """Planted teachers: the stable one separates memory rows 0-1, the plastic one rows 2-3."""
    plugin = CLSERPlugin(mem_size=8, consistency_weight=0.1, seed=0)

    def planted(strategy, audio, video):
        m, d = audio.shape[0], strategy.mb_output.pooled_a.shape[1]
        assert m == 4
        eye = torch.eye(d)
        stable_e = torch.stack([eye[0], eye[1], eye[2], eye[2]])  # rows 2, 3 indistinguishable
        plastic_e = torch.stack([eye[0], eye[0], eye[2], eye[3]])  # rows 0, 1 indistinguishable
        mk = lambda e, fill: SimpleNamespace(emb_a=e, emb_v=e, pooled_a=torch.full((m, d), fill),
                                             pooled_v=torch.full((m, d), -fill))
        return mk(plastic_e, 2.0), mk(stable_e, 1.0)

    plugin.teacher_outputs = planted
    seen = []

    def check(strategy):
        rows = strategy.memory_rows(plugin)
        if rows is None:
            return
        out = strategy.mb_output
        target_a = torch.tensor([1.0, 1.0, 2.0, 2.0]).unsqueeze(1).expand(4, out.pooled_a.shape[1])
        expected = embedding_penalty(out.pooled_a[rows], out.pooled_v[rows], target_a, -target_a)
        assert torch.allclose(plugin.last_penalty, expected.detach())
        assert float(plugin.last_stable_fraction) == 0.5
        seen.append(1)

    strategy = make_strategy([plugin, _Hook("before_backward", check)], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    assert seen  # memory rows existed after the first step


def test_clser_evaluates_with_the_stable_model_and_restores_live_weights(tiny_stream):
    plugin = CLSERPlugin(mem_size=8, seed=0)
    strategy = make_strategy([plugin], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    live = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    params = [id(p) for p in strategy.model.parameters()]
    stable = plugin.stable.model.state_dict()
    assert plugin.stable.updates >= 1
    assert any(not torch.equal(live[k], stable[k]) for k in live)  # the check below can fail
    during = []
    probe = _Hook("before_eval_iteration", lambda s: during.append(
        all(torch.equal(v, stable[k]) for k, v in s.model.state_dict().items())))
    strategy.plugins.append(probe)
    strategy.eval(tiny_stream.test_stream[:1])
    assert during and all(during)
    after = strategy.model.state_dict()
    assert all(torch.equal(after[k], live[k]) for k in live)  # bit for bit
    assert [id(p) for p in strategy.model.parameters()] == params  # the optimizer's tensors
    assert not plugin.stable.swapped_in


def test_esmer_evaluates_with_the_semantic_memory_and_restores_live_weights(tiny_stream):
    plugin = ESMERPlugin(mem_size=8, seed=0, ema_rate=1.0)  # an EMA update on every step
    strategy = make_strategy([plugin], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    live = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    ema = plugin.ema.model.state_dict()
    assert plugin.ema.updates >= 1
    assert any(not torch.equal(live[k], ema[k]) for k in live)  # the check below can fail
    during = []
    strategy.plugins.append(_Hook("before_eval_iteration", lambda s: during.append(
        all(torch.equal(v, ema[k]) for k, v in s.model.state_dict().items()))))
    strategy.eval(tiny_stream.test_stream[:1])
    assert during and all(during)
    after = strategy.model.state_dict()
    assert all(torch.equal(after[k], live[k]) for k in live)  # bit for bit
    assert not plugin.ema.swapped_in


# ---------------------------------------------------------------------------- LUMP
def test_lump_mixes_both_modalities_with_one_lambda(tiny_stream):
    plugin = LUMPPlugin(mem_size=8, alpha=0.4, seed=1)
    ds = tiny_stream.train_stream[0].dataset
    shape_a, shape_v = ds[0][0].shape, ds[0][1].shape
    # planted memory: constant clips (fbank 3.0, frames 200)
    plugin.storage.add({
        "audio": torch.full((8, *shape_a), 3.0, dtype=torch.float16),
        "video": torch.full((8, *shape_v), 200, dtype=torch.uint8),
        "target": torch.full((8,), -1), "clip_id": torch.arange(1000, 1008),
    })
    inputs, records = [], []
    strategy = make_strategy([plugin], mb=4)
    strategy.model.register_forward_pre_hook(lambda m, args: inputs.append((args[0].clone(), args[1].clone())))
    strategy.plugins.append(_Hook("before_backward", lambda s: records.append(
        (plugin.last_lambda, s.current_clips(), {k: v.clone() for k, v in plugin.mem_batch.items()}))))
    strategy.train(tiny_stream.train_stream[0])
    assert len(inputs) == len(records) == 4

    # step 0: the memory holds only planted clips, so lambda can be read off each modality
    (audio, video), (lam, cur, _) = inputs[0], records[0]
    xa, xv = prepare_audio(cur["audio"]), prepare_video(cur["video"])
    ca, cv = torch.tensor(3.0), prepare_video(torch.full((1, *shape_v), 200, dtype=torch.uint8))
    assert audio.shape[0] == 4  # trained only on the mixed clips, no appended memory rows
    sel_a, sel_v = (xa - ca).abs() > 0.1, (xv - cv).abs() > 0.1
    lam_a = ((audio - ca) / (xa - ca))[sel_a]
    lam_v = ((video - cv) / (xv - cv))[sel_v]
    assert 0 < lam < 1
    assert torch.allclose(lam_a, torch.full_like(lam_a, lam), atol=1e-3)
    assert torch.allclose(lam_v, torch.full_like(lam_v, lam), atol=1e-3)

    # every step: the model input is lam*x + (1 - lam)*x_mem, one lambda per step
    for (audio, video), (lam, cur, mem) in zip(inputs, records):
        pair = torch.arange(4) % mem["audio"].shape[0]
        exp_a = lam * prepare_audio(cur["audio"]) + (1 - lam) * prepare_audio(mem["audio"])[pair]
        exp_v = lam * prepare_video(cur["video"]) + (1 - lam) * prepare_video(mem["video"])[pair]
        assert torch.allclose(audio, exp_a, atol=1e-5) and torch.allclose(video, exp_v, atol=1e-5)
    assert len({r[0] for r in records}) == 4
    # the memory received the real clips, not the mixtures
    ids = plugin.storage.store.fields["clip_id"][: len(plugin.storage)]
    stored = plugin.storage.store.fields["audio"][: len(plugin.storage)]
    real = [i for i, c in enumerate(ids.tolist()) if c < 1000]
    assert real
    by_id = {int(ds[i][3]): ds[i][0] for i in range(len(ds))}
    for i in real:
        assert torch.equal(stored[i], by_id[int(ids[i])].to(stored.dtype))


def test_replace_inputs_checks_shapes_and_order(tiny_stream):
    er = OnlineReplayPlugin(mem_size=8, seed=0)
    errors = []

    def replace_then_append(strategy):
        a, v = strategy.mb_audio, strategy.mb_video
        with pytest.raises(ValueError, match="replace_inputs: audio must have shape"):
            strategy.replace_inputs(er, a[:1], v)
        raw = strategy.mb_audio_raw.clone()
        strategy.replace_inputs(er, a + 1.0, v)
        assert torch.equal(strategy.mb_audio, a + 1.0) and torch.equal(strategy.mb_audio_raw, raw)
        try:
            strategy.append_memory(er, {k: x[:1] for k, x in strategy.current_clips().items()})
        except RuntimeError as exc:
            errors.append(str(exc))

    strategy = make_strategy([_Hook("before_forward", replace_then_append)], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    assert errors and "replaced the model inputs" in errors[0]


# ---------------------------------------------------------------------------- ESMER
def test_error_sensitivity_weights_by_hand():
    w, admit = error_sensitivity_weights(torch.tensor([1.0, 2.0, 6.0, float("nan")]), 2.0, 1.5)
    assert torch.allclose(w, torch.tensor([1.0, 1.0, 2.0 / 6.0, 0.0]))
    assert admit.tolist() == [True, True, False, False]


def test_esmer_down_weights_and_refuses_a_planted_high_loss_sample(tiny_stream):
    plugin = ESMERPlugin(mem_size=16, consistency_weight=0.15, seed=0)
    plugin.running_loss, plugin.loss_updates = 100.0, 1  # planted running mean
    real = plugin.ema_output
    planted_ids, checks = [], []

    def planted(strategy, audio, video):
        out = real(strategy, audio, video)
        if audio.data_ptr() == strategy.mb_audio.data_ptr():  # the current rows: plant row 0
            out.per_sample_loss = out.per_sample_loss.clone()
            out.per_sample_loss[0] += 150.0
            planted_ids.append(int(strategy.mb_clip_id[0]))
        return out

    plugin.ema_output = planted

    def check(strategy):
        w, ell = plugin.last_weights, plugin.last_ema_loss
        mu = plugin.running_loss
        assert ell[0] > mu and torch.allclose(w[0], mu / ell[0]) and float(w[0]) < 1
        assert torch.equal(w[1:], torch.ones(3)) and plugin.last_admit.tolist() == [False, True, True, True]
        per = strategy.mb_output.per_sample_loss.detach()
        full_w = torch.cat([w, torch.ones(per.shape[0] - 4)])
        expected = (full_w * per).mean()
        if plugin.last_penalty is not None:
            expected = expected + 0.15 * plugin.last_penalty
        assert torch.allclose(strategy.loss.detach(), expected, atol=1e-5)
        checks.append(1)

    strategy = make_strategy([plugin, _Hook("before_backward", check)], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    assert len(checks) == 4 and len(planted_ids) == 4
    stored = set(plugin.storage.store.fields["clip_id"][: len(plugin.storage)].tolist())
    assert plugin.storage.n_seen == 12 and len(stored) == 12
    assert not stored & set(planted_ids)
    assert plugin.loss_updates == 5 and plugin.running_loss < 100.0  # outliers left out of the mean
    assert plugin.ema.steps == 4


# ---------------------------------------------------------------------------- all three
@pytest.mark.parametrize("name", ["cls-er", "lump", "esmer"])
def test_runs_end_to_end_from_the_registry(tiny_stream, name):
    plugins = make_plugins(name, mem_size=8, batch_size=4)
    strategy = make_strategy(plugins, mb=4)
    for exp in tiny_stream.train_stream:
        strategy.train(exp)
    res = strategy.eval(tiny_stream.test_stream)
    losses = [v for k, v in res.items() if k.startswith("Loss_Exp")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert len(plugins[0].storage) == 8


@pytest.mark.parametrize("name,option,value", [
    ("cls-er", "plastic_rate", 0.0), ("cls-er", "stable_decay", 1.0), ("cls-er", "consistency_weight", -1.0),
    ("lump", "alpha", 0.0), ("esmer", "loss_margin", 0.0), ("esmer", "loss_alpha", 1.5),
    ("esmer", "ema_rate", 2.0), ("esmer", "std_margin", -1.0),
])
def test_bad_hyperparameters_name_the_option(name, option, value):
    with pytest.raises(ValueError, match=option):
        make_plugins(name, mem_size=8, batch_size=4, **{option: value})
