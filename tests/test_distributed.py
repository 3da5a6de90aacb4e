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
  stored clip exactly once; so does every other online memory (ER, DER++, STELLA+, MIR, GMED,
  CLS-ER, LUMP, ESMER), each stored row still next to its own clip's other fields;
* the training shards are disjoint, cover the experience, change every epoch and are the same
  for the same seed (and differ for another).
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


def _online(name, mem_size):
    """A tiny strategy whose first plugin is the online memory of method ``name``."""
    from avalanche_av.models import create_model
    from avalanche_av.training import make_plugins

    torch.manual_seed(0)
    return _strategy(create_model("tiny"), make_plugins(name, mem_size=mem_size, batch_size=3), mb=3)


def _stella(mem_size):
    return _online("stella", mem_size)


#: The other online memories: each is a per-rank reservoir merged and re-dealt like STELLA's.
OTHER_MEMORIES = ("er", "der++", "stella+", "mir", "gmed", "cls-er", "lump", "esmer")
#: Avalanche's per-experience memories: global, the same on every rank (memory_scope="global").
GLOBAL_MEMORIES = ("er_exp", "agem")
SHARD_SEEDS = (3, 3, 4)  # the same seed twice, then another


def _shard_recorder(all_rows: bool = False):
    from avalanche.core import SupervisedPlugin

    class Rec(SupervisedPlugin):
        """The clip ids of every training step (current rows, or every row), per epoch."""

        def __init__(self):
            super().__init__()
            self.epochs: dict[int, list[int]] = {}

        def after_training_iteration(self, strategy, **kw):
            ids = strategy.mb_clip_id.tolist() if all_rows else \
                strategy.mb_clip_id_host[: strategy.mb_n_current].tolist()
            self.epochs.setdefault(int(strategy.clock.train_exp_epochs), []).extend(int(i) for i in ids)

    return Rec()


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

    for name in OTHER_MEMORIES:
        strategy = _online(name, memory_share(MEM))
        strategy.train(stream.train_stream[0])
        torch.save(_memory(strategy), out / f"memory_{name}_{r}.pt")
        save_checkpoint(out / f"ck_{name}.pt", strategy)

    for name in GLOBAL_MEMORIES:
        strategy = _online(name, MEM)  # the whole memory on every rank
        torch.manual_seed(100 + r)  # as a run does (seed + rank): the ranks' global RNGs differ
        strategy.train(stream.train_stream[0])
        torch.save(strategy.plugins[0].state_dict(), out / f"global_{name}_{r}.pt")
        save_checkpoint(out / f"ck_{name}.pt", strategy)

    # er_exp replays through Avalanche's ReplayDataLoader (from the second experience on)
    recs = [_shard_recorder(all_rows=True), _shard_recorder(all_rows=True)]
    strategy = _online("er_exp", MEM)
    strategy.shard_seed = 3
    for exp, rec, epochs in ((0, recs[0], 1), (1, recs[1], 3)):
        strategy.plugins.append(rec)
        strategy.train_epochs = epochs
        strategy.train(stream.train_stream[exp])
        strategy.plugins.remove(rec)
    torch.save([rec.epochs for rec in recs], out / f"replay_shards{r}.pt")

    # A-GEM's memory sampler over an 8-clip memory: 2 clips per batch and rank, 2 passes
    from avalanche_av.training.plugins import SeededGroupBalancedInfiniteDataLoader

    memory = stream.train_stream[0].dataset.subset(list(range(8)))
    samples = []
    for seed in SHARD_SEEDS:
        it = iter(SeededGroupBalancedInfiniteDataLoader([memory], batch_size=2, seed=seed))
        samples.append([next(it)[3].tolist() for _ in range(4)])
    torch.save(samples, out / f"memory_sampler{r}.pt")

    shards = []
    for seed in SHARD_SEEDS:
        rec = _shard_recorder()
        torch.manual_seed(0)
        strategy = _strategy(FixedMaskAVMAE(get_config("tiny")), [rec], mb=3)
        strategy.train_epochs = 3
        strategy.shard_seed = seed
        strategy.train(stream.train_stream[0])
        shards.append(rec.epochs)
    torch.save(shards, out / f"shards{r}.pt")


def _three_ranks(ctx, out: Path) -> None:
    from avalanche_av.training.checkpoint import load_checkpoint, save_checkpoint
    from avalanche_av.training.distributed import memory_share

    stella = _stella(memory_share(MEM))
    load_checkpoint(out / "ck.pt", stella)
    torch.save(_memory(stella), out / f"memory3_{ctx.rank}.pt")
    stella.train(_stream().train_stream[1])  # the resumed ranks train together
    save_checkpoint(out / "ck3.pt", stella)
    for name in OTHER_MEMORIES:
        strategy = _online(name, memory_share(MEM))
        load_checkpoint(out / f"ck_{name}.pt", strategy)
        loaded = _memory(strategy)
        strategy.train(_stream().train_stream[1])
        torch.save({"loaded": loaded, "trained": _memory(strategy)}, out / f"memory3_{name}_{ctx.rank}.pt")
    for name in GLOBAL_MEMORIES:
        strategy = _online(name, MEM)
        load_checkpoint(out / f"ck_{name}.pt", strategy)
        loaded = strategy.plugins[0].state_dict()
        strategy.train(_stream().train_stream[1])
        torch.save({"loaded": loaded, "trained": strategy.plugins[0].state_dict()},
                   out / f"global3_{name}_{ctx.rank}.pt")


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


