"""MLflow tracking of a study: a parent run, a run per stage, a run per trial, kept across resumes.

The tracker only records: it maps a study's config, its stages' results and its report to MLflow calls
(:mod:`.runs`); the Tune callback logs each trial as it runs (:mod:`.callback`); the store is checked
before any work (:mod:`.store`). Statistics come from the stage results (:mod:`sbmoe_ray.analysis.result`),
dataset fingerprints from the data layer (:mod:`sbmoe_ray.data.provenance`).
"""

from sbmoe_ray.tracking.callback import MlflowStudyCallback
from sbmoe_ray.tracking.runs import StudyTracker
from sbmoe_ray.tracking.store import check_tracking_uri

__all__ = ["MlflowStudyCallback", "StudyTracker", "check_tracking_uri"]
