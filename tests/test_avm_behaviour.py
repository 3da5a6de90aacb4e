"""The AVM learns audio-video matching and localizes the sounding object on the synthetic stream.

For speed the backbone is frozen at initialisation and its joint features are computed once;
the AVM (our module, derangement pairs, BCE) is then trained for 400 steps on task 0's training
clips and scored on that task's held-out retrieval clips. The full STELLA run (backbone and AVM
trained together) is recorded in benchmarks_av/RESULTS.md §5.
"""
import torch

from avalanche_av.benchmarks import sounding_objects
from avalanche_av.evaluation import avm_importance, avm_match_accuracy, importance_share
from avalanche_av.models import AVMatching, avm_loss, create_model, make_avm_pairs
from avalanche_av.models.inputs import prepare_audio, prepare_video


def _stack(ds):
    return [torch.stack([ds[i][j] for i in range(len(ds))]) for j in range(4)]


def test_avm_matches_heldout_pairs_and_localizes_the_source():
    bench = sounding_objects(seed=0, n_tasks=1, train_clips_per_class=64, eval_clips_per_class=16)
    audio, video, _, _ = _stack(bench.train_stream[0].dataset)
    audio_h, video_h, _, clip_h = _stack(bench.test_stream[0].dataset)
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    with torch.no_grad():
        pa, pv = model.patchify(prepare_audio(audio), prepare_video(video))
        a_tok, v_tok = model.encode_modalities(pa, model._full_idx(pa), pv, model._full_idx(pv))

    avm = AVMatching(model.config.embed_dim, model.config.num_heads)
    opt = torch.optim.Adam(avm.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        idx = torch.randint(0, len(audio), (32,), generator=g)
        perm, is_match = make_avm_pairs(32, g)
        with torch.no_grad():  # negatives are built before fusion, as in STELLA
            fa, fv = model.fuse(a_tok[idx], v_tok[idx][perm])
        loss = avm_loss(avm(fa, fv, return_attn=False).logit, is_match)
        opt.zero_grad()
        loss.backward()
        opt.step()

    # 64 true + 64 deranged held-out pairs; chance is 0.5 (std 0.044)
    acc = avm_match_accuracy(model, avm, audio_h, video_h, torch.Generator().manual_seed(1))
    assert acc >= 0.62, acc
    _, imp_v, _ = avm_importance(model, avm, audio_h, video_h)
    gt = (bench.sounding_masks[clip_h] & bench.active_frames[clip_h][..., None, None]).flatten(1)
    share, ratio = importance_share(imp_v, gt)
    assert ratio.mean() >= 2.0, ratio.mean()
    assert (ratio > 1).float().mean() >= 0.75  # most clips, not a few outliers
