"""Data references into validated datasets: the reference and its policy (``references``,
``policy``, ``remote``), the file formats (``formats``, ``images``, ``options``), the built-in
sets (``builtin``, ``mnist1d``), the ``Dataset`` itself (``dataset``) and the probe's batches
(``batching``). The torch-free reference rules they share with the service live in
:mod:`lrprobe.rules.data_refs`."""

from __future__ import annotations

from lrprobe.worker.intake.data.dataset import Dataset
from lrprobe.worker.intake.data.policy import DataPolicy
from lrprobe.worker.intake.data.references import open_dataset

__all__ = ["DataPolicy", "Dataset", "open_dataset"]
