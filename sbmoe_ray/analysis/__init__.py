"""What a study found: the trials' records and configuration groups (:mod:`.records`), comparisons with the
baseline (:mod:`.comparisons`), the proxy check (:mod:`.agreement`), the Pareto front (:mod:`.pareto`), one
result per stage (:mod:`.result`) with its typed answer (:mod:`.summary`; ``summary.json`` read back by
``StageSummary.from_dict``), the figures (:mod:`.figures`) and the report (:mod:`.report`)."""
