"""The ``nbml`` command line (entry point: :func:`nbml.cli.main.main`)."""
