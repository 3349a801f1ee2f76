"""The web dashboard: server-rendered pages over the API's use cases, at ``/ui``."""

from lrprobe.service.dashboard.routes import router

__all__ = ["router"]
