"""Multi-process training on CPU: gloo, 2 and 3 processes started with ``torch.multiprocessing.spawn``.

Each worker sets torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT) and
enters :func:`~avalanche_av.training.distributed.distributed_session`, as ``run_experiment``
does under ``torchrun``. One 2-rank job (module fixture) runs every 2-rank scenario and writes
what it saw; the tests compare that with a single process here:

* InfoNCE with all-gathered negatives == single-process InfoNCE over the concatenated batch
  (per-sample values and gradients);
* one training step of 2 ranks x batch b == 1 process x batch 2b (loss, and the SGD update);
* distributed retrieval evaluation (padded shards) == single-process evaluation, R@K exactly;
* a STELLA checkpoint saved by 2 ranks resumes exactly on 2, and on 1 and 3 ranks keeps every
  stored clip exactly once.
"""
from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from avalanche_av.models import AVMAE, get_config

B = 6  # per-rank batch of the training-step check; one process trains on 2B
EVAL_MB = 4
MEM = 6  # STELLA memory over all ranks


class FixedMaskAVMAE(AVMAE):
    """Masks every row alike, whatever the batch, so runs over different batch splits see the
    same masks (the real model draws them from the RNG, which differs per rank)."""

    @staticmethod
    def _split_visible(k, n_vis, b, device, generator, name):
        order = torch.randperm(k, generator=torch.Generator().manual_seed(k)).to(device).unsqueeze(0).expand(b, k)
        return order[:, :n_vis], order[:, n_vis:]


@functools.lru_cache(maxsize=1)
def _stream():
    from avalanche_av.benchmarks import sounding_objects

    # 12 training clips per experience (6 per rank), 9 retrieval clips (odd: the eval shards pad)
    return sounding_objects(seed=0, n_tasks=2, classes_per_task=3, train_clips_per_class=4, eval_clips_per_class=3)


def _strategy(model, plugins=(), mb=B, optimizer=None):
    from avalanche_av.evaluation import av_evaluator
    from avalanche_av.training import AVPretraining, default_optimizer

    return AVPretraining(model=model, optimizer=optimizer or default_optimizer(model, lr=1e-3), train_mb_size=mb,
                         train_epochs=1, eval_mb_size=EVAL_MB, device="cpu", plugins=list(plugins),
                         evaluator=av_evaluator(loggers=[]))


def _losses_recorder():
    from avalanche.core import SupervisedPlugin

    class Rec(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.losses = []

        def after_training_iteration(self, strategy, **kw):
            self.losses.append(float(strategy.loss.detach()))

    return Rec()


def _sgd_step_model(stream, mb):
    """A fixed-mask tiny model after one SGD step on experience 0 (``mb`` clips per rank)."""
    torch.manual_seed(0)
    model = FixedMaskAVMAE(get_config("tiny"))
    rec = _losses_recorder()
    strategy = _strategy(model, [rec], mb=mb, optimizer=torch.optim.SGD(model.parameters(), lr=0.5))
    strategy.train(stream.train_stream[0])
    return strategy, rec.losses


def _stella(mem_size):
    from avalanche_av.models import create_model
    from avalanche_av.training import make_plugins

    torch.manual_seed(0)
    return _strategy(create_model("tiny"), make_plugins("stella", mem_size=mem_size, batch_size=3), mb=3)


def _memory(strategy):
    store = strategy.plugins[0].storage.store
    return {"clip_id": store.fields["clip_id"][: store.size].clone(), "n_seen": store.n_seen,
            "capacity": store.capacity, "fields": {k: v[: store.size].clone() for k, v in store.fields.items()}}


# --------------------------------------------------------------------------- workers (one per rank)
def _two_ranks(ctx, out: Path) -> None:
    from avalanche_av.models.av_mae import info_nce
    from avalanche_av.models.distributed import global_negatives
    from avalanche_av.training.checkpoint import load_checkpoint, save_checkpoint
    from avalanche_av.training.distributed import memory_share

    r = ctx.rank
    # InfoNCE: 3 rows on rank 0, 2 on rank 1 (row counts may differ between ranks)
    g = torch.Generator().manual_seed(7)
    a_all, v_all = torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=1), \
        torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=1)
    rows = slice(0, 3) if r == 0 else slice(3, 5)
    a, v = a_all[rows].clone().requires_grad_(), v_all[rows].clone().requires_grad_()
    with global_negatives():
        _, per = info_nce(a, v, 0.05)
    per.sum().backward()
    torch.save({"per": per.detach(), "ga": a.grad, "gv": v.grad}, out / f"infonce{r}.pt")

    stream = _stream()
    strategy, losses = _sgd_step_model(stream, B)
    strategy.eval(stream.test_stream)
    last = strategy.evaluator.retrieval_metrics.to_dict()["streams"]["test"]["last"]
    torch.save({"losses": losses, "model": strategy.model.state_dict(), "last": last}, out / f"step{r}.pt")

    stella = _stella(memory_share(MEM))
    stella.train(stream.train_stream[0])
    before = _memory(stella)
    torch.save(before, out / f"memory{r}.pt")
    save_checkpoint(out / "ck.pt", stella, extra={"done": 1})
    torch.distributed.barrier()  # rank 0 has written the file
    again = _stella(memory_share(MEM))
    assert load_checkpoint(out / "ck.pt", again) == {"done": 1}
    after = _memory(again)
    # the same number of ranks: each gets its own memory back, exactly
    assert after["n_seen"] == before["n_seen"] and after["capacity"] == before["capacity"]
    assert all(torch.equal(after["fields"][k], before["fields"][k]) for k in before["fields"])
    assert torch.equal(again.plugins[0].storage.generator.get_state(), stella.plugins[0].storage.generator.get_state())


