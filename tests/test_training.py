"""The AVPretraining template with Avalanche plugins, determinism, NaN handling, checkpoints."""
import copy
import math

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import LRSchedulerPlugin, ReplayPlugin
from avalanche.training.storage_policy import ReservoirSamplingBuffer

from avalanche_av.training import NonFiniteLossError, load_checkpoint, make_plugins, save_checkpoint
from avalanche_av.training.plugins import SSLEWCPlugin

from .conftest import make_strategy


class _Recorder(SupervisedPlugin):
    """Records the loss of every training iteration."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def after_training_iteration(self, strategy, **kwargs):
        self.losses.append(float(strategy.loss.detach()))


def test_trains_with_avalanche_replay_ewc_and_lr_scheduler(tiny_stream):
    rec = _Recorder()
    ewc = SSLEWCPlugin(ewc_lambda=10.0)
    replay = ReplayPlugin(mem_size=8, batch_size_mem=4, storage_policy=ReservoirSamplingBuffer(max_size=8))
    strategy = make_strategy([replay, ewc, rec], epochs=2)
    sched = torch.optim.lr_scheduler.StepLR(strategy.optimizer, step_size=1, gamma=0.5)
    strategy.plugins.append(LRSchedulerPlugin(sched, step_granularity="epoch", reset_scheduler=False, reset_lr=False))
    lr0 = strategy.optimizer.param_groups[0]["lr"]
    for exp in tiny_stream.train_stream:
        strategy.train(exp)
    assert all(math.isfinite(x) for x in rec.losses) and len(rec.losses) == 2 * 2 * 2
    assert len(replay.storage_policy.buffer) == 8
    # EWC importances exist and are non-trivial for the backbone
    imp = ewc.importances[0]
    assert sum(float(v.data.abs().sum()) for v in imp.values()) > 0
    assert strategy.optimizer.param_groups[0]["lr"] < lr0
    results = strategy.eval(tiny_stream.test_stream)
    assert any(k.startswith("Retrieval_R@5_a2v") for k in results)


def test_labels_are_not_used_for_training(tiny_stream):
    """Scrambling the class targets leaves training bit-identical."""
    losses = []
    for scramble in (False, True):
        rec = _Recorder()

        class _Scramble(SupervisedPlugin):
            def before_forward(self, strategy, **kw):
                if scramble:
                    strategy.mbatch[2] = torch.randint(0, 100, strategy.mbatch[2].shape, generator=torch.Generator().manual_seed(1))

        strategy = make_strategy([_Scramble(), rec])
        torch.manual_seed(3)
        strategy.train(tiny_stream.train_stream[0])
        losses.append(rec.losses)
    assert losses[0] == losses[1]


def test_eval_loss_is_deterministic(tiny_stream):
    strategy = make_strategy()
    r1 = strategy.eval(tiny_stream.test_stream)
    torch.manual_seed(123)  # global RNG must not matter
    r2 = strategy.eval(tiny_stream.test_stream)
    keys = [k for k in r1 if k.startswith("Loss_Exp/eval_phase")]
    assert len(keys) == 2
    assert all(r1[k] == r2[k] for k in keys)


def test_nan_loss_is_skipped_and_counted_or_raises(tiny_stream):
    class _Poison(SupervisedPlugin):
        def before_forward(self, strategy, **kw):
            if strategy.clock.train_exp_iterations == 1:
                strategy.mbatch[0] = strategy.mbatch[0] * float("nan")

    strategy = make_strategy([_Poison()])
    before = copy.deepcopy(strategy.model.state_dict())
    with pytest.warns(UserWarning, match="non-finite loss"):
        strategy.train(tiny_stream.train_stream[0])
    assert strategy.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in strategy.model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in strategy.model.state_dict().items())

    strict = make_strategy([_Poison()], nan_policy="raise")
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        strict.train(tiny_stream.train_stream[0])


def test_invalid_arguments_say_what_is_allowed():
    with pytest.raises(ValueError, match="amp must be one of"):
        make_strategy(amp="fp8")
    with pytest.raises(ValueError, match="nan_policy"):
        make_strategy(nan_policy="ignore")
    with pytest.raises(ValueError, match="valid strategies"):
        make_plugins("gem", mem_size=10, batch_size=4)


@pytest.mark.parametrize("name", ["er", "der++", "stella", "stella+", "cls-er", "lump", "esmer", "mir", "gmed",
                                  # methods without an online memory, and two ablation presets
                                  # (the rest share StellaPlugin's state; test_avalanche_baselines
                                  # covers si, rwalk, lwf, cumulative and multitask)
                                  "finetune", "er_exp", "ewc", "mas", "agem", "lfl", "feature-distillation",
                                  "stella-random", "stella-audio-freq"])
def test_checkpoint_resume_reproduces_next_step(tiny_stream, name, tmp_path):
    """Save after experience 0, train on; a fresh strategy resumed from the file reproduces the
    first losses of experience 1 exactly (buffer, AVM, optimizer and RNG state all restored)."""
    rec = _Recorder()
    strategy = make_strategy(make_plugins(name, mem_size=6, batch_size=4) + [rec], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    save_checkpoint(tmp_path / "ck.pt", strategy, extra={"done": 1})
    rec.losses.clear()
    strategy.train(tiny_stream.train_stream[1])
    expected = list(rec.losses)

    rec2 = _Recorder()
    fresh = make_strategy(make_plugins(name, mem_size=6, batch_size=4) + [rec2], mb=4, seed=99)
    assert load_checkpoint(tmp_path / "ck.pt", fresh) == {"done": 1}
    fresh.train(tiny_stream.train_stream[1])
    assert rec2.losses == expected
    assert len(expected) > 0
    from avalanche_av.training.plugins import OnlineMemoryPlugin

    if isinstance(strategy.plugins[0], OnlineMemoryPlugin):
        mem = strategy.plugins[0].storage
        # every clip is offered to the memory once; ESMER keeps its high-loss clips out
        assert len(mem) == 6 and (mem.store.n_seen == 32 or name == "esmer" and 6 <= mem.store.n_seen < 32)


def test_checkpoint_rejects_foreign_files(tmp_path):
    strategy = make_strategy()
    bad = tmp_path / "bad.pt"
    torch.save({"hello": 1}, bad)
    with pytest.raises(ValueError, match="not an avalanche-av run checkpoint"):
        load_checkpoint(bad, strategy)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt", strategy)
