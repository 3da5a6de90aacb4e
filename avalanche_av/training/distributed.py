"""Multi-process training on PyTorch's own engine: ``torchrun``, ``torch.distributed``, ``DistributedSampler``.

``torchrun --nproc_per_node=N -m avalanche_av.cli run ...`` starts ``N`` processes (ranks) with
``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` in their
environment. :func:`distributed_session` turns that environment into a process group (gloo on
CPU, nccl on CUDA, one GPU per local rank) and tears it down at the end; without that
environment (or with ``WORLD_SIZE=1``) it does nothing and the run is the plain single-process
one, bit for bit. ``docs/distributed.md`` is the user's guide; this module is its mechanics:

* **Data.** Each rank reads a disjoint shard of every experience (:func:`sharded_loader`:
  a ``DistributedSampler`` seeded by the run seed and the experience, reshuffled every epoch
  with ``set_epoch``). Training shards drop the last ``len % N`` clips of each epoch's
  permutation (a different few every epoch) rather than padding, so no clip is trained, or
  offered to a memory, twice in one epoch. Evaluation shards pad (every clip is evaluated); the
  retrieval metric gathers the rows of every rank and removes the padding by dataset index.
* **Gradients.** Gradients of every parameter the optimizer holds (the backbone and parameters
  that live outside it, such as STELLA's AVM) are averaged over ranks after ``backward``
  (:func:`sync_gradients`, bucketed all-reduces), so every rank takes the same optimizer step.
  We do not wrap the model in ``DistributedDataParallel``: plugins call model methods other
  than ``forward`` (scoring passes, ``embed``, functional virtual steps) and keep trainable
  modules outside the model, which DDP's reducer does not see. The price is that the
  all-reduce runs after the backward instead of overlapping with it.
* **Contrastive negatives** come from every rank (:mod:`avalanche_av.models.distributed`).
* **Memories** are per-rank reservoirs over each rank's stream; ``mem_size`` is the total over
  ranks (:func:`memory_share`). A checkpoint merges them (:func:`merge_rank_states`) and a
  resume re-shards them (:func:`shard_rank_state`), also onto another number of ranks.
* **Output.** Only rank 0 logs, draws progress bars and writes files (:func:`is_main_process`).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from ..models.distributed import is_distributed, rank, world_size

__all__ = [
    "DistributedContext",
    "distributed_session",
    "torchrun_env",
    "is_distributed",
    "is_main_process",
    "rank",
    "world_size",
    "memory_share",
    "all_ranks",
    "sync_gradients",
    "broadcast_parameters",
    "sharded_loader",
    "set_loader_epoch",
    "check_plugins_for_distributed",
    "all_gather_objects",
    "merge_rank_states",
    "shard_rank_state",
    "seed_all",
]

#: Elements per gradient all-reduce bucket (100 MB of fp32), as DDP's default bucket size.
BUCKET_NUMEL = 25_000_000

_CPU_GROUP: Any = None  # gloo group for object collectives when the default group is nccl
_STORE: Any = None  # the rendezvous store of torchrun's env://, kept for the life of the process
_SESSIONS = 0  # process groups this process has created (the same count on every rank)


@dataclass(frozen=True)
class DistributedContext:
    """What a process knows about the run's process group.

    Attributes:
        rank, local_rank, world_size: torchrun's numbering (0, 0, 1 in a single process).
        backend: ``'gloo'`` / ``'nccl'``, or ``None`` in a single process.
        device: the device this rank trains on (``cuda:<local_rank>`` on GPUs), or ``None``
            to keep the caller's choice (single process).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: Optional[str] = None
    device: Optional[str] = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def torchrun_env() -> Optional[tuple[int, int, int]]:
    """``(rank, local_rank, world_size)`` from torchrun's environment, or ``None`` without one
    (or with ``WORLD_SIZE=1``).

    Raises:
        ValueError: a variable that is not an integer, or a rank outside the world.
    """
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        world = int(os.environ["WORLD_SIZE"])
        rk = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rk)))
    except ValueError:
        raise ValueError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them); got "
                         f"{os.environ.get('WORLD_SIZE')!r}, {os.environ.get('RANK')!r}, "
                         f"{os.environ.get('LOCAL_RANK')!r}") from None
    if world < 1 or not 0 <= rk < world or local < 0:
        raise ValueError(f"RANK={rk} / LOCAL_RANK={local} do not fit WORLD_SIZE={world}")
    return None if world == 1 else (rk, local, world)


