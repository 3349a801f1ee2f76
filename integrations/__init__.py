"""lrprobe in training code: per-layer rates applied to the optimizer a framework built, and
re-probing while training goes on.

- :class:`Reprobe`: a plain training loop (``rp.step()`` after each optimizer step);
- ``lrprobe.integrations.lightning.LrprobeCallback``: a Lightning callback;
- ``lrprobe.integrations.huggingface.LrprobeTrainerCallback``: a Hugging Face ``TrainerCallback``.

Both callbacks take a :class:`ReprobeOptions` (or a prober and its keywords).

Each takes a prober: :class:`LocalProbe` (this machine, inline) or :class:`ServiceProbe` (an
lrprobe service through the SDK, in the background).
"""

from lrprobe.integrations._callbacks import ReprobeOptions
from lrprobe.integrations._probers import LocalProbe, Prober, ServiceProbe, job_optimizer
from lrprobe.integrations._reprobe import RateEvent, RateHistory, Reprobe

__all__ = [
    "LocalProbe",
    "Prober",
    "RateEvent",
    "RateHistory",
    "Reprobe",
    "ReprobeOptions",
    "ServiceProbe",
    "job_optimizer",
]
