"""A re-probed training run on the dashboard: each job page of the run draws the run's rates
per group over the training steps; a job without a run has no such chart."""

from __future__ import annotations

import re

from tests.service.api_support import RunningApi
from tests.service.test_dashboard import finished_job, sign_in, two_groups


def _with_lrs(first: float, second: float) -> dict:
    result = two_groups()
    result["groups"][0]["lr"], result["groups"][1]["lr"] = first, second
    return result


def test_the_job_pages_of_a_run_plot_its_rates_over_the_steps(api: RunningApi) -> None:
    sign_in(api, api.key_a)
    model_id = api.model_id(api.key_a)
    ids = [
        finished_job(
            api,
            api.key_a,
            _with_lrs(0.1 * (i + 1), 0.01),
            model_id=model_id,
            run="digits-1",
            run_step=step,
        )
        for i, step in enumerate([0, 500, 1000])
    ]
    finished_job(api, api.key_a, _with_lrs(9.0, 9.0), model_id=model_id, run="other")

    page = api.client.get(f"/ui/jobs/{ids[1]}").text
    assert "Rates over run digits-1" in page and "3 so far" in page
    lines = re.findall(r'<g class="history-line" data-group="([^"]+)">', page)
    assert lines == ["layers.0", "layers.2"]
    tips = re.findall(r"<title>layers\.0 at step (\d+): lr ([\d.]+)</title>", page)
    assert tips == [("0", "0.1"), ("500", "0.2"), ("1000", "0.3")]
    assert "lr 9" not in page  # another run's job is not part of this one


def test_a_job_outside_any_run_has_no_history_chart(api: RunningApi) -> None:
    sign_in(api, api.key_a)
    page = api.client.get(f"/ui/jobs/{finished_job(api, api.key_a)}").text
    assert "history-chart" not in page
