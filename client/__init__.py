"""The lrprobe SDK (pydantic + httpx only). The wire contract lives in :mod:`client.schemas`."""
