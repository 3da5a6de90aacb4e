"""Host syncs on the training hot path: the debug switch, the packed memory copy, the deferred loss check."""
import importlib

import pytest
import torch

from avalanche_av.evaluation.host_sync import EMULATED_DEVICE, HostSyncCounter
from avalanche_av.models import create_model, debug_checks, debug_checks_enabled, set_debug_checks
from avalanche_av.models import debug as debug_module


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("tiny")


def _subset(model, n_bad=0):
    c = model.config
    b, k = 2, c.num_visible(c.num_audio_patches) + 4
    pa = torch.randn(b, k, c.audio_patch_dim)
    ia = torch.arange(k).expand(b, k).clone()
    ia[0, 0] += n_bad * c.num_audio_patches  # planted: out of range when n_bad
    kv = c.num_visible(c.num_video_patches) + 4
    pv = torch.randn(b, kv, c.video_patch_dim)
    iv = torch.arange(kv).expand(b, kv).clone()
    return pa, ia, pv, iv


def test_index_validation_raises_with_debug_checks_on(tiny):
    with debug_checks(True):
        with pytest.raises(ValueError, match=r"audio indices must lie in \[0, 32\)"):
            tiny.forward_patches(*_subset(tiny, n_bad=1))


def test_index_validation_is_skipped_with_debug_checks_off(tiny):
    with debug_checks(False):
        # not our ValueError: the lookup itself fails later (on CUDA, a device-side assert)
        with pytest.raises(IndexError):
            tiny.forward_patches(*_subset(tiny, n_bad=1))
        # shapes and dtypes are still checked (no value is read for them)
        pa, ia, pv, iv = _subset(tiny)
        with pytest.raises(ValueError, match="int64"):
            tiny.forward_patches(pa, ia.int(), pv, iv)


@pytest.mark.parametrize("on, reads", [(False, 0), (True, 2)])
def test_index_validation_reads_once_per_modality_only_when_on(tiny, on, reads):
    pa, ia, pv, iv = _subset(tiny)
    c = HostSyncCounter(resident=list(tiny.parameters()) + list(tiny.buffers()))
    with debug_checks(on), c:
        args = [t.to(EMULATED_DEVICE) for t in (pa, ia, pv, iv)]
        tiny.forward_patches(*args)
    sites = [e for e in c.syncs() if "_check_index_range" in e.site]
    assert len(sites) == reads


def test_switch_and_environment_variable(monkeypatch):
    before = debug_checks_enabled()
    with debug_checks(False):
        assert not debug_checks_enabled()
        assert set_debug_checks(True) is False and debug_checks_enabled()
    assert debug_checks_enabled() == before
    try:
        for value, expected in (("1", True), ("0", False), ("", False), ("yes", True)):
            monkeypatch.setenv("AVALANCHE_AV_DEBUG_CHECKS", value)
            importlib.reload(debug_module)
            assert debug_checks_enabled() is expected, value
    finally:
        monkeypatch.delenv("AVALANCHE_AV_DEBUG_CHECKS")
        importlib.reload(debug_module)
        set_debug_checks(before)
