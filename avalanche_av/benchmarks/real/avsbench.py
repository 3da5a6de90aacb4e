"""AVSBench S4 (single-source sound-source segmentation, Zhou et al. 2022): reader, mask loader, fake layout.

Layout of a local copy (the official ``Single-source`` folder)::

    ROOT/
      s4_meta_data.csv                       header with at least: name, category, split
      s4_data/
        visual_frames/{split}/{category}/{name}/{name}_{k}.png    k = 1..5, one frame a second
        audio_wav/{split}/{category}/{name}.wav                   5 s of audio
        gt_masks/{split}/{category}/{name}/{name}_{k}.png         train: k = 1 only; val/test: 1..5

``split`` is ``train``, ``val`` or ``test``. Masks are single-channel PNGs (grey or palette);
any non-zero pixel is the sounding object. A mask must have the size of its frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ..io.errors import ManifestError, PathLike
from ._csv import read_csv_strict

__all__ = ["S4_FRAMES", "S4Table", "read_s4_meta", "read_s4", "load_s4_masks", "S4MaskSource", "make_fake_s4"]

#: Frames (and masks) per S4 clip.
S4_FRAMES = 5
_SPLITS = ("train", "val", "test")


def read_s4_meta(path: PathLike) -> pd.DataFrame:
    """Read ``s4_meta_data.csv``.

    Returns:
        DataFrame with ``name``, ``category``, ``split`` (plus the file's other columns) and
        ``line`` (1-based line in the file).

    Raises:
        ManifestError: missing file, a line whose field count differs from the header's,
            missing columns, empty names or categories, unknown splits, duplicate names.
    """
    p = Path(path)
    df = read_csv_strict(p, "AVSBench S4 table")
    need = ["name", "category", "split"]
    lacking = [c for c in need if c not in df.columns]
    if lacking:
        raise ManifestError(f"{p}: missing column(s) {lacking}; the header has {[c for c in df.columns if c != 'line']}")
    bad = df[(df["name"] == "") | (df["category"] == "")]
    if len(bad):
        raise ManifestError(f"{p}: line {int(bad['line'].iloc[0])}: empty name or category ({len(bad)} such rows)")
    bad = df[~df["split"].isin(_SPLITS)]
    if len(bad):
        raise ManifestError(f"{p}: line {int(bad['line'].iloc[0])}: split {bad['split'].iloc[0]!r} is not one of {list(_SPLITS)}")
    dup = df[df["name"].duplicated()]
    if len(dup):
        raise ManifestError(f"{p}: line {int(dup['line'].iloc[0])}: clip {dup['name'].iloc[0]!r} is listed twice")
    return df.reset_index(drop=True)


@dataclass
class S4Table:
    """A read S4 copy.

    Attributes:
        clips: one row per clip: ``name, category, split, line, target`` (class index),
            ``frame_dir``, ``audio_path`` and ``mask_paths`` (a tuple of ``S4_FRAMES`` paths,
            ``""`` where the frame has no annotation).
        class_names: sorted categories.
        missing: clip names left out because a file is missing (``on_missing='skip'``).
    """

    clips: pd.DataFrame
    class_names: list[str]
    missing: list[str] = field(default_factory=list)


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(path) as im:
            return im.size  # (W, H), read from the header only
    except OSError as e:
        raise ManifestError(f"{path}: not a readable image ({e})") from e


def read_s4(
    root: PathLike,
    splits: Sequence[str] = _SPLITS,
    meta: Optional[PathLike] = None,
    on_missing: Literal["error", "skip"] = "error",
    check_sizes: bool = True,
) -> S4Table:
    """Read an AVSBench S4 copy and check its files.

    Args:
        root: the ``Single-source`` folder (see the module docstring).
        splits: splits to keep.
        meta: the table, default ``ROOT/s4_meta_data.csv``.
        on_missing: a missing frame folder, frame, audio file or mask raises (naming the file)
            or leaves the clip out (``"skip"``, listed in ``missing``).
        check_sizes: compare every mask's size with its frame's (image headers only).

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ManifestError: a bad table, a missing file (``on_missing='error'``) or a mask whose size
            differs from its frame's; the message names the file.
    """
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"AVSBench S4 root {r} does not exist or is not a folder")
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    df = read_s4_meta(meta if meta is not None else r / "s4_meta_data.csv")
    classes = sorted(df["category"].unique().tolist())
    df = df[df["split"].isin(list(splits))].reset_index(drop=True)
    data = r / "s4_data"
    frame_dirs, audio_paths, mask_paths, keep, missing = [], [], [], [], []
    for name, cat, split in zip(df["name"], df["category"], df["split"]):
        fdir = data / "visual_frames" / split / cat / name
        wav = data / "audio_wav" / split / cat / f"{name}.wav"
        mdir = data / "gt_masks" / split / cat / name
        frames = [fdir / f"{name}_{k}.png" for k in range(1, S4_FRAMES + 1)]
        annotated = (1,) if split == "train" else tuple(range(1, S4_FRAMES + 1))
        masks = [mdir / f"{name}_{k}.png" if k in annotated else None for k in range(1, S4_FRAMES + 1)]
        need = frames + [wav] + [m for m in masks if m is not None]
        absent = [f for f in need if not f.is_file()]
        if absent:
            if on_missing == "error":
                raise ManifestError(f"AVSBench S4: clip {name!r} ({split}/{cat}): file {absent[0]} not found"
                                    + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""))
            missing.append(name)
            keep.append(False)
            frame_dirs.append("")
            audio_paths.append("")
            mask_paths.append(("",) * S4_FRAMES)
            continue
        if check_sizes:
            for f, m in zip(frames, masks):
                if m is None:
                    continue
                fs, ms = _image_size(f), _image_size(m)
                if fs != ms:
                    raise ManifestError(f"{m}: mask is {ms[0]}x{ms[1]} (WxH) but its frame {f.name} is {fs[0]}x{fs[1]}")
        keep.append(True)
        frame_dirs.append(str(fdir))
        audio_paths.append(str(wav))
        mask_paths.append(tuple(str(m) if m is not None else "" for m in masks))
    df["frame_dir"], df["audio_path"], df["mask_paths"] = frame_dirs, audio_paths, mask_paths
    df = df[np.asarray(keep, bool)].reset_index(drop=True)
    df["target"] = df["category"].map({c: i for i, c in enumerate(classes)}).astype("int64")
    return S4Table(clips=df, class_names=classes, missing=missing)


def load_s4_masks(mask_paths: Sequence[str], size: int, frame_index: Optional[Sequence[int]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one clip's masks, resized (nearest) to ``size x size``.

    Args:
        mask_paths: ``S4_FRAMES`` paths, ``""`` for unannotated frames.
        size: output side.
        frame_index: which of the clip's frames to return (default all), e.g. the indices the
            video loader sampled.

    Returns:
        ``masks (F, size, size)`` bool and ``valid (F,)`` bool (``False`` = no annotation).

    Raises:
        ManifestError: an unreadable mask file (named).
    """
    from PIL import Image  # noqa: PLC0415

    idx = list(range(len(mask_paths))) if frame_index is None else [int(i) for i in frame_index]
    masks = torch.zeros(len(idx), size, size, dtype=torch.bool)
    valid = torch.zeros(len(idx), dtype=torch.bool)
    for j, i in enumerate(idx):
        path = mask_paths[i]
        if not path:
            continue
        try:
            with Image.open(path) as im:
                # Palette masks hold class indices, grey masks 0/255: non-zero is foreground either way.
                arr = np.asarray(im if im.mode in ("P", "L", "1") else im.convert("L"))
        except OSError as e:
            raise ManifestError(f"{path}: not a readable mask image ({e})") from e
        m = torch.from_numpy(arr > 0)[None, None].float()
        masks[j] = torch.nn.functional.interpolate(m, size=(size, size), mode="nearest")[0, 0] > 0.5
        valid[j] = True
    return masks, valid


class S4MaskSource:
    """Masks of a read S4 table, loaded on demand: ``source[i] -> (masks (F, S, S) bool, valid (F,) bool)``.

    ``frame_index`` selects the frames the video loader samples (all five by default).
    """

    def __init__(self, mask_paths: Sequence[Sequence[str]], size: int, frame_index: Optional[Sequence[int]] = None) -> None:
        self.mask_paths = [tuple(m) for m in mask_paths]
        self.size = int(size)
        self.frame_index = None if frame_index is None else [int(i) for i in frame_index]

    def __len__(self) -> int:
        return len(self.mask_paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return load_s4_masks(self.mask_paths[int(i)], self.size, self.frame_index)

    def valid_frames(self) -> torch.Tensor:
        """``(N, F)`` bool: which returned frames are annotated (from the paths, no file read)."""
        idx = self.frame_index if self.frame_index is not None else list(range(S4_FRAMES))
        return torch.tensor([[bool(m[i]) for i in idx] for m in self.mask_paths], dtype=torch.bool).view(len(self), len(idx))

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self[int(i)] for i in idx.tolist()]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def make_fake_s4(
    root: PathLike,
    counts: Optional[dict[str, int]] = None,
    categories: Sequence[str] = ("dog", "guitar", "helicopter"),
    size: int = 32,
    media: bool = True,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Write a fake S4 copy in the official layout.

    Each clip shows its object (a coloured square at a random place) on every frame, with the
    object's mask, and a tone whose pitch depends on the category. With ``media=False`` the
    frames, masks and audio files are still valid (tiny) files; ``media`` only switches off
    the tone (silence) to save time.

    Returns:
        split -> clip names written.
    """
    from PIL import Image  # noqa: PLC0415

    from ..io.writer import write_wav  # noqa: PLC0415

    counts = dict(counts or {"train": 6, "val": 3, "test": 3})
    r = Path(root)
    data = r / "s4_data"
    rng = np.random.default_rng(seed)
    rows, out = [], {}
    k = 0
    for split, n in counts.items():
        out[split] = []
        for _ in range(n):
            cls = k % len(categories)
            cat, name = categories[cls], f"s4clip{k:05d}"
            k += 1
            fdir = data / "visual_frames" / split / cat / name
            mdir = data / "gt_masks" / split / cat / name
            fdir.mkdir(parents=True, exist_ok=True)
            mdir.mkdir(parents=True, exist_ok=True)
            side = size // 3
            for f in range(1, S4_FRAMES + 1):
                y, x = (int(v) for v in rng.integers(0, size - side, 2))
                img = np.full((size, size, 3), 40, np.uint8)
                img[y:y + side, x:x + side] = [(220, 60, 60), (60, 220, 60), (60, 60, 220)][cls % 3]
                Image.fromarray(img).save(fdir / f"{name}_{f}.png")
                if split != "train" or f == 1:
                    mask = np.zeros((size, size), np.uint8)
                    mask[y:y + side, x:x + side] = 255
                    Image.fromarray(mask).save(mdir / f"{name}_{f}.png")
            wav = data / "audio_wav" / split / cat / f"{name}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            t = np.arange(5 * 16000) / 16000
            tone = 0.3 * np.sin(2 * np.pi * 300.0 * 2 ** (cls / 2) * t) if media else np.zeros_like(t)
            write_wav(wav, tone.astype(np.float32), 16000)
            rows.append((name, cat, split))
            out[split].append(name)
    pd.DataFrame(rows, columns=["name", "category", "split"]).to_csv(r / "s4_meta_data.csv", index=False)
    return out
