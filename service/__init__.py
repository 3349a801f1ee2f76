"""The lrprobe service: HTTP API, dashboard, settings, database and job use cases (no torch)."""
