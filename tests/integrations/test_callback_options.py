"""Both framework callbacks take one ReprobeOptions, or a prober and the same keywords."""

from __future__ import annotations

import pytest

from lrprobe.integrations import LocalProbe, ReprobeOptions
from lrprobe.integrations.huggingface import LrprobeTrainerCallback
from lrprobe.integrations.lightning import LrprobeCallback
from tests.integrations.support import FAST_PROBE, endless, loss_fn

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("callback", [LrprobeCallback, LrprobeTrainerCallback])
def test_keywords_and_an_options_object_configure_a_callback_alike(callback: type) -> None:
    prober = LocalProbe(loss_fn, endless(), **FAST_PROBE)
    options = ReprobeOptions(prober, every=3, milestones=(10,), module="net", probe_first=False)

    by_keywords = callback(prober, every=3, milestones=(10,), module="net", probe_first=False)

    assert by_keywords.options == options == callback(options).options
    assert callback(prober).options == ReprobeOptions(prober)
    with pytest.raises(TypeError, match="not both"):
        callback(options, every=2)
    with pytest.raises(TypeError, match="evry"):
        callback(prober, evry=2)
