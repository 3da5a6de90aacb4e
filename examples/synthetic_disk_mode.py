"""Write the synthetic stream as real mp4 files (H.264 + AAC) plus a CAV-MAE JSON manifest,
and load it back through the real decoders (decord, or PyAV) and the fbank front end.

    python examples/synthetic_disk_mode.py --root av_runs/synthetic_mp4
"""
import argparse

from avalanche_av.benchmarks import sounding_objects

p = argparse.ArgumentParser()
p.add_argument("--root", default="av_runs/synthetic_mp4")
args = p.parse_args()

bench = sounding_objects(seed=0, n_tasks=2, classes_per_task=2, train_clips_per_class=4,
                         eval_clips_per_class=2, root=args.root)
print("manifest:", bench.manifest_path)
audio, video, target, clip_id, task = bench.train_stream[0].dataset[0]
print("decoded sample:", tuple(audio.shape), audio.dtype, tuple(video.shape), video.dtype,
      "target", int(target), "clip", int(clip_id), "task", int(task))
