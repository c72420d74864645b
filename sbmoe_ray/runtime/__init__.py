"""Where a run runs: precision resolved from the hardware (:mod:`.precision`), the machine and its measured
matmul ceiling (:mod:`.hardware`), a local Ray or a cluster and its shared storage (:mod:`.cluster`), and the
software a run's numbers depend on (:mod:`.environment`)."""