def _three_ranks(ctx, out: Path) -> None:
    from avalanche_av.training.checkpoint import load_checkpoint, save_checkpoint
    from avalanche_av.training.distributed import memory_share

    stella = _stella(memory_share(MEM))
    load_checkpoint(out / "ck.pt", stella)
    torch.save(_memory(stella), out / f"memory3_{ctx.rank}.pt")
    stella.train(_stream().train_stream[1])  # the resumed ranks train together
    save_checkpoint(out / "ck3.pt", stella)


def _entry(rank: int, world: int, port: int, fn, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import warnings

    warnings.filterwarnings("ignore")
    from avalanche_av.training.distributed import distributed_session

    with distributed_session("cpu") as ctx:
        assert ctx.world_size == world and ctx.backend == "gloo"
        fn(ctx, Path(out))


def _spawn(fn, world: int, out: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_entry, args=(world, port, fn, str(out)), nprocs=world, join=True)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _spawn(_two_ranks, 2, out)
    return out


# --------------------------------------------------------------------------- the checks
def test_info_nce_with_all_gather_equals_single_process(two_ranks):
    from avalanche_av.models.av_mae import info_nce

    g = torch.Generator().manual_seed(7)
    a = torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=1).requires_grad_()
    v = torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=1).requires_grad_()
    _, per = info_nce(a, v, 0.05)
    per.sum().backward()
    ranks = [torch.load(two_ranks / f"infonce{r}.pt", weights_only=True) for r in range(2)]
    torch.testing.assert_close(torch.cat([x["per"] for x in ranks]), per.detach(), rtol=1e-5, atol=1e-6)
    # each rank's rows get the gradient of every rank's loss terms (they are the others' negatives)
    torch.testing.assert_close(torch.cat([x["ga"] for x in ranks]), a.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([x["gv"] for x in ranks]), v.grad, rtol=1e-5, atol=1e-6)


def test_one_step_on_two_ranks_equals_one_process_with_twice_the_batch(two_ranks):
    ranks = [torch.load(two_ranks / f"step{r}.pt", weights_only=True) for r in range(2)]
    assert [len(x["losses"]) for x in ranks] == [1, 1]  # 6 clips per rank, batch 6: one step each
    for k in ranks[0]["model"]:  # the ranks stay identical
        assert torch.equal(ranks[0]["model"][k], ranks[1]["model"][k]), k
    single, losses = _sgd_step_model(_stream(), 2 * B)
    assert len(losses) == 1
    # the mean of the per-rank losses (6 rows each) is the loss over the 12 rows
    assert sum(x["losses"][0] for x in ranks) / 2 == pytest.approx(losses[0], rel=1e-5)
    torch.manual_seed(0)
    init = FixedMaskAVMAE(get_config("tiny")).state_dict()
    moved = 0
    for k, p in single.model.state_dict().items():
        want, got = p - init[k], ranks[0]["model"][k] - init[k]
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6, msg=f"update of {k}")
        moved += int(want.abs().max() > 1e-4)
    assert moved > 10  # the step did change the weights


def test_distributed_evaluation_gives_single_process_recall(two_ranks):
    saved = torch.load(two_ranks / "step0.pt", weights_only=True)
    model = FixedMaskAVMAE(get_config("tiny"))
    model.load_state_dict(saved["model"])
    strategy = _strategy(model)
    strategy.eval(_stream().test_stream)
    want = strategy.evaluator.retrieval_metrics.to_dict()["streams"]["test"]["last"]
    assert saved["last"] == want  # every R@K, both directions, class level and the modality gap
    assert set(want["clip"]["a2v"]["1"]) == {"0", "1"}  # both tasks were scored


def _clip_ids(parts) -> list[int]:
    return sorted(int(c) for p in parts for c in p["clip_id"])


def test_checkpoint_of_two_ranks_resumes_on_one_and_three_keeping_every_clip_once(two_ranks):
    from avalanche_av.training.checkpoint import load_checkpoint, read_checkpoint

    saved = [torch.load(two_ranks / f"memory{r}.pt", weights_only=True) for r in range(2)]
    stored = _clip_ids(saved)
    assert len(stored) == MEM and len(set(stored)) == MEM  # 3 per rank, each rank full
    state = read_checkpoint(two_ranks / "ck.pt")
    assert state["world"]["size"] == 2
    assert state["plugins"]["0:StellaPlugin"]["storage"]["store"]["capacity"] == MEM

    one = _stella(MEM)  # one process, the whole memory
    load_checkpoint(two_ranks / "ck.pt", one)
    mem = _memory(one)
    assert _clip_ids([mem]) == stored and mem["capacity"] == MEM
    assert mem["n_seen"] == sum(m["n_seen"] for m in saved) == 12
    one.train(_stream().train_stream[1])  # and it trains on

    _spawn(_three_ranks, 3, two_ranks)
    parts = [torch.load(two_ranks / f"memory3_{r}.pt", weights_only=True) for r in range(3)]
    assert _clip_ids(parts) == stored  # every stored clip, exactly once
    assert [len(p["clip_id"]) for p in parts] == [2, 2, 2] and [p["capacity"] for p in parts] == [2, 2, 2]
    assert [p["n_seen"] for p in parts] == [4, 4, 4]  # 12 seen, split in proportion to what each holds
    three = read_checkpoint(two_ranks / "ck3.pt")
    assert three["world"]["size"] == 3
    assert three["plugins"]["0:StellaPlugin"]["storage"]["store"]["size"] == MEM
