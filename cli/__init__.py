"""The ``lrprobe`` command line."""
