"""The terminal view of a recommendation prints names and notes as text."""

from __future__ import annotations

import io

from rich.console import Console

from lrprobe.cli.render import print_recommendation
from lrprobe.client import Recommendation
from tests.client.fakes import recommendation_body


def test_group_names_and_notes_with_brackets_are_printed_as_text() -> None:
    body = recommendation_body(notes=["negative (group enc[0]): see [weights]"])
    body["groups"][0]["name"] = "enc[0]"
    console = Console(width=120, record=True, file=io.StringIO())
    print_recommendation(Recommendation(body), console)
    text = console.export_text()
    assert "│ enc[0] " in text
    assert "note: negative (group enc[0]): see [weights]" in text
