"""Decode round trips and error reporting of avalanche_av.benchmarks.io (audio, video, writer)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from avalanche_av.benchmarks.io import (
    ClipDecodeError,
    crop_resize_frames,
    decode_frames,
    list_frame_files,
    load_audio,
    load_fbank,
    load_video_frames,
    multiscale_crop_box,
    resize_frames,
    sample_frame_indices,
    write_av_clip,
    write_wav,
)
from avalanche_av.benchmarks.io._common import import_decord
from avalanche_av.benchmarks.io.video import MULTISCALE_SCALES

SR = 16000
FPS = 4
N_FRAMES = 8
SIDE = 64


# ----------------------------------------------------------------------------- clip factory
def block_frames(n: int = N_FRAMES, side: int = SIDE) -> np.ndarray:
    """``(n, side, side, 3)`` uint8: four flat colour quadrants whose colours change per frame."""
    f = np.zeros((n, side, side, 3), np.uint8)
    h = side // 2
    for i in range(n):
        f[i, :h, :h] = (20 + 25 * i, 200 - 20 * i, 100)
        f[i, :h, h:] = (230 - 25 * i, 40, 60 + 20 * i)
        f[i, h:, :h] = (90, 30 + 25 * i, 220 - 20 * i)
        f[i, h:, h:] = (160, 160, 20 + 25 * i)
    return f


def tone(freq: float = 440.0, seconds: float = 2.0, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_clip_set(root: Path) -> dict[str, Path]:
    """Write the tiny clips used by the I/O tests; returns name -> path."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "good": write_av_clip(root / "good.mp4", block_frames(), FPS, tone(), SR),
        "good2": write_av_clip(root / "good2.mp4", block_frames()[::-1].copy(), FPS, tone(660.0), SR),
        "noaudio": write_av_clip(root / "noaudio.mp4", block_frames(), FPS, None),
        "short": write_av_clip(root / "short.mp4", block_frames(1), FPS, tone(seconds=0.05), SR),
        "audio_only": write_wav(root / "audio_only.wav", tone(), SR),
    }
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 6000, dtype=np.uint8).tobytes())
    paths["corrupt"] = corrupt
    paths["missing"] = root / "missing.mp4"
    return paths


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    return make_clip_set(tmp_path_factory.mktemp("clips"))


def dominant_freq(wav: torch.Tensor, sr: int = SR) -> float:
    spec = np.abs(np.fft.rfft(wav.numpy().astype(np.float64)))
    return float(np.argmax(spec) * sr / wav.shape[0])


# ----------------------------------------------------------------------------- frame indices
def test_sample_frame_indices_eval_hand_values():
    assert sample_frame_indices(10, 4, train=False).tolist() == [1, 3, 5, 7]
    assert sample_frame_indices(8, 4, train=False).tolist() == [0, 2, 4, 6]
    assert sample_frame_indices(10, 1, train=False).tolist() == [4]
    assert sample_frame_indices(3, 4, train=False).tolist() == [0, 0, 1, 2]
    assert sample_frame_indices(4, 4, train=False).tolist() == [0, 1, 2, 3]
    assert sample_frame_indices(250, 4, train=False).tolist() == [31, 93, 155, 217]
    assert sample_frame_indices(10, 4, train=False).dtype == torch.int64


def test_sample_frame_indices_train_windows():
    g = torch.Generator().manual_seed(0)
    # N=10, n=4: stride 2, span 7, so the start ranges over 0..3.
    seen = {tuple(sample_frame_indices(10, 4, train=True, generator=g).tolist()) for _ in range(200)}
    assert seen == {(s, s + 2, s + 4, s + 6) for s in range(4)}
    # Too few frames: repeats, no randomness.
    assert sample_frame_indices(3, 4, train=True, generator=g).tolist() == [0, 0, 1, 2]
    a = sample_frame_indices(100, 4, True, torch.Generator().manual_seed(5))
    b = sample_frame_indices(100, 4, True, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="num_frames_total"):
        sample_frame_indices(0, 4, train=False)
    with pytest.raises(ValueError, match="n_frames"):
        sample_frame_indices(5, 0, train=False)


