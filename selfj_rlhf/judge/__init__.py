"""The judge at inference: ``SelfJudge`` and ``ScoreDetails`` (``self_judge``), its templates, score-position
features, the inference half of the scalar head with its score map and length control (``head``), judge directories
and the shipped judges (``directory``, ``shipped/``), TRL's judge protocols (``protocols``), and how a score becomes
a reward (``reward_signal``: the reward options, items and transforms that the in-process reward and the server share).

May import ``core`` and ``data``.
"""