def _rank_device(device: Optional[str], local_rank: int, world: int) -> tuple[str, str]:
    """``(device, backend)`` for one rank of a multi-process run."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cpu":
        return "cpu", "gloo"
    if dev.type == "cuda":
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise ValueError(f"--device {device or 'cuda'}: local rank {local_rank} needs GPU {local_rank} but this "
                             f"node has {n}; start at most {n} processes per node (torchrun --nproc_per_node)")
        if dev.index is not None and dev.index != local_rank and world > 1:
            warnings.warn(f"--device {device}: with several ranks each uses the GPU of its local rank "
                          f"(cuda:{local_rank} here)")
        return f"cuda:{local_rank}", "nccl"
    raise ValueError(f"--device {device}: multi-process runs support cpu (gloo) and cuda (nccl), not {dev.type}")


@contextlib.contextmanager
def distributed_session(device: Optional[str] = None, backend: Optional[str] = None) -> Iterator[DistributedContext]:
    """The process group of this run, from torchrun's environment; a no-op in a single process.

    Creates the default group when torchrun started several ranks and none exists yet (gloo for
    CPU, nccl for CUDA with ``cuda:<LOCAL_RANK>`` as this rank's device), and destroys it on
    exit. A group that already exists (created by the caller, or by an enclosing session) is
    used as it is and left alone. Sessions nest, so ``compare`` can hold one group across runs.

    Args:
        device: the run's ``--device`` (``None``: CUDA when available).
        backend: override the backend (default: from the device).

    Yields:
        The :class:`DistributedContext` of this process.
    """
    global _CPU_GROUP
    if dist.is_available() and dist.is_initialized():
        rk, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rk))
        dev = _rank_device(device, local, world)[0] if world > 1 else None
        yield DistributedContext(rk, local, world, dist.get_backend(), dev)
        return
    env = torchrun_env()
    if env is None:
        yield DistributedContext()
        return
    rk, local, world = env
    dev, default_backend = _rank_device(device, local, world)
    if dev.startswith("cuda"):
        torch.cuda.set_device(torch.device(dev))
    _init_group(backend or default_backend, rk, world)
    try:
        yield DistributedContext(rk, local, world, dist.get_backend(), dev)
    finally:
        _CPU_GROUP = None
        dist.destroy_process_group()


def _init_group(backend: str, rk: int, world: int) -> None:
    """The default process group, on torchrun's env:// store under a prefix of its own.

    A process may create several groups one after the other (``compare`` runs one per method
    and seed). Re-initialising on env:// directly reuses the same store keys, so a rank that
    arrives early can read the keys of the group just destroyed and wait forever; a fresh prefix
    per group (the same sequence on every rank) rules that out, and the store itself is created
    once.
    """
    global _STORE, _SESSIONS
    if _STORE is None:
        _STORE = next(dist.rendezvous("env://", rank=rk, world_size=world))[0]
    _SESSIONS += 1
    store = dist.PrefixStore(f"avalanche_av/group{_SESSIONS}", _STORE)
    dist.init_process_group(backend=backend, store=store, rank=rk, world_size=world)


def is_main_process() -> bool:
    """True on rank 0, in a single process, and (outside a process group) where torchrun's
    ``RANK`` is 0 or unset: the process that logs and writes files."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def memory_share(total: int, rank_: Optional[int] = None, world: Optional[int] = None) -> int:
    """This rank's part of a memory of ``total`` clips: ``total // N``, plus one on the first
    ``total % N`` ranks (the parts add up to ``total``; the whole ``total`` in a single process)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    return total // world + (1 if rank_ < total % world else 0)


def all_ranks(flag: torch.Tensor) -> torch.Tensor:
    """``flag`` (a bool tensor) and-ed over ranks; ``flag`` itself in a single process.

    Decisions that change which collectives run (skip a step's backward) must be the same on
    every rank, or the ranks wait for each other forever.
    """
    if not is_distributed():
        return flag
    t = flag.detach().to(torch.int32).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.reshape(flag.shape).bool() if flag.dim() else t[0].bool()


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _buckets(params: Sequence[torch.Tensor], numel: int) -> list[list[torch.Tensor]]:
    out: list[list[torch.Tensor]] = [[]]
    n = 0
    for p in params:
        if n and n + p.numel() > numel:
            out.append([])
            n = 0
        out[-1].append(p)
        n += p.numel()
    return [b for b in out if b]


def sync_gradients(optimizer: torch.optim.Optimizer, bucket_numel: int = BUCKET_NUMEL) -> None:
    """Average the gradients of every parameter ``optimizer`` holds over all ranks.

    A parameter without a gradient on some rank counts as zero there; it gets the average only
    if at least one rank had a gradient for it (so a parameter no rank used keeps ``grad=None``,
    as in a single process). No-op in a single process.
    """
    if not is_distributed():
        return
    world = dist.get_world_size()
    by_kind: dict[tuple, list[torch.Tensor]] = {}
    for p in _optimizer_params(optimizer):
        by_kind.setdefault((p.device, p.dtype), []).append(p)
    for (device, dtype), params in by_kind.items():
        has = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=device)
        buckets = _buckets(params, bucket_numel)
        flats, works = [], []
        for i, bucket in enumerate(buckets):
            parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket]
            if i == len(buckets) - 1:
                parts.append(has)  # which ranks had a gradient, in the same all-reduce
            flat = torch.cat(parts)
            flats.append(flat)
            works.append(dist.all_reduce(flat, async_op=True))
        for w in works:
            w.wait()
        present = None
        if any(p.grad is None for p in params):
            present = (flats[-1][-len(params):] > 0).tolist()
        j = 0
        for bucket, flat in zip(buckets, flats):
            flat.div_(world)
            off = 0
            for p in bucket:
                g = flat[off: off + p.numel()].view_as(p)
                off += p.numel()
                if p.grad is not None:
                    p.grad.copy_(g)
                elif present is not None and present[j]:
                    p.grad = g.clone()
                j += 1


def broadcast_parameters(tensors: Iterable[torch.Tensor], src: int = 0, bucket_numel: int = BUCKET_NUMEL) -> None:
    """Copy rank ``src``'s values of ``tensors`` (parameters, buffers) to every rank."""
    if not is_distributed():
        return
    by_kind: dict[tuple, list[torch.Tensor]] = {}
    seen: set[int] = set()
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            by_kind.setdefault((t.device, t.dtype), []).append(t)
    with torch.no_grad():
        for tensors_ in by_kind.values():
            for bucket in _buckets(tensors_, bucket_numel):
                flat = torch.cat([t.detach().reshape(-1) for t in bucket])
                dist.broadcast(flat, src)
                off = 0
                for t in bucket:
                    t.copy_(flat[off: off + t.numel()].view_as(t))
                    off += t.numel()


def sharded_loader(dataset, batch_size: int, *, train: bool, seed: int = 0, num_workers: int = 0,
                   pin_memory: Optional[bool] = None, persistent_workers: bool = False, drop_last: bool = False,
                   device: Optional[torch.device] = None, **_ignored) -> DataLoader:
    """This rank's loader over ``dataset``: a ``DistributedSampler`` shard.

    Training (``train=True``): shuffled with ``seed`` (call :func:`set_loader_epoch` before each
    epoch to reshuffle), each rank gets ``len // N`` clips of the permutation (the last
    ``len % N`` are left out for that epoch). Evaluation: in order, padded to a multiple of ``N``
    by repeating the first clips (the sampler's indices tell the padding apart).
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=train, seed=seed,
                                 drop_last=train)
    if pin_memory is None:
        pin_memory = device is not None and torch.device(device).type == "cuda"
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0, drop_last=drop_last,
        collate_fn=getattr(dataset, "collate_fn", None),
    )


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """``set_epoch`` on the loader's ``DistributedSampler`` (a new shuffle per epoch), or on the
    loader itself where it has one (the replay loader of ``er_exp``); no-op otherwise."""
    if callable(getattr(loader, "set_epoch", None)):
        loader.set_epoch(epoch)
        return
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


def check_plugins_for_distributed(plugins: Sequence[Any]) -> bool:
    """Warn once about plugins not checked for multi-process training; True if there are none.

    Replaces Avalanche's check, which flags every plugin without ``supports_distributed``,
    evaluators and our memories included. Checked here: the evaluator (retrieval gathers every
    rank's embeddings; other metrics are per rank), every online memory (a per-rank reservoir),
    and plugins that declare ``supports_distributed``.
    """
    from avalanche.training.plugins import EvaluationPlugin  # noqa: PLC0415

    if not is_distributed():
        return True
    bad = []
    for p in plugins:
        checked = getattr(p, "supports_distributed", False) or isinstance(p, EvaluationPlugin)
        # online memories (ER, DER++, STELLA, ...) carry a storage with reservoir counters
        checked = checked or hasattr(getattr(p, "storage", None), "n_seen")
        if not checked:
            bad.append(type(p).__name__)
    if bad and rank() == 0:
        warnings.warn(f"plugins not checked for multi-process training (each rank runs them on its own shard; "
                      f"their state is saved from every rank): {', '.join(sorted(set(bad)))}")
    return not bad


# --------------------------------------------------------------------------- objects
def _cpu_group():
    """A gloo group for object collectives (pickled checkpoint parts stay in host memory)."""
    global _CPU_GROUP
    if dist.get_backend() == "gloo":
        return None
    if _CPU_GROUP is None:
        _CPU_GROUP = dist.new_group(backend="gloo")
    return _CPU_GROUP


def all_gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_cpu_group())
    return out


def _gather_to_main(obj: Any) -> Optional[list[Any]]:
    out: Optional[list[Any]] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0, group=_cpu_group())
    return out


def _to_cpu(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_to_cpu(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_to_cpu(v) for v in x)
    return x


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and bool(torch.equal(a, b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# --------------------------------------------------------------------------- checkpoints
def _is_memory_state(state: Any) -> bool:
    """A plugin state holding an online memory (``OnlineMemoryPlugin.state_dict``)."""
    return (isinstance(state, dict) and isinstance(state.get("storage"), dict)
            and isinstance(state["storage"].get("store"), dict) and "fields" in state["storage"]["store"])


def _counters(storage: dict) -> dict:
    s = storage["store"]
    return {"capacity": int(s["capacity"]), "size": int(s["size"]), "n_seen": int(s["n_seen"]),
            "max_size": int(storage["max_size"]), "generator": storage["generator"]}


def _merge_storages(storages: list[dict]) -> dict:
    """One memory holding every rank's stored samples, rank after rank (a valid single-process
    memory: capacity and ``max_size`` are the totals)."""
    counters = [_counters(s) for s in storages]
    names: list[str] = []
    for s in storages:
        if s["store"]["fields"]:
            names = list(s["store"]["fields"])
            break
    fields = {n: torch.cat([s["store"]["fields"][n] for s in storages if int(s["store"]["size"]) > 0])
              for n in names}
    capacity = sum(c["capacity"] for c in counters)
    size = sum(c["size"] for c in counters)
    n_seen = sum(c["n_seen"] for c in counters)
    # The reservoir's invariant is size == min(capacity, n_seen): a memory not yet full counts
    # exactly what it holds. The per-rank counts stay in the "world" section.
    return {
        "store": {"capacity": capacity, "size": size, "n_seen": n_seen if size >= capacity else size,
                  "fields": fields},
        "generator": storages[0]["generator"],
        "max_size": sum(c["max_size"] for c in counters),
    }


def merge_rank_states(state: dict) -> Optional[dict]:
    """Merge every rank's checkpoint state into one; every rank calls it, rank 0 gets the result.

    The model, optimizer, scaler and clock are the same on every rank (gradients are averaged)
    and are taken from rank 0. Per rank, ``state["world"]["ranks"][r]`` keeps the global RNG
    states, each memory's counters (stored clips, ``n_seen``, capacity, sampling generator) and
    each plugin's other state where it differs from rank 0's (``None`` where equal). Memory
    fields are concatenated rank after rank into ``state["plugins"][key]["storage"]``, so the
    file also loads as a single-process checkpoint of the whole memory.

    Returns:
        The merged state on rank 0, ``None`` on other ranks; ``state`` itself in a single process.
    """
    if not is_distributed():
        return state
    gathered = _gather_to_main(_to_cpu({"plugins": state["plugins"], "rng": state["rng"]}))
    if gathered is None:
        return None
    merged = dict(state)
    plugins: dict = {}
    ranks: list[dict] = []
    base = {}
    for key, st0 in gathered[0]["plugins"].items():
        if _is_memory_state(st0):
            plugins[key] = {**st0, "storage": _merge_storages([g["plugins"][key]["storage"] for g in gathered])}
            base[key] = {k: v for k, v in st0.items() if k != "storage"}
        else:
            plugins[key] = st0
            base[key] = st0
    for r, g in enumerate(gathered):
        entry: dict = {"rng": g["rng"], "plugins": {}, "memories": {}}
        for key, st in g["plugins"].items():
            rest = st
            if _is_memory_state(st):
                entry["memories"][key] = _counters(st["storage"])
                rest = {k: v for k, v in st.items() if k != "storage"}
            entry["plugins"][key] = None if r == 0 or _equal(rest, base.get(key)) else rest
        ranks.append(entry)
    merged["plugins"] = plugins
    merged["rng"] = gathered[0]["rng"]
    merged["world"] = {"size": len(gathered), "ranks": ranks}
    return merged


def _deal(sizes: list[int], new_world: int) -> list[list[int]]:
    """Positions (in the rank-after-rank order) of the stored samples each new rank gets.

    The old ranks' samples are interleaved slot by slot (rank 0 slot 0, rank 1 slot 0, ...,
    rank 0 slot 1, ...) and dealt round-robin, so every new rank gets a mix of the old ranks and
    counts that differ by at most one.
    """
    offsets = np.cumsum([0, *sizes])
    order = [int(offsets[i]) + j for j in range(max(sizes, default=0)) for i in range(len(sizes)) if j < sizes[i]]
    return [order[r::new_world] for r in range(new_world)]


def _split_seen(total_seen: int, held: list[int], caps: list[int]) -> list[int]:
    """Stream counts of the new ranks: ``total_seen`` split in proportion to the clips each holds
    (largest remainder), except that a rank whose memory is not full counts what it holds."""
    k = sum(held)
    if k == 0:
        return [0] * len(held)
    exact = [total_seen * h / k for h in held]
    out = [int(e) for e in exact]
    for i in sorted(range(len(held)), key=lambda i: (out[i] - exact[i], i))[: total_seen - sum(out)]:
        out[i] += 1
    return [h if h < c else max(c, n) for n, h, c in zip(out, held, caps)]


def _derived_seed(generator_state: torch.Tensor, r: int) -> int:
    g = torch.Generator()
    g.set_state(generator_state)
    return int(torch.randint(0, 2**62, (1,), generator=g)) + r


def _shard_storage(merged: dict, counters: list[dict], r: int, new_world: int) -> dict:
    fields = merged["store"]["fields"]
    sizes = [c["size"] for c in counters]
    old_world = len(counters)
    if new_world == old_world:  # the same ranks: each gets its own memory back, exactly
        off = sum(sizes[:r])
        c = counters[r]
        part = {n: t[off: off + c["size"]].clone() for n, t in fields.items()}
        return {"store": {"capacity": c["capacity"], "size": c["size"], "n_seen": c["n_seen"], "fields": part},
                "generator": c["generator"], "max_size": c["max_size"]}
    total_cap = sum(c["capacity"] for c in counters)
    total_max = sum(c["max_size"] for c in counters)
    dealt = _deal(sizes, new_world)
    caps = [memory_share(total_cap, i, new_world) for i in range(new_world)]
    seen = _split_seen(sum(c["n_seen"] for c in counters), [len(d) for d in dealt], caps)
    idx = torch.tensor(dealt[r], dtype=torch.long)
    part = {n: t[idx].clone() for n, t in fields.items()}
    gen = counters[r]["generator"] if r < old_world else \
        torch.Generator().manual_seed(_derived_seed(counters[0]["generator"], r)).get_state()
    return {"store": {"capacity": caps[r], "size": len(dealt[r]), "n_seen": seen[r], "fields": part},
            "generator": gen, "max_size": memory_share(total_max, r, new_world)}


def shard_rank_state(state: dict, rank_: Optional[int] = None, world: Optional[int] = None) -> dict:
    """This rank's part of a checkpoint state, for any number of ranks.

    * Saved and loaded with the same number of ranks: every rank gets back exactly its memory,
      counters, generator, plugin state and RNG states (an exact continuation).
    * Another number of ranks (or a single-process file loaded by several ranks, or a
      multi-rank file loaded by one): the stored samples of every memory are dealt round-robin
      (:func:`_deal`), each kept exactly once; capacities are :func:`memory_share` of the total;
      ``n_seen`` is split in proportion to the clips each rank gets (a rank whose memory is not
      full counts what it holds). New rank ``r`` keeps old rank ``r``'s sampling generator, RNG
      states and plugin state; ranks beyond the old world take rank 0's plugin state and fresh
      generators and RNGs seeded from rank 0's (``state["rng_reseed"]``, applied by
      :func:`~avalanche_av.training.checkpoint.load_checkpoint`).

    A single-process state loaded in a single process is returned unchanged.
    """
    r = rank() if rank_ is None else rank_
    new_world = world_size() if world is None else world
    info = state.get("world")
    if info is None:
        if new_world == 1:
            return state
        info = {"size": 1, "ranks": [{
            "rng": state["rng"], "plugins": {k: None for k in state["plugins"]},
            "memories": {k: _counters(st["storage"]) for k, st in state["plugins"].items() if _is_memory_state(st)},
        }]}
    old_world = int(info["size"])
    src = r if r < old_world else 0
    out = {k: v for k, v in state.items() if k != "world"}
    plugins = {}
    for key, st in state["plugins"].items():
        rest = info["ranks"][src]["plugins"].get(key)
        memories = [info["ranks"][i]["memories"].get(key) for i in range(old_world)]
        if rest is None:
            rest = {k: v for k, v in st.items() if k != "storage"} if _is_memory_state(st) else st
        if _is_memory_state(st) and all(m is not None for m in memories):
            plugins[key] = {**rest, "storage": _shard_storage(st["storage"], memories, r, new_world)}
        else:
            plugins[key] = rest
    out["plugins"] = plugins
    out["rng"] = info["ranks"][src]["rng"]
    if r >= old_world:
        out["rng_reseed"] = _derived_seed(info["ranks"][0]["rng"]["torch"], r)
    return out


def seed_all(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and every CUDA device) global RNGs."""
    import random  # noqa: PLC0415

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