def _rows_by_clip(parts) -> dict[int, dict[str, torch.Tensor]]:
    """Every stored row of ``parts`` (memories), by clip id, with all its fields."""
    out = {}
    for p in parts:
        for i, c in enumerate(p["clip_id"].tolist()):
            out[int(c)] = {k: v[i] for k, v in p["fields"].items()}
    return out


def _same_rows(got: dict, want: dict, where: str) -> None:
    assert sorted(got) == sorted(want), where
    for c in want:
        for k in want[c]:
            assert torch.equal(got[c][k], want[c][k]), f"{where}: field {k} of clip {c} moved away from its clip"


@pytest.mark.parametrize("name", OTHER_MEMORIES)
def test_every_online_memory_resumes_on_one_and_three_ranks_keeping_every_clip_once(two_ranks, name):
    from avalanche_av.training.checkpoint import load_checkpoint

    saved = [torch.load(two_ranks / f"memory_{name}_{r}.pt", weights_only=True) for r in range(2)]
    stored = _clip_ids(saved)
    assert len(stored) == MEM and len(set(stored)) == MEM  # 3 per rank, each rank full
    want = _rows_by_clip(saved)
    assert len(want[stored[0]]) >= 2  # a field besides the clip id (frames, embeddings, patches ...)

    one = _online(name, MEM)
    load_checkpoint(two_ranks / f"ck_{name}.pt", one)
    mem = _memory(one)
    _same_rows(_rows_by_clip([mem]), want, f"{name} on 1 rank")
    seen = sum(m["n_seen"] for m in saved)
    # ESMER keeps its high-loss clips out of memory, so it may count fewer than the 12 offered
    assert seen == 12 or (name == "esmer" and MEM <= seen <= 12)
    assert mem["capacity"] == MEM and mem["n_seen"] == seen

    if not (two_ranks / f"memory3_{name}_0.pt").exists():  # the first of these tests starts the 3 ranks
        _spawn(_three_ranks, 3, two_ranks)
    parts = [torch.load(two_ranks / f"memory3_{name}_{r}.pt", weights_only=True) for r in range(3)]
    loaded = [p["loaded"] for p in parts]
    _same_rows(_rows_by_clip(loaded), want, f"{name} on 3 ranks")
    assert [p["capacity"] for p in loaded] == [2, 2, 2]
    counts = [p["n_seen"] for p in loaded]  # split in proportion to the clips each rank holds
    assert sum(counts) == seen and max(counts) - min(counts) <= 1
    # and they train on: 4 more clips per rank (ESMER may keep some out), each memory full at its share
    trained = [p["trained"] for p in parts]
    for before, after in zip(loaded, trained):
        assert after["n_seen"] == before["n_seen"] + 4 or (name == "esmer" and before["n_seen"] <= after["n_seen"])
    assert [len(p["clip_id"]) for p in trained] == [2, 2, 2]
    assert len(set(_clip_ids(trained))) == 6


def test_training_shards_are_disjoint_reshuffled_every_epoch_and_fixed_by_the_seed(two_ranks):
    ranks = [torch.load(two_ranks / f"shards{r}.pt", weights_only=True) for r in range(2)]
    first = ranks[0][0][0] + ranks[1][0][0]
    everything = sorted(first)
    assert len(set(everything)) == len(_stream().train_stream[0].dataset) == 12
    orders = []
    for run in range(len(SHARD_SEEDS)):
        epochs = [ranks[r][run] for r in range(2)]
        assert sorted(epochs[0]) == sorted(epochs[1]) == [0, 1, 2]
        per_epoch = []
        for e in range(3):
            a, b = epochs[0][e], epochs[1][e]
            assert len(a) == len(b) == 6 and not set(a) & set(b)  # disjoint halves
            assert sorted(a + b) == everything  # 12 clips, 2 ranks: none left out
            per_epoch.append((tuple(a), tuple(b)))
        assert len(set(per_epoch)) == 3  # a new split every epoch
        orders.append(per_epoch)
    assert orders[0] == orders[1]  # the same seed: the same shards, epoch by epoch
    assert orders[2] != orders[0] and orders[2][0] != orders[0][0]  # another seed: other shards


def _stored(name: str, state: dict) -> list[tuple[int, int]]:
    """(experience, index) of every clip a global memory's state holds."""
    if name == "er_exp":
        return sorted(tuple(int(x) for x in row) for row in state["origin"])
    return sorted((int(e), int(i)) for e, idx in state["memory_indices"] for i in idx)


