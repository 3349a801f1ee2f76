"""The intake's rulebook: every check that both the service and the worker make, held once.

Torch-free and free of our other packages (import-linter holds it to that), so the service
may refuse at upload or submit time exactly what the worker's intake would refuse at probe
time, with the same code and sentence:

- ``checkpoint_formats``: what a checkpoint is, read from its first bytes and zip member names,
  and the refusals every format check shares;
- ``archives``: zip and tar member rules (names, links, duplicates, counts, expansion) and the
  capped extraction the worker uses;
- ``checkpoint_inspection``: the upload-time classification of a checkpoint (safetensors header
  bounds, torch.save pickles scanned, Hugging Face archives);
- ``pickle_scan``: the opcode scan of a ``torch.save`` pickle, never unpickled;
- ``hf_config``: ``config.json`` checks (bounded JSON, ``auto_map`` refused) and model-folder
  selection;
- ``dataset_inspection``: the upload-time sniffing of a dataset file;
- ``data_refs``: the data-reference policy that needs no DNS (schemes, data roots, host
  allow-list, built-in dataset names);
- ``json_limits``: JSON parsed with size and depth limits;
- ``regroup``: recommended rates into ``torch.optim`` parameter groups (see its docstring for
  why it lives here);
- ``calibration``: which optimizers get the longer λ₁ contest, and how much longer (the probe
  runs it, the dashboard shows it).

A refusal is a :class:`RuleError`; the service renders it as problem+json, the worker's intake
raises it as its own error (``IntakeError`` derives from it).
"""

from __future__ import annotations

from lrprobe.rules.errors import RuleError

__all__ = ["RuleError"]