def test_multiscale_crop_box_and_crop_resize():
    g = torch.Generator().manual_seed(1)
    allowed = {int(48 * s) for s in MULTISCALE_SCALES}
    order = [int(48 * s) for s in MULTISCALE_SCALES]
    for _ in range(100):
        top, left, h, w = multiscale_crop_box(48, 80, g)
        assert h in allowed and w in allowed
        assert abs(order.index(h) - order.index(w)) <= 1
        assert 0 <= top <= 48 - h and 0 <= left <= 80 - w
    # Crop then resize to the crop's own size is an exact crop.
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.int64).reshape(2, 3, 6, 6).to(torch.uint8)
    out = crop_resize_frames(x, (1, 2, 4, 4), 4)
    assert torch.equal(out, x[:, :, 1:5, 2:6])
    # Resizing a flat image keeps its value.
    flat = torch.full((1, 3, 10, 14), 77, dtype=torch.uint8)
    assert torch.equal(resize_frames(flat, 5), torch.full((1, 3, 5, 5), 77, dtype=torch.uint8))


# ----------------------------------------------------------------------------- video round trip
def test_video_round_trip_pyav(clips):
    written = block_frames().astype(np.float64)
    got = decode_frames(clips["good"], N_FRAMES, train=False, backend="pyav")
    assert got.shape == (N_FRAMES, SIDE, SIDE, 3) and got.dtype == np.uint8
    assert np.abs(got - written).mean() < 3.0
    # 4 of 8 frames, evaluation: indices 0, 2, 4, 6.
    got4 = decode_frames(clips["good"], 4, train=False, backend="pyav")
    assert np.abs(got4 - written[[0, 2, 4, 6]]).mean() < 3.0


def _all_frames(path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.mark.parametrize(
    "options",
    [
        {},  # x264 default: one keyframe for the whole clip, B-frames
        {"g": "7", "bframes": "2"},  # short GOPs with B-frames: whole GOPs are skipped
        {"g": "1"},  # all intra
        {"x264-params": "keyint=12:open-gop=1:bframes=3"},  # open GOPs
    ],
)
def test_pyav_gop_skipping_matches_full_decode(tmp_path, options):
    n = 61
    frames = np.zeros((n, 32, 32, 3), np.uint8)
    frames[..., 0] = (np.arange(n, dtype=np.uint8) * 4)[:, None, None]
    frames[..., 1] = 128
    path = write_av_clip(tmp_path / "gop.mp4", frames, 25.0, None, video_options=options)
    ref = _all_frames(path)
    assert ref.shape[0] == n
    for n_frames, train, seed in [(1, False, 0), (4, False, 0), (4, True, 1), (4, True, 2), (16, True, 3), (80, False, 0)]:
        idx = sample_frame_indices(n, n_frames, train, torch.Generator().manual_seed(seed))
        got = decode_frames(path, n_frames, train, "pyav", torch.Generator().manual_seed(seed))
        np.testing.assert_array_equal(got, ref[idx.numpy()], err_msg=f"{options} n={n_frames} train={train}")


@pytest.mark.skipif(import_decord() is None, reason="decord not installed")
def test_decord_and_pyav_agree(clips):
    a = decode_frames(clips["good"], 4, train=False, backend="decord").astype(np.float64)
    b = decode_frames(clips["good"], 4, train=False, backend="pyav").astype(np.float64)
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 1.0
    wa = load_audio(clips["good"], backend="decord")
    assert abs(dominant_freq(wa) - 440.0) < 2.0
    assert abs(wa.shape[0] - 2 * SR) <= 1024


def test_load_video_frames_shapes_and_modes(clips):
    ev = load_video_frames(clips["good"], 4, 32, train=False, backend="pyav")
    assert ev.shape == (4, 3, 32, 32) and ev.dtype == torch.uint8
    # Plain resize by 2 keeps each quadrant's colour: top-left of frame 0 is (20, 200, 100).
    np.testing.assert_allclose(ev[0, :, 4:12, 4:12].float().mean(dim=(1, 2)).numpy(), [20, 200, 100], atol=4)
    g = torch.Generator().manual_seed(0)
    tr = load_video_frames(clips["good"], 4, 32, train=True, backend="pyav", generator=g)
    assert tr.shape == (4, 3, 32, 32) and tr.dtype == torch.uint8
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(
        load_video_frames(clips["good"], 4, 32, train=True, backend="pyav", generator=g1),
        load_video_frames(clips["good"], 4, 32, train=True, backend="pyav", generator=g2),
    )


def test_frame_folder_natural_order_and_cavmae_layout(tmp_path):
    from PIL import Image

    frames = np.zeros((12, 16, 16, 3), np.uint8)
    frames[..., 0] = (np.arange(12, dtype=np.uint8) * 20)[:, None, None]
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(frames[i]).save(folder / f"frame_{i}.png")
    files = list_frame_files(folder)
    assert [Path(f).name for f in files][:3] == ["frame_0.png", "frame_1.png", "frame_2.png"]
    assert Path(files[10]).name == "frame_10.png"
    got = load_video_frames(folder, 4, 16, train=False)
    # N=12, n=4: stride 3, span 10, slack 2 -> start 1: frames 1, 4, 7, 10 (lossless PNG).
    assert got[:, 0, 0, 0].tolist() == [20, 80, 140, 200]

    root = tmp_path / "frames_root"
    for k in range(3):
        (root / f"frame_{k}").mkdir(parents=True)
        Image.fromarray(frames[k]).save(root / f"frame_{k}" / "vid1.png")
    got = load_video_frames(root, 3, 16, train=False, video_id="vid1")
    assert got[:, 0, 0, 0].tolist() == [0, 20, 40]
    with pytest.raises(ClipDecodeError, match="no frame images for video_id 'other'"):
        load_video_frames(root, 3, 16, video_id="other")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ClipDecodeError, match="no images"):
        load_video_frames(empty, 3, 16)