@pytest.mark.parametrize("name", GLOBAL_MEMORIES)
def test_global_memories_are_the_same_on_every_rank_and_resume_on_one_and_three(two_ranks, name):
    from avalanche_av.training import memory_scope
    from avalanche_av.training.checkpoint import load_checkpoint

    assert memory_scope(name) == "global"
    ranks = [torch.load(two_ranks / f"global_{name}_{r}.pt", weights_only=True) for r in range(2)]
    want = _stored(name, ranks[0])
    assert _stored(name, ranks[1]) == want  # one memory, held by every rank
    # the whole --mem-size on each rank (A-GEM: mem_size // 2 experiences, after the first)
    assert len(want) == len(set(want)) == (MEM if name == "er_exp" else MEM // 2)
    assert {e for e, _ in want} == {0}

    one = _online(name, MEM)
    load_checkpoint(two_ranks / f"ck_{name}.pt", one)
    assert _stored(name, one.plugins[0].state_dict()) == want
    one.train(_stream().train_stream[1])  # rebuilt from the stream, and it trains on
    after_one = _stored(name, one.plugins[0].state_dict())
    assert len(after_one) == (MEM if name == "er_exp" else 2 * (MEM // 2))
    assert {e for e, _ in after_one} <= {0, 1}

    if not (two_ranks / f"global3_{name}_0.pt").exists():
        _spawn(_three_ranks, 3, two_ranks)
    parts = [torch.load(two_ranks / f"global3_{name}_{r}.pt", weights_only=True) for r in range(3)]
    assert all(_stored(name, p["loaded"]) == want for p in parts)
    after = [_stored(name, p["trained"]) for p in parts]
    assert after[0] == after[1] == after[2] and len(after[0]) == len(after_one)  # still one memory
    if name == "agem":  # the first experience's clips stay; the second adds its own draw
        assert [x for x in after[0] if x[0] == 0] == want and sum(e == 1 for e, _ in after[0]) == MEM // 2


def test_each_rank_holds_its_share_of_a_rank_memory_and_all_of_a_global_one():
    from avalanche_av.experiment import RunConfig, _rank_mem_size
    from avalanche_av.training.distributed import DistributedContext

    for strategy, want in (("er", [4, 3, 3]), ("stella", [4, 3, 3]), ("er_exp", [10, 10, 10]), ("agem", [10] * 3)):
        cfg = RunConfig(strategy=strategy, mem_size=10)
        got = [_rank_mem_size(cfg, DistributedContext(rank=r, local_rank=r, world_size=3, backend="gloo"))
               for r in range(3)]
        assert got == want, strategy
        assert _rank_mem_size(cfg, DistributedContext()) == 10  # one process: the whole memory


def test_er_exp_replay_loader_splits_experience_and_memory_anew_every_epoch(two_ranks):
    ranks = [torch.load(two_ranks / f"replay_shards{r}.pt", weights_only=True) for r in range(2)]
    first = set(ranks[0][0][0]) | set(ranks[1][0][0])  # the first experience's clips
    assert len(first) == 12
    seen = []
    for e in range(3):
        rows = [ranks[r][1][e] for r in range(2)]
        current = [[c for c in x if c not in first] for x in rows]
        assert len(current[0]) == len(current[1]) == 6 and not set(current[0]) & set(current[1])
        # each step: 3 current rows, then 3 memory rows; the memory (6 clips) is split anew for
        # every pass over it (Avalanche bumps the sampler's epoch when it oversamples)
        for step in range(2):
            memory = [set(x[6 * step + 3: 6 * step + 6]) for x in rows]
            assert memory[0] | memory[1] <= first and len(memory[0] | memory[1]) == MEM  # disjoint halves
        seen.append((tuple(current[0]), tuple(current[1])))
    assert len(set(seen)) == 3  # Avalanche's own loader would repeat the same split every epoch


def test_agem_memory_sampler_splits_each_pass_between_ranks_and_follows_the_seed(two_ranks):
    ranks = [torch.load(two_ranks / f"memory_sampler{r}.pt", weights_only=True) for r in range(2)]
    passes = []
    for run in range(len(SHARD_SEEDS)):
        per_pass = []
        for p in range(2):  # 8 clips, 2 ranks, 2 per batch: a pass is 2 batches per rank
            a = ranks[0][run][2 * p] + ranks[0][run][2 * p + 1]
            b = ranks[1][run][2 * p] + ranks[1][run][2 * p + 1]
            assert len(set(a)) == len(set(b)) == 4 and not set(a) & set(b)  # disjoint halves
            per_pass.append((tuple(a), tuple(b)))
        assert sorted(per_pass[0][0] + per_pass[0][1]) == sorted(per_pass[1][0] + per_pass[1][1])  # the memory
        assert per_pass[0] != per_pass[1]  # each pass splits the memory anew
        passes.append(per_pass)
    assert passes[0] == passes[1]  # the same seed: the same samples
    assert passes[2][0] != passes[0][0]  # another seed: another split (Avalanche's would be seed 0's)
