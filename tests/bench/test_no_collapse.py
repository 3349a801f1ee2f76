"""Safety as a property: per-layer rates must not collapse where the single-group rate from the
same probe does not (issue 11).

The pinned case is the benchmark's ``wine-mlp`` (tanh MLP 13-64-64-3, plain SGD, batch 32, fresh
init, seed 8). gn-probe/0.2 recommended 0.69 / 1.12 / 6.80 by layer there: after 300 steps the
training loss was 0.000 but the best held-out loss 1.02 (chance level is ln 3 ≈ 1.10) and the
final one 5.5, while its own single-group rate (0.39) reached 0.035. A global rate of 3.16 sends
this network to chance level too.
"""

from __future__ import annotations

import pytest

from bench.quality.runner import Job, checkpoint, run_probe, train
from bench.quality.tasks import load

# gn-probe/0.2's rule, spelled out: λ₁ from {0.1, 0.3, 1}, bounds 10, no shrinkage.
OLD_RULE = {"calibrate": (0.1, 0.3, 1.0), "bounds": 10.0, "shrink": 0.0}


def _shortfall(rule: dict) -> tuple[float, float, float]:
    """(per-layer shortfall, per-layer final held-out, start): shortfall = (per-layer best
    held-out − single-group best) ÷ (start − single-group best); 0 ties the single-group rate,
    1 means the per-layer rates learned nothing the held-out data can see."""
    task = load("wine-mlp")
    job = Job("wine-mlp", "init", "sgd", seed=8, steps=300, warmup_steps=50, evals=12)
    start = checkpoint(task, job)
    result, _ = run_probe(task, job, start, rule)
    per_layer = train(task, job, start, {n: g.lr for g in result.groups for n in g.param_names})
    single = train(task, job, start, result.single_group_lr)
    assert not single.diverged and single.test_best < 0.1 * single.test_start
    span = single.test_start - single.test_best
    return (per_layer.test_best - single.test_best) / span, per_layer.test_final, single.test_start


@pytest.mark.slow
def test_the_pinned_case_collapsed_under_the_old_rule() -> None:
    # Without this the test below could pass on a case where nothing ever went wrong.
    shortfall, final, start = _shortfall(OLD_RULE)
    assert shortfall > 0.8 and final > start


@pytest.mark.slow
def test_the_default_rule_does_not_collapse_where_the_single_group_rate_does_not() -> None:
    shortfall, final, start = _shortfall({})
    assert shortfall <= 0.05 and final < 0.1 * start
