"""Does the AVM's video importance depend on the audio? A quick control on the synthetic stream.

The backbone is frozen at initialisation and its modality tokens are computed once, as in
tests/test_avm_behaviour.py; only the AVM trains (derangement pairs, BCE). At a few points, on
task 0's held-out retrieval clips, it scores the AVM's video importance against the ground-truth
sounding patches twice:

* with each clip's **own** audio;
* with the audio of **another** clip (a fixed derangement): the audio-swap control.

If the map followed the sound, swapping the audio would move it off the source. It also reports
the pixel-intensity reference (no audio, no model). About 30 s of CPU time on one core.

Usage::

    python benchmarks_av/bench_avm_audio_swap.py --steps 400 --out benchmarks_av/results
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--report-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="folder for avm_audio_swap.json (default: print only)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from avalanche_av.benchmarks import sounding_objects
    from avalanche_av.evaluation import avm_importance, intensity_map, localization_score, sounding_patches
    from avalanche_av.models import AVMatching, avm_loss, create_model, derangement, make_avm_pairs
    from avalanche_av.models.inputs import prepare_audio, prepare_video

    def stack(ds):
        return [torch.stack([ds[i][j] for i in range(len(ds))]) for j in range(4)]

    t0 = time.time()
    bench = sounding_objects(seed=args.seed, n_tasks=1, train_clips_per_class=64, eval_clips_per_class=16)
    audio, video, _, _ = stack(bench.train_stream[0].dataset)
    audio_h, video_h, _, clip_h = stack(bench.test_stream[0].dataset)
    torch.manual_seed(args.seed)
    model = create_model("tiny").eval()
    with torch.no_grad():
        a_tok, v_tok = model.encode_full(*model.patchify(prepare_audio(audio), prepare_video(video)))
    c = model.config
    avm = AVMatching(c.embed_dim, c.num_heads)
    opt = torch.optim.Adam(avm.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(args.seed)
    gt = sounding_patches(bench.sounding_masks, bench.active_frames, clip_h)
    perm = derangement(len(clip_h), torch.Generator().manual_seed(args.seed + 1))
    points = []

    def score(step: int) -> None:
        _, own, _ = avm_importance(model, avm, audio_h, video_h)
        _, swapped, _ = avm_importance(model, avm, audio_h[perm], video_h)
        rec = {"step": step, "own": localization_score(own, gt).to_dict(),
               "swapped_audio": localization_score(swapped, gt).to_dict()}
        points.append(rec)
        print(f"step {step:4d}: own share {rec['own']['share']:.3f} AUC {rec['own']['auc']:.3f} | swapped audio "
              f"share {rec['swapped_audio']['share']:.3f} AUC {rec['swapped_audio']['auc']:.3f} "
              f"(chance {rec['own']['chance']:.3f} / 0.5)", flush=True)

    score(0)
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(audio), (32,), generator=g)
        pairs, is_match = make_avm_pairs(32, g)
        with torch.no_grad():  # negatives are built before fusion, as in STELLA
            fa, fv = model.fuse(a_tok[idx], v_tok[idx][pairs])
        loss = avm_loss(avm(fa, fv, return_attn=False).logit, is_match)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.report_every == 0 or step == args.steps:
            score(step)
    inten = localization_score(intensity_map(video_h, c.patch_size), gt).to_dict()
    print(f"pixel intensity (no audio, no model): share {inten['share']:.3f} AUC {inten['auc']:.3f}")
    res = {
        "command": "python benchmarks_av/bench_avm_audio_swap.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seconds": round(time.time() - t0, 1),
        "heldout_clips": int(len(clip_h)),
        "points": points,
        "intensity": inten,
    }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "avm_audio_swap.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
