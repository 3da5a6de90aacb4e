"""Pure tensor functions that draw the synthetic clips: shapes, frames, waveforms.

All functions are vectorised over clips; nothing here holds state or draws random numbers
(randomness is passed in), so the same inputs always give the same pixels and samples.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "SHAPE_NAMES",
    "N_SHAPES",
    "palette",
    "shape_sdf",
    "render_frames",
    "segment_envelope",
    "tilted_noise",
    "synth_waveforms",
]

SHAPE_NAMES = ("square", "circle", "triangle", "diamond", "plus", "ring", "cross", "frame")
N_SHAPES = len(SHAPE_NAMES)

# Fully saturated, easily told apart on a dark background; extra colours come from HSV.
_BASE_COLOURS = (
    ("red", (1.0, 0.15, 0.15)),
    ("green", (0.2, 1.0, 0.2)),
    ("blue", (0.25, 0.4, 1.0)),
    ("yellow", (1.0, 1.0, 0.2)),
    ("magenta", (1.0, 0.2, 1.0)),
    ("cyan", (0.2, 1.0, 1.0)),
    ("orange", (1.0, 0.55, 0.1)),
    ("white", (0.95, 0.95, 0.95)),
)

# Pixel value of an object = offset + gain * colour, per state. The bright state is both
# lighter and whiter, a jump of 50-115 grey levels per channel.
_DIM_OFFSET, _DIM_GAIN = 30.0, 110.0
_BRIGHT_OFFSET, _BRIGHT_GAIN = 80.0, 175.0


def palette(n: int) -> tuple[list[str], torch.Tensor]:
    """``n`` named colours.

    Returns:
        names, and ``(n, 3)`` float RGB in ``[0, 1]``.
    """
    names = [c[0] for c in _BASE_COLOURS[:n]]
    rgb = [c[1] for c in _BASE_COLOURS[:n]]
    extra = n - len(names)
    for i in range(extra):
        # Hues offset from the base set, alternating saturation so neighbours differ.
        h = (i + 0.5) / extra
        s = 0.55 if i % 2 else 0.85
        k = torch.tensor([5.0, 3.0, 1.0])
        t = (k + h * 6.0) % 6.0
        col = 1.0 - s * torch.clamp(torch.minimum(t, 4.0 - t), 0.0, 1.0)
        names.append(f"hue{int(h * 360):03d}s{int(s * 100)}")
        rgb.append(tuple(col.tolist()))
    return names, torch.tensor(rgb, dtype=torch.float32)


def shape_sdf(shape_ids: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance to each shape's outline (negative inside).

    Args:
        shape_ids: ``(M,)`` int64 indices into :data:`SHAPE_NAMES`.
        u, v: ``(M, P, Q)`` coordinates in units of the object's half-extent (``v`` points
            down), centred on the object.

    Returns:
        ``(M, P, Q)`` float distance in the same units. Exact for circle/ring, a
        Chebyshev-style bound for the others; only used for anti-aliased edges.
    """
    au, av = u.abs(), v.abs()
    r = torch.sqrt(u * u + v * v)
    cheb = torch.maximum(au, av)
    p, q = (u + v).abs() / math.sqrt(2.0), (u - v).abs() / math.sqrt(2.0)

    def bar_union(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
        return torch.minimum(torch.maximum(a - w, b - 1.0), torch.maximum(a - 1.0, b - w))

    sdfs = (
        cheb - 0.8,  # square
        r - 1.0,  # circle
        torch.maximum(v - 0.8, (1.8 * au - v - 1.0) / math.hypot(1.8, 1.0)),  # triangle
        (au + av - 1.0) / math.sqrt(2.0),  # diamond
        bar_union(au, av, 0.33),  # plus
        (r - 0.7).abs() - 0.3,  # ring
        bar_union(p, q, 0.3),  # cross (rotated plus)
        torch.maximum(cheb - 0.9, 0.5 - cheb),  # hollow square
    )
    out = torch.empty_like(u)
    ids = shape_ids.view(-1, 1, 1)
    for k, d in enumerate(sdfs):
        out = torch.where(ids == k, d, out)
    return out


def render_frames(
    block_pos: torch.Tensor,
    shape_ids: torch.Tensor,
    colours: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    bright: torch.Tensor,
    bg_level: torch.Tensor,
    noise: torch.Tensor | None,
    image_size: int,
    block_px: int,
    noise_std: float,
) -> torch.Tensor:
    """Draw clips of objects on a noisy background.

    Each object sits inside its own ``block_px``-sided block of the frame (blocks tile the
    top-left ``block_grid * block_px`` square), so its pixels never leave that block.

    Args:
        block_pos: ``(N, O)`` int64 block index (row-major over the block grid) per object;
            distinct within a clip.
        shape_ids: ``(N, O)`` int64 shape per object.
        colours: ``(N, O, 3)`` RGB in ``[0, 1]``.
        scale: ``(N, O)`` half-extent as a fraction of the block's half side, in ``(0, 1]``.
        offset: ``(N, O, 2)`` (x, y) centre offset in pixels; keep it inside
            ``±(1 - scale) * block_px / 2 * 0.9`` so the object stays in its block.
        bright: ``(N, O, T)`` bool, object drawn in its bright state in frame ``t``.
        bg_level: ``(N, 3)`` background grey level per channel (0-255).
        noise: ``(N, T, H, W, 3)`` standard-normal sensor noise, or ``None``.
        image_size: H = W.
        block_px: side of an object block in pixels.
        noise_std: scale of ``noise`` in grey levels.

    Returns:
        ``(N, T, 3, H, W)`` uint8 RGB frames.
    """
    n, o, t = bright.shape
    bg = image_size // block_px
    half = block_px / 2.0
    coords = torch.arange(block_px, dtype=torch.float32) + 0.5 - half
    half_ext = scale.float() * half * 0.9  # (N, O) pixels
    xs = (coords.view(1, 1, 1, -1) - offset[..., 0, None, None].float()) / half_ext[..., None, None]
    ys = (coords.view(1, 1, -1, 1) - offset[..., 1, None, None].float()) / half_ext[..., None, None]
    xs, ys = torch.broadcast_tensors(xs, ys)  # (N, O, P, P)
    sdf = shape_sdf(shape_ids.reshape(-1), xs.reshape(n * o, block_px, block_px), ys.reshape(n * o, block_px, block_px))
    # Distance in pixels -> 1-pixel-wide anti-aliased coverage, so size changes are continuous.
    cover = (0.5 - sdf.view(n, o, block_px, block_px) * half_ext[..., None, None]).clamp(0.0, 1.0)

    dim = _DIM_OFFSET + _DIM_GAIN * colours  # (N, O, 3)
    lit = _BRIGHT_OFFSET + _BRIGHT_GAIN * colours
    obj_rgb = torch.where(bright[..., None], lit[:, :, None, :], dim[:, :, None, :])  # (N, O, T, 3)

    # Work block-major, (N, blocks, T, P, P, 3), so each object touches only its own block.
    blocks = bg_level.float().view(n, 1, 1, 1, 1, 3).expand(n, bg * bg, t, block_px, block_px, 3).clone()
    rows = torch.arange(n)
    for k in range(o):
        cur = blocks[rows, block_pos[:, k]]  # (N, T, P, P, 3)
        a = cover[:, k].view(n, 1, block_px, block_px, 1)
        blocks[rows, block_pos[:, k]] = cur + a * (obj_rgb[:, k].view(n, t, 1, 1, 3) - cur)
    span = bg * block_px
    tiled = blocks.view(n, bg, bg, t, block_px, block_px, 3).permute(0, 3, 1, 4, 2, 5, 6).reshape(n, t, span, span, 3)
    if span == image_size:
        img = tiled
    else:
        img = bg_level.float().view(n, 1, 1, 1, 3).expand(n, t, image_size, image_size, 3).clone()
        img[:, :, :span, :span] = tiled
    if noise is not None and noise_std > 0:
        img = img.add_(noise, alpha=noise_std)
    return img.round_().clamp_(0, 255).to(torch.uint8).permute(0, 1, 4, 2, 3).contiguous()


def segment_envelope(active: torch.Tensor, n_samples: int, ramp: int) -> torch.Tensor:
    """Sample-level on/off envelope from per-segment activity.

    Args:
        active: ``(N, T)`` bool; segment ``j`` covers samples
            ``[ceil(j * S / T), ceil((j + 1) * S / T))``.
        n_samples: S.
        ramp: length in samples of the raised-cosine crossfade centred on each segment
            boundary (0 for hard edges); must not exceed a segment.

    Returns:
        ``(N, S)`` float32 in ``[0, 1]``.
    """
    n, t = active.shape
    idx = torch.arange(n_samples)
    a = active.float()
    env = a[:, (idx * t) // n_samples]
    if ramp <= 0:
        return env
    # Only the samples near a boundary differ from the step function: crossfade there.
    w = (torch.arange(ramp, dtype=torch.float32) + 0.5) / ramp
    w = 0.5 - 0.5 * torch.cos(math.pi * w)
    for j in range(1, t):
        b = (j * n_samples + t - 1) // t
        lo, hi = max(b - ramp // 2, 0), min(b - ramp // 2 + ramp, n_samples)
        ww = w[lo - (b - ramp // 2) : hi - (b - ramp // 2)]
        env[:, lo:hi] = a[:, j - 1 : j] + (a[:, j] - a[:, j - 1]).unsqueeze(1) * ww
    return env


def tilted_noise(white: torch.Tensor, tilt: float, sample_rate: int, f_low: float = 50.0) -> torch.Tensor:
    """Shape white noise to a power spectrum ``~ f^-tilt`` (0 white, 1 pink), unit variance.

    After the fbank's pre-emphasis (a high-pass, ~ f^2 in power), white noise swamps the
    upper mel bins; a tilt of about 2 gives a roughly flat noise floor across bins.

    Args:
        white: ``(N, S)`` standard-normal noise.
        tilt: spectral slope exponent.
        sample_rate: Hz.
        f_low: below this frequency the gain is held constant (avoids a DC blow-up).

    Returns:
        ``(N, S)`` float32, each row with zero mean and unit std.
    """
    if tilt == 0:
        return white
    s = white.shape[-1]
    spec = torch.fft.rfft(white, dim=-1)
    f = torch.fft.rfftfreq(s, d=1.0 / sample_rate).clamp_min(f_low)
    out = torch.fft.irfft(spec * f.pow(-tilt / 2.0), n=s, dim=-1)
    out = out - out.mean(dim=-1, keepdim=True)
    return out / out.std(dim=-1, keepdim=True).clamp_min(1e-12)


def synth_waveforms(
    f0: torch.Tensor,
    harmonic_amps: torch.Tensor,
    am_rate: torch.Tensor,
    am_depth: torch.Tensor,
    phases: torch.Tensor,
    am_phase: torch.Tensor,
    gain: torch.Tensor,
    envelope: torch.Tensor,
    noise: torch.Tensor | None,
    noise_std: float,
    sample_rate: int,
) -> torch.Tensor:
    """Harmonic tones with amplitude modulation, gated by an envelope, plus white noise.

    Args:
        f0: ``(N,)`` fundamental in Hz (pitch shift already applied).
        harmonic_amps: ``(N, K)`` amplitude of harmonics 1..K (zeros switch them off).
            Rescaled per clip to sum to 1; harmonics at or above 0.45 * sample_rate are
            dropped to avoid aliasing.
        am_rate: ``(N,)`` amplitude-modulation rate in Hz.
        am_depth: ``(N,)`` modulation depth in ``[0, 1]``.
        phases: ``(N, K)`` start phase of each harmonic in radians.
        am_phase: ``(N,)`` start phase of the modulator.
        gain: ``(N,)`` linear peak amplitude of the tone.
        envelope: ``(N, S)`` on/off gate in ``[0, 1]``.
        noise: ``(N, S)`` standard-normal noise, or ``None``.
        noise_std: noise scale.
        sample_rate: Hz.

    Returns:
        ``(N, S)`` float32 waveform clipped to ``[-1, 1]``.
    """
    n, s = envelope.shape
    k = harmonic_amps.shape[1]
    t = torch.arange(s, dtype=torch.float32) / sample_rate
    h = torch.arange(1, k + 1, dtype=torch.float32)
    f0 = f0.float().view(-1, 1)
    amps = harmonic_amps.float() * (h.view(1, -1) * f0 < 0.45 * sample_rate)
    amps = amps / amps.sum(dim=1, keepdim=True).clamp_min(1e-12)
    # float32 phase: at most ~1e5 rad over a clip, an error of a few mrad, inaudible here.
    base = (2 * math.pi) * f0 * t.view(1, -1)  # (N, S)
    tone = torch.zeros(n, s)
    # Loop over harmonics (K <= a dozen), not clips; skip those silent in every clip.
    for j in range(k):
        if bool((amps[:, j] > 0).any()):
            arg = torch.add(phases[:, j : j + 1].float(), base, alpha=j + 1)
            tone.addcmul_(amps[:, j : j + 1], arg.sin_())
    mod = 0.5 + 0.5 * torch.cos((2 * math.pi) * am_rate.float().view(-1, 1) * t.view(1, -1) + am_phase.float().view(-1, 1))
    tone = tone * (1.0 - am_depth.float().view(-1, 1) * mod)
    wav = gain.float().view(-1, 1) * tone * envelope
    if noise is not None and noise_std > 0:
        wav = wav + noise_std * noise
    return wav.clamp_(-1.0, 1.0)
