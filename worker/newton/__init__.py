"""lrprobe's numeric core: the grouped-Newton probe (Wolinski, arXiv 2312.03885).

Pure torch; imports nothing else of lrprobe, so it can be used as a library::

    from worker.newton import probe, losses, minibatches
    result = probe(model, losses.cross_entropy, minibatches(x, y, batch_size=128))
    print(result)
    optimizer = torch.optim.SGD(result.param_groups(model))
"""

from worker.newton import losses
from worker.newton.directions import OPTIMIZERS, OptimizerSpec, from_torch
from worker.newton.errors import NumericalError
from worker.newton.partition import Group, PartitionRule, merge_consecutive, partition
from worker.newton.probe import ProbeProgress, probe
from worker.newton.result import (
    METHOD_VERSION,
    Cost,
    GroupResult,
    ProbeResult,
    ScaleCheck,
    Spread,
)
from worker.newton.sampling import minibatches
from worker.newton.solve import Solution, SolveStatus, cubic_model, solve
from worker.newton.summaries import LossFn, Summaries, summaries

__all__ = [
    "METHOD_VERSION",
    "OPTIMIZERS",
    "Cost",
    "Group",
    "GroupResult",
    "LossFn",
    "NumericalError",
    "OptimizerSpec",
    "PartitionRule",
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
]
