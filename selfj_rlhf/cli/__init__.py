"""The command line: ``selfj`` and its registered subcommands (``main``), the recipe plumbing that the scripts under
``recipes/`` share (``recipes``: TRL's parser, config files, errors as one line), CPU worker launch (``launch``) and
dry runs (``dry_run``).

May import every other sub-package; nothing imports it.
"""
