"""Composing memory plugins: ER + DER++ together, an injected storage policy, and Avalanche's
ReplayPlugin reading our buffers. Runs in about a minute on 2 CPU cores.

    python examples/memory_plugins.py
"""
import torch
from avalanche.training.plugins import ReplayPlugin

from avalanche_av.benchmarks import sounding_objects
from avalanche_av.evaluation import av_evaluator
from avalanche_av.models import create_model
from avalanche_av.training import AVPretraining, default_optimizer
from avalanche_av.training.plugins import DERPlugin, OnlineReplayPlugin, StellaPlugin
from avalanche_av.training.storage_policy import OnlineReservoirBuffer, StellaBuffer

bench = sounding_objects(seed=0, n_tasks=2, classes_per_task=2, train_clips_per_class=16, eval_clips_per_class=4)


def strategy_with(plugins):
    torch.manual_seed(0)
    model = create_model("tiny")
    return AVPretraining(model=model, optimizer=default_optimizer(model, lr=1e-3), train_mb_size=8,
                         train_epochs=1, device="cpu", plugins=plugins, evaluator=av_evaluator(loggers=[]))


# 1. Two online memories in one strategy: each replays its own clips and stores only current ones.
er = OnlineReplayPlugin(mem_size=16, seed=1)
der = DERPlugin(mem_size=16, seed=2, storage_policy=OnlineReservoirBuffer(16))  # injected policy
strategy_with([er, der]).train(bench.train_stream[0])
print(f"ER  memory {len(er.storage)} clips, saw {er.storage.n_seen}; DER++ memory {len(der.storage)}, saw {der.storage.n_seen}")

# 2. STELLA+ with an injected StellaBuffer; Avalanche's ReplayPlugin can read what it stores.
stella = StellaPlugin(storage_policy=StellaBuffer(24, store_patches=True))
strategy_with([stella]).train(bench.train_stream[0])
view = ReplayPlugin(mem_size=24, storage_policy=stella.storage).storage_policy.buffer
patches_a, idx_a, patches_v, idx_v, target, clip_id, task = view[0]
print(f"STELLA+ memory: {len(view)} samples, {stella.memory_bytes_per_sample()} bytes each; "
      f"sample 0 holds {tuple(patches_a.shape)} audio and {tuple(patches_v.shape)} video patches")

# 3. Our online buffer under Avalanche's own per-experience ReplayPlugin.
replay = ReplayPlugin(mem_size=16, storage_policy=OnlineReservoirBuffer(16))
s = strategy_with([replay])
for exp in bench.train_stream:
    s.train(exp)
print(f"ReplayPlugin + OnlineReservoirBuffer: {len(replay.storage_policy.buffer)} clips after {len(bench.train_stream)} experiences")
