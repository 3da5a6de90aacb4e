"""``er_exp``: Avalanche's ReplayPlugin and reservoir, made resumable by two thin subclasses."""
import pytest
import torch
from avalanche.training.storage_policy import ReservoirSamplingBuffer

from avalanche_av.training.plugins import ResumableReplayPlugin, ResumableReservoirSamplingBuffer


def _items(dataset):
    return [dataset[i] for i in range(len(dataset))]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert all(torch.equal(torch.as_tensor(u), torch.as_tensor(v)) for u, v in zip(x, y))


def test_reservoir_equals_avalanche_and_records_each_clip_origin(tiny_stream):
    ours, theirs = ResumableReservoirSamplingBuffer(6), ReservoirSamplingBuffer(6)
    for exp in tiny_stream.train_stream:
        torch.manual_seed(exp.current_experience)
        ours.post_adapt(None, exp)
        torch.manual_seed(exp.current_experience)
        theirs.post_adapt(None, exp)
    # The same keys, clips and order as Avalanche's own buffer.
    assert torch.equal(ours._buffer_weights, theirs._buffer_weights)
    _same(_items(ours.buffer), _items(theirs.buffer))
    # Each origin row points at the stored clip; after two experiences both are represented.
    stream = tiny_stream.train_stream
    _same(_items(ours.buffer), [stream[e].dataset[i] for e, i in ours.origin.tolist()])
    assert ours.origin.shape == (6, 2) and set(ours.origin[:, 0].tolist()) == {0, 1}


def test_rebuilt_buffer_equals_the_saved_one_and_resize_keeps_origin(tiny_stream):
    buf = ResumableReservoirSamplingBuffer(5)
    for exp in tiny_stream.train_stream:
        buf.post_adapt(None, exp)
    fresh = ResumableReservoirSamplingBuffer(99)
    fresh.rebuild(tiny_stream.train_stream, buf.state_dict())
    assert fresh.max_size == 5 and torch.equal(fresh._buffer_weights, buf._buffer_weights)
    _same(_items(fresh.buffer), _items(buf.buffer))
    buf.resize(None, 3)
    assert len(buf.buffer) == 3 and buf.origin.shape == (3, 2)


def test_plugin_refuses_another_storage_policy_and_a_foreign_state():
    with pytest.raises(TypeError, match="ResumableReservoirSamplingBuffer"):
        ResumableReplayPlugin(mem_size=4, storage_policy=ReservoirSamplingBuffer(4))
    with pytest.raises(KeyError):
        ResumableReplayPlugin(mem_size=4).load_state_dict({"something": "else"})
