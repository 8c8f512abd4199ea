"""Adapters that let distributed RL engines call a ``selfj serve`` judge server (see recipes/README.md)."""
