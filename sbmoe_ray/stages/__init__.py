"""Running a study: the checks before any work (:mod:`.prepare`), one trial (:mod:`.trial`), stage 1 the proxy
search (:mod:`.proxy`), what stage 2 fine-tunes (:mod:`.promotion`) within the budget (:mod:`.costs`,
:mod:`.budget`), stage 2 (:mod:`.finetune`) and its test phase (:mod:`.test_phase`), and the main job from
first check to report (:mod:`.pipeline`)."""
