"""Pictures where users look: Recommendation.plot() with matplotlib's Agg backend, the notebook
HTML repr, and a re-probed run's rate history."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from lrprobe.client import Recommendation
from lrprobe.integrations import RateEvent, RateHistory
from tests.client.fakes import recommendation_body


def test_plot_draws_each_group_on_a_log_axis_with_intervals_and_the_single_group_line() -> None:
    rec = Recommendation(recommendation_body())
    ax = rec.plot()
    try:
        assert ax.get_yscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "2"]
        (points,) = [line for line in ax.get_lines() if line.get_marker() == "o"]
        assert list(points.get_ydata()) == [0.1, 0.02]
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert list(dashed[0].get_ydata()) == [0.05, 0.05]
        assert "flagged" in [t.get_text() for t in ax.get_legend().get_texts()]
    finally:
        plt.close(ax.figure)


def test_the_notebook_repr_is_an_escaped_html_table() -> None:
    body = recommendation_body()
    body["groups"][0]["name"] = "<enc>"
    page = Recommendation(body, job_id="j1")._repr_html_()
    assert page.count("<tr>") == 3 and "&lt;enc&gt;" in page and "<enc>" not in page
    assert "job j1" in page and "single-group lr: 0.05" in page


def test_a_rate_history_plots_each_group_over_the_steps() -> None:
    history = RateHistory([RateEvent(0, 0, {"a": 0.1, "b": 0.01}),
                           RateEvent(12, 10, {"a": 0.2, "b": 0.02})])  # fmt: skip
    ax = history.plot()
    try:
        assert ax.get_yscale() == "log"
        lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
        assert lines == {"a": [0.1, 0.2], "b": [0.01, 0.02]}
    finally:
        plt.close(ax.figure)


def test_the_text_and_notebook_views_show_the_notes_or_say_there_are_none() -> None:
    noted = Recommendation(recommendation_body(notes=["noisy (group 2): <uncertain>"]))
    assert noted.table().endswith("note: noisy (group 2): <uncertain>")
    assert str(noted) == noted.table()
    page = noted._repr_html_()
    assert "<li>noisy (group 2): &lt;uncertain&gt;</li>" in page and "<uncertain>" not in page
    quiet = Recommendation(recommendation_body(notes=[]))
    assert quiet.table().endswith("no notes") and "No notes." in quiet._repr_html_()
