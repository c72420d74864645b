"""Confirmation on fresh seeds: what stage 2 chose is trained again, with seeds it never chose on, and only
those replicates are tested.

Stage 2 chooses a configuration by the validation objective averaged over its replicates. Testing those same
replicates carries their luck into the test Δ: among configurations that differ by little, the one whose
seeds happened to validate well wins, and its seeds keep part of that edge on the test set (the winner's
curse over seeds; Cawley & Talbot 2010 on selection bias; the same reason a held-out test set exists). So,
per base model, the chosen configuration, the baseline and the attribution controls (built from the chosen
configuration: its head, its learning rates) are trained again on
``finetune.confirm_seeds`` fresh seeds (replicate indices from :data:`CONFIRM_OFFSET`, so their training
seeds ``run.seed + replicate`` are disjoint from the selection seeds ``run.seed + 0 .. seeds-1``), on Ray
Train like any stage-2 trial (killed, they resume the same way: a Tuner of their own under
``<study>/confirm``), and only they are tested and compared. ``summary.json`` lists both sets of seeds.
"""

from __future__ import annotations

from sbmoe_ray.analysis.records import TrialRecord, group_key
from sbmoe_ray.stages.grid import fit_grid
from sbmoe_ray.stages.promotion import controls_of
from sbmoe_ray.stages.test_phase import chosen_groups, test_phase, tested_groups, trec_files
from sbmoe_ray.study.arms import is_arm
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.study.points import CONFIRM_OFFSET, Promotion
from sbmoe_ray.tracking import StudyTracker


def confirmation_entries(entries: list[Promotion], records: list[TrialRecord], mode: str) -> list[Promotion]:
    """The stage-2 entries to confirm: per base model its chosen configuration and baseline, and the attribution
    controls the plan kept, built from the chosen configuration (:func:`~sbmoe_ray.stages.promotion.controls_of`)."""
    keys = {g.key for g in tested_groups(records, mode)}
    picked = [e for e in entries if group_key(e.params) in keys and not is_arm(e.role)]
    chosen = {m: sbmoe for m, (sbmoe, _) in chosen_groups(records, mode).items() if sbmoe is not None}
    return picked + controls_of(entries, chosen)


def run_confirmation(study: StudyConfig, tracker: StudyTracker, entries: list[Promotion], seeds: int, mode: str,
                     cores: int | None) -> list[TrialRecord] | None:
    """Train ``entries`` on ``seeds`` fresh seeds (resumed when interrupted) and test them; their records, or
    None if a trial failed (run the study again to retry it)."""

    points = [e.point(CONFIRM_OFFSET + r) for e in entries for r in range(seeds)]
    print(f"\nstage 2, confirmation: {len(entries)} configurations (the chosen ones, baselines and controls) x "
          f"{seeds} fresh seed(s) = {len(points)} trials; only these are tested", flush=True)
    stage = tracker.for_stage("confirm", "stage 2: confirmation on fresh seeds")
    records = fit_grid(study, stage, points, confirm=True)
    if records is None:
        return None
    test_phase(study, records, mode, cores)
    stage.log_trial_files(trec_files(records))
    stage.finish_stage()
    return records
