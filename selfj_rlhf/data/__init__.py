"""Data: dataset specs, presets and their converters (``datasets``, whose ``iter_records`` reads a file or a spec),
prompt sets (``prompts``) and ``selfj data prepare`` (``prepare``). ``prompts.jsonl`` is the embedded prompt set.

May import ``core``.
"""
