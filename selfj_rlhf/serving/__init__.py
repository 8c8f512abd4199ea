"""The judge over HTTP: ``selfj serve`` (``server``, OpenRLHF's, verl's, TRL's and slime's request forms, dynamic
batching) and its client (``client``, what ``SelfJReward(judge_server_url=...)`` calls).

May import ``core``, ``data`` and ``judge``. The server needs the ``serve`` extra (fastapi); the client does not.
"""
