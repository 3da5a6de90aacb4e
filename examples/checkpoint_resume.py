"""Checkpoint a run after each experience and resume it (weights_only-safe files).

The checkpoint also records the settings the run was made with, and the resumed process
refuses to continue with different ones (what ``avalanche-av run --resume`` does with its
whole run config; see docs/reliability.md).

    python examples/checkpoint_resume.py
"""
import json
from pathlib import Path

from avalanche_av.benchmarks import sounding_objects
from avalanche_av.evaluation import av_evaluator
from avalanche_av.models import create_model
from avalanche_av.training import AVPretraining, default_optimizer, load_checkpoint, save_checkpoint
from avalanche_av.training.checkpoint import read_checkpoint
from avalanche_av.training.plugins import StellaPlugin

SETTINGS = {"model": "tiny", "lr": 1e-3, "mem_size": 16, "epochs": 2, "seed": 0}


def make_strategy(s):
    model = create_model(s["model"])
    return AVPretraining(model=model, optimizer=default_optimizer(model, lr=s["lr"]), train_mb_size=16,
                         train_epochs=s["epochs"], evaluator=av_evaluator(loggers=[]),
                         plugins=[StellaPlugin(mem_size=s["mem_size"])])


bench = sounding_objects(seed=SETTINGS["seed"], n_tasks=3, train_clips_per_class=16)
ckpt = Path("av_runs/example_ckpt/checkpoint.pt")

strategy = make_strategy(SETTINGS)
strategy.train(bench.train_stream[0])
# ``extra`` holds weights_only-safe values only: the settings go in as JSON text.
save_checkpoint(ckpt, strategy, extra={"completed_experiences": 1, "settings": json.dumps(SETTINGS)})
print("saved", ckpt, "memory:", len(strategy.plugins[0].storage), "clips")

# ... later, in a new process: read the file once, check the settings, restore everything
state = read_checkpoint(ckpt)
saved = json.loads(state["extra"]["settings"])
diff = {k: (saved.get(k), v) for k, v in SETTINGS.items() if saved.get(k) != v}
if diff:
    raise SystemExit(f"{ckpt} was made with other settings: {diff}")
resumed = make_strategy(SETTINGS)
extra = load_checkpoint(ckpt, resumed, state=state)
for exp in bench.train_stream[extra["completed_experiences"]:]:
    resumed.train(exp)
print("resumed and finished; memory:", len(resumed.plugins[0].storage), "clips")