# ----------------------------------------------------------------------------- audio round trip
def test_audio_round_trip_mp4(clips):
    wav = load_audio(clips["good"])
    assert wav.dtype == torch.float32 and wav.dim() == 1
    assert abs(wav.shape[0] - 2 * SR) <= 1024
    assert abs(dominant_freq(wav) - 440.0) < 2.0
    rms = float(wav[SR // 4 : -SR // 4].pow(2).mean().sqrt())
    assert abs(rms - 0.5 / np.sqrt(2)) < 0.03


def test_audio_wav_resample_and_downmix(tmp_path):
    x = tone(440.0, 1.0, sr=8000)
    stereo = np.stack([x, np.zeros_like(x)], axis=1)  # (S, C) for soundfile
    path = tmp_path / "st8k.wav"
    sf.write(path, stereo, 8000, subtype="FLOAT")
    wav = load_audio(path, sample_rate=SR)
    assert wav.shape[0] == 2 * x.shape[0]
    assert abs(dominant_freq(wav) - 440.0) < 2.0
    # The channel mean halves the amplitude.
    assert abs(float(wav[1000:-1000].abs().max()) - 0.25) < 0.01
    same = load_audio(path, sample_rate=SR, backend="pyav")
    assert same.shape == wav.shape and float((same - wav).abs().max()) < 1e-4


def test_load_fbank_shapes(clips):
    ev = load_fbank(clips["good"], target_length=96, num_mel_bins=64, train=False)
    assert ev.shape == (96, 64) and ev.dtype == torch.float32 and torch.isfinite(ev).all()
    tr = load_fbank(clips["good"], 96, 64, train=True, generator=torch.Generator().manual_seed(0))
    assert tr.shape == (96, 64) and not torch.equal(tr, ev)
    # A 440 Hz tone puts its energy in a low mel bin, far above the top bins.
    assert ev.mean(0)[:16].max() > ev.mean(0)[-8:].max() + 1.0


# ----------------------------------------------------------------------------- errors
def _assert_names(err: ClipDecodeError, path: Path, *words: str) -> None:
    assert err.path == os.fspath(path)
    assert path.name in str(err)
    for w in words:
        assert w in err.reason, (w, err.reason)


def test_missing_file(clips):
    for fn in (lambda p: load_audio(p), lambda p: load_video_frames(p, 4, 32)):
        with pytest.raises(ClipDecodeError) as ei:
            fn(clips["missing"])
        _assert_names(ei.value, clips["missing"], "not found")
        assert isinstance(ei.value, ValueError)


def test_corrupt_file(clips):
    with pytest.raises(ClipDecodeError) as ei:
        load_audio(clips["corrupt"])
    _assert_names(ei.value, clips["corrupt"], "corrupt")
    for backend in ("auto", "pyav"):
        with pytest.raises(ClipDecodeError) as ei:
            load_video_frames(clips["corrupt"], 4, 32, backend=backend)
        _assert_names(ei.value, clips["corrupt"], "corrupt")


def test_missing_streams(clips):
    with pytest.raises(ClipDecodeError) as ei:
        load_audio(clips["noaudio"])
    _assert_names(ei.value, clips["noaudio"], "no audio stream")
    assert load_video_frames(clips["noaudio"], 4, 32).shape == (4, 3, 32, 32)
    with pytest.raises(ClipDecodeError) as ei:
        load_video_frames(clips["audio_only"], 4, 32, backend="pyav")
    _assert_names(ei.value, clips["audio_only"], "no video stream")


def test_too_short(clips):
    with pytest.raises(ClipDecodeError) as ei:
        load_video_frames(clips["short"], 4, 32, min_duration=0.5)
    _assert_names(ei.value, clips["short"], "too short", "0.250 s", "0.500 s")
    with pytest.raises(ClipDecodeError) as ei:
        load_audio(clips["short"], min_duration=0.5)
    _assert_names(ei.value, clips["short"], "too short", "0.050 s", "0.500 s")
    # Without a minimum, a one-frame clip repeats its frame.
    v = load_video_frames(clips["short"], 4, 32)
    assert v.shape == (4, 3, 32, 32) and torch.equal(v[0], v[3])


def test_nan_audio(tmp_path):
    x = tone(seconds=0.5)
    x[100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    with pytest.raises(ClipDecodeError) as ei:
        load_audio(path)
    _assert_names(ei.value, path, "NaN")


def test_clip_decode_error_pickles_and_reraises():
    e = ClipDecodeError("/x/a.mp4", "no audio stream")
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.path, e2.reason, str(e2)) == ("/x/a.mp4", "no audio stream", "/x/a.mp4: no audio stream")
    # torch's DataLoader re-raises worker errors as ``type(msg)``.
    assert str(ClipDecodeError("Caught ... /x/a.mp4: no audio stream")).endswith("no audio stream")


def test_writer_validates_input(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_av_clip(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8), 4)
    with pytest.raises(ValueError, match="uint8"):
        write_av_clip(tmp_path / "f.mp4", np.zeros((2, 16, 16, 3), np.float32), 4)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        write_av_clip(tmp_path / "s.mp4", np.zeros((16, 16, 3), np.uint8), 4)
    with pytest.raises(ValueError, match="NaN"):
        write_wav(tmp_path / "n.wav", np.array([0.0, np.nan], np.float32))
    # Torch input and out-of-range audio (clipped) are accepted.
    p = write_av_clip(tmp_path / "t.mp4", torch.zeros(2, 16, 16, 3, dtype=torch.uint8), 4,
                      torch.full((8000,), 2.0), SR)
    assert float(load_audio(p).abs().max()) <= 1.1


def test_works_without_decord(clips, monkeypatch):
    import avalanche_av.benchmarks.io.audio as audio_mod
    import avalanche_av.benchmarks.io.video as video_mod

    monkeypatch.setattr(video_mod, "import_decord", lambda: None)
    monkeypatch.setattr(audio_mod, "import_decord", lambda: None)
    got = decode_frames(clips["good"], 4, train=False, backend="auto")
    assert np.abs(got.astype(np.float64) - block_frames()[[0, 2, 4, 6]]).mean() < 3.0
    with pytest.raises(ClipDecodeError, match="corrupt"):
        load_video_frames(clips["corrupt"], 4, 32)
    with pytest.raises(ImportError, match="decord"):
        decode_frames(clips["good"], 4, backend="decord")
    with pytest.raises(ImportError, match="decord"):
        load_audio(clips["good"], backend="decord")


# ----------------------------------------------------------------------------- multi-channel audio
def _channels(n_ch: int, sr: int, seconds: float = 0.5) -> np.ndarray:
    """``(C, S)``: channel ``k`` is a sine of its own pitch and amplitude, so a wrong channel
    order, a planar/packed mix-up or a dropped channel changes the mono mix."""
    t = np.arange(int(sr * seconds)) / sr
    return np.stack([0.02 * (k + 1) * np.sin(2 * np.pi * (110 + 37 * k) * t) for k in range(n_ch)]).astype(np.float32)


@pytest.mark.parametrize("n_ch", [2, 6, 8, 16])
def test_multichannel_pcm_mixes_to_the_channel_mean(tmp_path, n_ch):
    # 8 and 16 channels segfaulted PyAV's planar ("fltp") conversion; packed "flt" reads them.
    data = _channels(n_ch, SR)
    path = tmp_path / f"c{n_ch}.wav"
    sf.write(path, data.T, SR, subtype="FLOAT")
    want = torch.from_numpy(data.mean(axis=0))
    got_pyav = load_audio(path, backend="pyav")
    got_sf = load_audio(path, backend="soundfile")
    assert got_pyav.shape == want.shape
    assert torch.allclose(got_pyav, want, atol=1e-6), float((got_pyav - want).abs().max())
    assert torch.allclose(got_sf, want, atol=1e-6)


def test_eight_channel_48k_aac_clip_decodes_in_process(tmp_path):
    # The clip of the issue: an mp4 whose audio is 8-channel 48 kHz AAC (7.1). Before the fix
    # this call killed the process with SIGSEGV.
    sr = 48000
    data = _channels(8, sr, seconds=1.0)
    t = np.arange(sr) / sr
    data[3] = 0.08 * np.sin(2 * np.pi * 60 * t)  # 7.1's LFE channel: AAC keeps only its low band
    clip = write_av_clip(tmp_path / "surround.mp4", block_frames(4), FPS, data, sr)
    wav = load_audio(clip)
    assert wav.shape == (SR,) and torch.isfinite(wav).all()
    import torchaudio

    want = torchaudio.functional.resample(torch.from_numpy(data.mean(axis=0)), sr, SR)
    # AAC is lossy at 16 kbit/s per channel; the mix still follows the 8-channel mean closely,
    # while reading one channel only (or an interleaving error) would not.
    corr = float(torch.corrcoef(torch.stack([wav, want]))[0, 1])
    assert corr > 0.9, corr
    assert float(torch.corrcoef(torch.stack([wav, torch.from_numpy(data[0, ::3].copy())]))[0, 1]) < 0.5
    fb = load_fbank(clip, target_length=64, num_mel_bins=32)
    assert fb.shape == (64, 32) and torch.isfinite(fb).all()


def test_audio_header_probe_refuses_what_the_decoder_cannot_handle(tmp_path):
    import av

    from avalanche_av.benchmarks.io import MAX_AUDIO_CHANNELS, categorise_reason, check_audio_stream

    data = _channels(MAX_AUDIO_CHANNELS + 8, SR, seconds=0.1)
    path = tmp_path / "c72.wav"
    sf.write(path, data.T, SR, subtype="PCM_16")
    with pytest.raises(ClipDecodeError, match=r"unsupported audio stream: 72 channels \(supported: 1\.\.64\)") as ei:
        load_audio(path, backend="pyav")
    assert ei.value.path == str(path) and categorise_reason(ei.value.reason) == "unsupported"
    ok = tmp_path / "c8.wav"
    sf.write(ok, _channels(8, SR, 0.1).T, SR)
    with av.open(str(ok)) as c:
        info = check_audio_stream(str(ok), c.streams.audio[0])
    assert info["channels"] == 8 and info["sample_rate"] == SR and abs(info["duration"] - 0.1) < 1e-3


def test_writer_multichannel_and_layouts(tmp_path):
    import av

    for n_ch, layout in ((1, "mono"), (2, "stereo"), (6, "5.1"), (8, "7.1")):
        data = _channels(n_ch, SR, 0.2)
        p = write_av_clip(tmp_path / f"w{n_ch}.mp4", block_frames(2), FPS, data if n_ch > 1 else data[0], SR)
        with av.open(str(p)) as c:
            a = c.streams.audio[0]
            assert a.codec_context.channels == n_ch and a.codec_context.layout.name == layout
    with pytest.raises(ValueError, match=r"\(S,\) or \(C, S\)"):
        write_av_clip(tmp_path / "bad.mp4", block_frames(2), FPS, np.zeros((2, 3, 4), np.float32), SR)
