"""One module per ``python -m trainrelay`` command: ``add_arguments(parser)`` and ``run(args)``."""
