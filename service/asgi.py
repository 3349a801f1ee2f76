"""The production ASGI entry point: the app built from the environment (``LRPROBE_*``).

``uvicorn --factory lrprobe.service.asgi:app_from_environment --workers N`` runs N API
processes; each builds its own engine and queue in its lifespan. The schema must be at head
(``lrprobe migrate``); keys are managed with ``lrprobe keys`` or an admin key.
"""

from __future__ import annotations

from fastapi import FastAPI

from lrprobe.service.app import create_app
from lrprobe.service.settings import Settings


def app_from_environment() -> FastAPI:
    return create_app(Settings())
