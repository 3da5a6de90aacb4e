"""The real-dataset layouts, end to end, on tiny fake copies: AVE (event localization),
AVSBench S4 (sound-source segmentation) and MSR-VTT 1k-A (retrieval fine-tuning).

    python examples/downstream_real_layouts.py --root /tmp/fake_downstream

Each fake copy is written in the official layout (see docs/downstream.md), read back by the
readers in ``avalanche_av.benchmarks.real`` and evaluated with a random tiny backbone. Point
``--data-root`` of ``avalanche-av downstream`` at a real copy to do the same on real data.
"""
import argparse
from pathlib import Path

from avalanche_av.benchmarks.real.ave import make_fake_ave, read_ave
from avalanche_av.benchmarks.real.avsbench import make_fake_s4, read_s4
from avalanche_av.benchmarks.real.msrvtt import make_fake_msrvtt, read_msrvtt
from avalanche_av.downstream import DownstreamConfig, run_downstream

p = argparse.ArgumentParser()
p.add_argument("--root", default="/tmp/fake_downstream")
args = p.parse_args()
root = Path(args.root)

make_fake_ave(root / "ave", counts={"train": 8, "val": 4, "test": 4}, media=True)
make_fake_s4(root / "s4", counts={"train": 6, "val": 3, "test": 3}, size=64)
make_fake_msrvtt(root / "msrvtt", n_train=20, n_test=6, media=True)
print(f"AVE: {len(read_ave(root / 'ave').clips)} clips, S4: {len(read_s4(root / 's4').clips)} clips, "
      f"MSR-VTT: {len(read_msrvtt(root / 'msrvtt').clips)} clips")

common = dict(checkpoint="random", model="tiny", epochs=5, patience=2, min_epochs=1, progress=False,
              cache_dir=str(root / "feature_cache"))
for task, data in (("event", "ave"), ("segment", "avsbench-s4"), ("retrieval-ft", "msrvtt")):
    res = run_downstream(DownstreamConfig(task=task, data=data, data_root=str(root / {"ave": "ave", "avsbench-s4": "s4", "msrvtt": "msrvtt"}[data]),
                                          out_dir=str(root / "out" / task), **common))
    scalars = {k: round(v, 3) for k, v in res["metrics"].items() if isinstance(v, float)}
    print(f"{task} on {data}: {scalars}")
print(f"results under {root / 'out'}")
