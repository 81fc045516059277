"""ECG strips as a plain PyTorch Dataset: (signal (1, length), rhythm class).

``path`` is an ``.npz`` file holding ``signals`` (N, length) float32 and ``labels`` (N,)
int64 (your recordings, resampled to one rate and cut to one length); null makes a
synthetic set of three rhythms, the same every time: 0 normal sinus rhythm, 1 atrial
fibrillation (irregular RR, no P wave, fibrillatory baseline), 2 sinus rhythm with
premature ventricular beats (early, wide QRS, no P wave).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

CLASSES = ("normal", "afib", "pvc")
SPLITS = {"train": (0.0, 0.7), "val": (0.7, 0.85), "test": (0.85, 1.0)}


def _wave(t, center, amp, width):
    return amp * np.exp(-0.5 * ((t - center) / width) ** 2)


def _beat(t, at, p_wave=True, wide=False):
    qrs = 0.03 if wide else 0.012
    s = _wave(t, at - 0.03, -0.1, 0.01) + _wave(t, at, 1.0 if not wide else 0.8, qrs) + _wave(t, at + 0.03, -0.25, 0.01)
    s += _wave(t, at + 0.28, -0.35 if wide else 0.3, 0.06)
    return s + (_wave(t, at - 0.18, 0.12, 0.025) if p_wave else 0.0)


def strip(kind: int, rng, rate: int = 100, seconds: float = 5.0) -> np.ndarray:
    """One synthetic strip of rhythm ``kind`` (0, 1, 2)."""
    t = np.arange(int(rate * seconds)) / rate
    signal = 0.3 * np.sin(2 * np.pi * rng.uniform(0.15, 0.4) * t + rng.uniform(0, 6.3))  # baseline wander
    rr = rng.uniform(0.65, 1.0)
    at, count = rng.uniform(0.1, 0.5), 0
    while at < seconds + 0.3:
        premature = kind == 2 and count % 5 == 3
        signal += _beat(t, at, p_wave=kind == 0 or (kind == 2 and not premature), wide=premature)
        step = rr * rng.uniform(0.75, 1.25) if kind == 1 else rr * (0.6 if premature else 1.0) + rng.normal(0, 0.02)
        at, count = at + step, count + 1
    if kind == 1:  # fibrillatory waves
        signal += 0.04 * np.sin(2 * np.pi * rng.uniform(5, 8) * t + rng.uniform(0, 6.3))
    return (signal + rng.normal(0, 0.12, t.shape)).astype(np.float32)


def synthetic(size: int, seed: int, length: int) -> tuple:
    rng = np.random.default_rng(seed)
    labels = np.arange(size) % len(CLASSES)
    rng.shuffle(labels)
    signals = np.stack([strip(int(k), rng, seconds=length / 100) for k in labels])
    return signals, labels.astype(np.int64)


class ECGStrips(Dataset):
    """The ``split`` part (train 70%, val 15%, test 15%, a fixed order) of a set of strips."""

    def __init__(self, split: str = "train", path: str | None = None, size: int = 1200, length: int = 500,
                 seed: int = 0, normalize: bool = True):
        if split not in SPLITS:
            raise ValueError(f"split={split}: must be one of {', '.join(SPLITS)}")
        if path is None:
            signals, labels = synthetic(size, seed, length)
        else:
            with np.load(path) as f:
                signals, labels = f["signals"].astype(np.float32), f["labels"].astype(np.int64)
        lo, hi = (int(round(f * len(labels))) for f in SPLITS[split])
        x = torch.from_numpy(signals[lo:hi])
        if normalize:  # per strip: zero mean, unit variance
            x = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-6)
        self.signals, self.labels = x[:, None, :], torch.from_numpy(labels[lo:hi])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.signals[i], self.labels[i]
