"""The CUDA subset (marker ``cuda``): skipped without a CUDA device; ``benchmarks_av/gpu_check.py``
runs it on a GPU machine.

What only a GPU can show: the training step of every memory method on the device, the packed
device-to-host memory copy, bf16 autocast, and which hot-path code synchronises the host
(``torch.cuda.set_sync_debug_mode('error')`` turns any sync into an error).
"""
import contextlib

import pytest
import torch

from avalanche_av.models import create_model, debug_checks
from avalanche_av.training import make_plugins

from .conftest import make_strategy

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")


@contextlib.contextmanager
def _no_sync():
    """Any host sync inside raises (``torch.cuda.set_sync_debug_mode('error')``)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("name", ["finetune", "der++", "stella", "stella+"])
def test_training_steps_on_cuda_with_a_host_memory(tiny_stream, name):
    plugins = [] if name == "finetune" else make_plugins(name, mem_size=16, batch_size=4)
    strategy = make_strategy(plugins, mb=4, device="cuda")
    strategy.train(tiny_stream.train_stream[0])
    assert strategy.skipped_steps == 0
    assert all(torch.isfinite(p).all() for p in strategy.model.parameters())
    if plugins:
        store = plugins[0].storage.store
        assert len(store) == 16
        for name_, buf in store.fields.items():
            assert buf.device.type == "cpu" and buf.is_pinned(), name_
            if buf.is_floating_point():
                assert torch.isfinite(buf[: len(store)].float()).all(), name_


def test_packed_copy_from_cuda_stores_what_cpu_rows_store():
    from avalanche_av.training.storage_policy import TensorReservoir

    g = torch.Generator().manual_seed(0)
    batches = [{"audio": torch.randn(6, 8, 4, generator=g), "clip_id": torch.arange(6) + 6 * i,
                "video": torch.randint(0, 256, (6, 2, 3, 4, 4), generator=g, dtype=torch.uint8)} for i in range(4)]
    stores = []
    for dev in ("cpu", "cuda"):
        store = TensorReservoir(5, {"audio": torch.float16})
        gen = torch.Generator().manual_seed(3)
        for i, b in enumerate(batches):
            keep = torch.tensor(i != 2, device=dev)  # the third offer is dropped
            store.add({k: v.to(dev) for k, v in b.items()}, gen, keep)
        stores.append(store)
    cpu, cuda = stores
    assert cuda.n_seen == cpu.n_seen == 18
    for k in cpu.fields:
        assert torch.equal(cpu.fields[k], cuda.fields[k]), k


def test_bf16_autocast_forward_is_close_to_fp32():
    torch.manual_seed(0)
    model = create_model("tiny").to(CUDA).eval()
    c = model.config
    audio = torch.randn(8, c.audio_length, c.num_mel_bins, device=CUDA)
    video = torch.randn(8, c.n_frames, 3, c.image_size, c.image_size, device=CUDA)
    with torch.no_grad():
        ref = model(audio, video, generator=torch.Generator(device="cpu").manual_seed(1))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(audio, video, generator=torch.Generator(device="cpu").manual_seed(1))
    assert torch.isfinite(low.loss)
    assert abs(low.loss.float().item() - ref.loss.item()) <= 0.05 * abs(ref.loss.item())
    cos = torch.nn.functional.cosine_similarity(low.pooled_a.float(), ref.pooled_a, dim=-1)
    assert cos.min().item() > 0.98


def test_index_validation_syncs_only_with_debug_checks_on():
    torch.manual_seed(0)
    model = create_model("tiny").to(CUDA)
    c = model.config
    k = c.num_visible(c.num_audio_patches) + 4
    kv = c.num_visible(c.num_video_patches) + 4
    args = (torch.randn(2, k, c.audio_patch_dim, device=CUDA), torch.arange(k, device=CUDA).expand(2, k),
            torch.randn(2, kv, c.video_patch_dim, device=CUDA), torch.arange(kv, device=CUDA).expand(2, kv))
    with debug_checks(False), _no_sync():
        model.forward_patches(*args)
    with debug_checks(True), pytest.raises(RuntimeError, match="synchroniz"), _no_sync():
        model.forward_patches(*args)


def test_unchecked_training_steps_do_not_sync_in_backward(tiny_stream):
    """With nan_check_every > 1, the template's backward of an unchecked step reads nothing."""
    strategy = make_strategy([], mb=4, device="cuda", nan_check_every=1000)
    exp = tiny_stream.train_stream[0]
    strategy.train(exp)  # warm-up: optimizer state exists
    calls = []
    orig = strategy._backward_unchecked

    def checked():
        with _no_sync():
            orig()
        calls.append(1)

    strategy._backward_unchecked = checked
    strategy.train(exp)
    assert len(calls) == 4 and strategy.skipped_steps == 0


def test_unchecked_nonfinite_step_on_cuda_is_dropped_and_counted(tiny_stream):
    from avalanche.training.plugins import SupervisedPlugin

    class Poison(SupervisedPlugin):
        calls = 0

        def before_forward(self, strategy, **kw):
            if Poison.calls == 1:
                strategy.mbatch[0] = strategy.mbatch[0] * float("nan")
            Poison.calls += 1

    er = make_plugins("er", mem_size=64, batch_size=4)[0]
    strategy = make_strategy([Poison(), er], mb=4, device="cuda", nan_check_every=3)
    with pytest.warns(UserWarning, match="non-finite"):
        strategy.train(tiny_stream.train_stream[0])
    n = len(tiny_stream.train_stream[0].dataset)
    assert strategy.skipped_steps == 1 and er.storage.n_seen == n - 4
    assert torch.isfinite(er.storage.store.fields["audio"][: len(er.storage)].float()).all()
    assert all(torch.isfinite(p).all() for p in strategy.model.parameters())


def test_score_cache_on_cuda(tiny_stream):
    stella = make_plugins("stella", mem_size=16, batch_size=8, score_cache_epochs=1)[0]
    strategy = make_strategy([stella], mb=8, epochs=2, device="cuda")
    strategy.train(tiny_stream.train_stream[0])
    cache = stella.score_cache
    assert cache.hits == 16 and cache.misses == 16
    assert all(t.device.type == "cuda" for t in cache.tables.values())
