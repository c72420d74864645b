"""What a study is, before anything runs: its config and its two stages, proxy and finetune (:mod:`.config`),
the search space as one table (:mod:`.space`), what a trial trains and what stage 1 hands stage 2
(:mod:`.points`), machine-dependent settings (:mod:`.policy`) and every file it leaves (:mod:`.layout`).
Nothing here imports torch or Ray."""
