"""lrprobe's numeric core: the grouped-Newton probe (Wolinski, arXiv 2312.03885).

Pure torch; imports nothing else of lrprobe, so it can be used as a library::

    from lrprobe.worker.newton import probe, losses, minibatches
    result = probe(model, losses.cross_entropy, minibatches(x, y, batch_size=128))
    print(result)
    optimizer = torch.optim.SGD(result.param_groups(model))
"""

from lrprobe.worker.newton import losses
from lrprobe.worker.newton.directions import (
    NOT_LINEAR,
    OPTIMIZERS,
    OptimizerSpec,
    ParamGroupSpec,
    from_torch,
)
from lrprobe.worker.newton.errors import NumericalError, OutOfMemoryProbeError
from lrprobe.worker.newton.partition import (
    AUTO_MAX_GROUPS,
    Group,
    MaxGroups,
    PartitionRule,
    merge_consecutive,
    partition,
)
from lrprobe.worker.newton.precision import Precision
from lrprobe.worker.newton.probe import ProbeProgress, probe
from lrprobe.worker.newton.result import (
    METHOD_VERSION,
    Cost,
    GroupResult,
    ProbeResult,
    ScaleCheck,
    Spread,
)
from lrprobe.worker.newton.sampling import minibatches
from lrprobe.worker.newton.schedules import warmup_cosine
from lrprobe.worker.newton.solve import Solution, SolveStatus, cubic_model, solve
from lrprobe.worker.newton.summaries import LossFn, Summaries, summaries

__all__ = [
    "AUTO_MAX_GROUPS",
    "METHOD_VERSION",
    "NOT_LINEAR",
    "OPTIMIZERS",
    "Cost",
    "Group",
    "GroupResult",
    "LossFn",
    "MaxGroups",
    "NumericalError",
    "OptimizerSpec",
    "OutOfMemoryProbeError",
    "ParamGroupSpec",
    "PartitionRule",
    "Precision",
    "ProbeProgress",
    "ProbeResult",
    "ScaleCheck",
    "Solution",
    "SolveStatus",
    "Spread",
    "Summaries",
    "cubic_model",
    "from_torch",
    "losses",
    "merge_consecutive",
    "minibatches",
    "partition",
    "probe",
    "solve",
    "summaries",
    "warmup_cosine",
]
