"""A generated MNIST-1D: ten 1-D "digit" patterns hidden in padding, shifts and noise.

This reimplements the *idea* of MNIST-1D (Greydanus, 2020: "Scaling down deep learning"), not the
published recipe's exact bytes: the ten templates below are our own 12-point shapes, the random
draws come from numpy's PCG64 in our own order, and smoothing uses our own Gaussian kernel. The
steps and default magnitudes follow the recipe, so the data has the same character: small enough
for a CPU, hard enough that an MLP and a CNN differ, and with spatial structure that a shuffled
version lacks.

Per example: standardised template + a random run of zeros (36–60) → stretched to 72 points →
random scale (±20 %) → random circular shift (0–47) → the zero padding replaced by spatially
correlated noise (σ = 2) → i.i.d. noise → random linear shear → resampled to 40 points. The set is
shuffled, then standardised to mean 0 and standard deviation 1 as a whole. Deterministic for a
seed and a numpy version.
"""

from __future__ import annotations

import functools

import numpy as np

TEMPLATE_LENGTH = 12
PADDING = (36, 60)
SCALE_COEFF = 0.4
MAX_TRANSLATION = 48
CORR_NOISE_SCALE = 0.25
CORR_NOISE_SIGMA = 2.0
IID_NOISE_SCALE = 2e-2
SHEAR_SCALE = 0.75
FINAL_LENGTH = 40
DEFAULT_NUM_SAMPLES = 5000
DEFAULT_SEED = 42

# Our own shapes, each starting and ending on the baseline: hump, dip-then-ramp, S-curve,
# double hump, ramp-down-and-jump, trough-then-hump, wide trough, jump-then-ramp, double trough,
# trough-then-plateau.
_RAW_TEMPLATES = np.array(
    [
        [0, 1.0, 1.6, 1.9, 2.0, 2.0, 2.0, 1.9, 1.7, 1.4, 0.9, 0],
        [0, -2.0, -1.9, -1.5, -1.1, -0.7, -0.3, 0.1, 0.5, 0.8, 0.2, 0],
        [0, 1.0, 1.5, 1.4, 0.9, 0.2, -0.4, -1.0, -1.5, -1.4, -0.9, 0],
        [0, 1.1, 1.6, 1.4, 0.8, 0.1, 0.2, 0.9, 1.5, 1.4, 0.9, 0],
        [0, -0.6, -1.2, -1.8, -2.4, -2.5, 0.0, 0.1, 0.0, 0.1, 0.0, 0],
        [0, -1.9, -2.0, -1.9, -2.0, 0.0, 1.0, 1.5, 1.5, 1.0, -0.5, 0],
        [0, -0.9, -1.5, -1.8, -2.0, -2.1, -2.1, -2.0, -1.8, -1.5, -0.9, 0],
        [0, 2.0, 1.9, 1.5, 1.1, 0.7, 0.3, -0.1, -0.5, -0.9, -0.2, 0],
        [0, -1.0, -1.6, -1.4, -0.8, 0.0, 0.0, -0.9, -1.5, -1.5, -1.0, 0],
        [0, -1.1, -1.5, -1.4, -0.9, 0.0, 0.1, 0.0, 0.1, -0.4, -0.8, 0],
    ],
    dtype=np.float64,
)


def templates() -> np.ndarray:
    """The ten templates, shape ``(10, 12)``: standardised, starting at 0, scaled by 1/6."""
    t = _RAW_TEMPLATES - _RAW_TEMPLATES.mean(axis=1, keepdims=True)
    t /= t.std(axis=1, keepdims=True)
    t -= t[:, :1]
    return t / 6.0


def make_mnist1d(
    num_samples: int = DEFAULT_NUM_SAMPLES, seed: int = DEFAULT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: float32 signals ``(num_samples, 40)`` and int64 labels ``(num_samples,)``.

    Classes are balanced (label ``i % 10`` before the shuffle). The arrays are read-only and
    shared between calls with the same arguments; copy them before changing them.
    """
    x, y = _make(num_samples, seed)
    return x, y


@functools.lru_cache(maxsize=4)
def _make(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = templates()
    labels = np.arange(num_samples, dtype=np.int64) % len(shapes)
    signals = np.stack([_transform(shapes[label], rng) for label in labels])
    order = rng.permutation(num_samples)
    x = signals[order]
    y = labels[order]
    x = ((x - x.mean()) / x.std()).astype(np.float32)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _transform(template: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    low, high = PADDING
    pad = int(rng.integers(low, high + 1))
    # a tiny offset keeps the template's own zeros apart from the padding that noise replaces
    signal = np.concatenate([template + 1e-8, np.zeros(pad)])
    signal = _resample(signal, TEMPLATE_LENGTH + high)
    signal = signal * (1.0 + SCALE_COEFF * (rng.random() - 0.5))
    signal = np.roll(signal, int(rng.integers(MAX_TRANSLATION)))
    noise = _smooth(CORR_NOISE_SCALE * rng.standard_normal(signal.shape), CORR_NOISE_SIGMA)
    signal = np.where(signal != 0, signal, noise)
    signal = signal + IID_NOISE_SCALE * rng.standard_normal(signal.shape)
    shear = SHEAR_SCALE * (rng.random() - 0.5)
    signal = signal - shear * np.linspace(-0.5, 0.5, len(signal))
    return _resample(signal, FINAL_LENGTH)


def _resample(signal: np.ndarray, length: int) -> np.ndarray:
    """Linear interpolation of ``signal`` onto ``length`` evenly spaced points."""
    old = np.linspace(0.0, 1.0, len(signal))
    return np.interp(np.linspace(0.0, 1.0, length), old, signal)


@functools.lru_cache(maxsize=2)
def _kernel(sigma: float) -> np.ndarray:
    radius = int(4 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def _smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing with mirrored edges (what scipy calls mode='reflect')."""
    kernel = _kernel(sigma)
    radius = len(kernel) // 2
    padded = np.pad(values, radius, mode="symmetric")
    return np.convolve(padded, kernel, mode="valid")
