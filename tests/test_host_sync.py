"""HostSyncCounter: planted syncs are counted by kind and site; host-tensor reads are not syncs."""
import torch

from avalanche_av.evaluation.host_sync import EMULATED_DEVICE, HostSyncCounter


def _kinds(counter, sync_only=True):
    evs = counter.syncs() if sync_only else counter.events
    return [e.kind for e in evs]


def test_planted_syncs_are_counted_by_kind():
    c = HostSyncCounter()
    with c:
        x = torch.randn(6).to(EMULATED_DEVICE)  # the "minibatch" moves to the device
        assert x.device == EMULATED_DEVICE
        x.sum().item()  # read
        if x.max() > -10:  # bool(tensor): read
            pass
        int(x.argmax())  # read
        x[x > 0]  # boolean mask: data-dependent shape
        torch.nonzero(x > 0)  # data-dependent shape
        x.tolist()  # read
        x.cpu()  # blocking D2H
        x.to("cpu", non_blocking=True)  # async D2H: not a sync
        y = torch.zeros(3, device=x.device)  # allocated on the device of x: resident
        y.sum().item()  # read
        h = torch.arange(5)  # a host tensor
        h.sum().item()  # host read: no sync
        h.to(x.device)  # H2D: no sync
    assert _kinds(c) == ["read", "read", "read", "shape", "shape", "read", "d2h", "read"]
    other = [e.kind for e in c.events if not e.is_sync]
    assert other.count("d2h_async") == 1 and other.count("h2d") == 2 and other.count("read") == 1
    # the sites are this file's lines
    assert all("test_host_sync.py" in e.site for e in c.syncs())
    # the device property is restored
    assert "device" not in vars(torch.Tensor) and torch.zeros(1).device == torch.device("cpu")


def test_results_of_a_host_copy_are_host_tensors():
    c = HostSyncCounter()
    with c:
        x = torch.randn(4).to(EMULATED_DEVICE)
        h = x.cpu()  # 1 sync
        h.sum().item()  # reading the copy is free
        buf = torch.zeros(4)
        buf[torch.arange(2)] = x[:2]  # writing a device tensor into a host buffer: implicit D2H
        buf.sum().item()  # buf stays a host tensor
    assert _kinds(c) == ["d2h", "d2h"]


def test_resident_tensors_and_derived_values_propagate():
    w = torch.randn(3, 3)
    c = HostSyncCounter(resident=[w])
    with c:
        a = torch.randn(2, 3)  # host
        out = a @ w  # resident (w is)
        float(out.sum())
        float(a.sum())
    assert _kinds(c) == ["read"] and len([e for e in c.events if e.kind == "read"]) == 2
