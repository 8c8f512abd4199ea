"""Adapters that let distributed RL engines call a ``selfj serve`` judge server (see recipes/README.md): ``verl``,
which verl loads by file path as a custom reward function.

May import ``judge`` and ``serving``'s client.
"""
