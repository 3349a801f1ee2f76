"""``python -m lrprobe.cli``: the same as the ``lrprobe`` command."""

from lrprobe.cli.app import main

main()
