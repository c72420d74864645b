"""A study's report, written by one function (:func:`write_report`) at the end of each stage and by
``sbmoe report``: ``<study>/report/report.md`` with its figures, and ``summary.json``.

The report is a list of sections (:data:`SECTIONS`, each a module of :mod:`sbmoe_ray.analysis.sections` that
owns its lines and its figures), in the order a reader needs them: the first screen (the study's regime, the
primary claim in one sentence with its interval, verdict and what the design could detect, then each
collection's result, secondary), stage 2's controls and learning curves, stage 2's detail (plans,
configurations, the proxy check), stage 1 (the proxy search and its figures), and the method. Everything comes
from the stages' results (:mod:`sbmoe_ray.analysis.result`); nothing is read back from disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from sbmoe_ray.analysis.evidence import not_run_lines
from sbmoe_ray.analysis.result import FinetuneResult, StageResult
from sbmoe_ray.analysis.sections.first_screen import first_screen
from sbmoe_ray.analysis.sections.method import method_section
from sbmoe_ray.analysis.sections.routing import routing_section
from sbmoe_ray.analysis.sections.stage1 import proxy_section
from sbmoe_ray.analysis.sections.stage2 import controls_section, detail_section
from sbmoe_ray.study.config import StudyConfig


@dataclass(frozen=True)
class ReportInputs:
    """What every section reads: the study, the stages' results, and why stage 2 did not run (if it did not)."""

    study: StudyConfig
    proxy: StageResult
    finetune: FinetuneResult | None = None
    not_run: dict | None = None


def _stage2(r: ReportInputs) -> list[str]:
    if r.not_run:
        return not_run_lines(r.not_run["reason"])
    if r.finetune is None:
        return []
    folder = r.study.layout.report_dir
    return [*detail_section(r.study, r.finetune),
            *routing_section(r.finetune.summary.routing, folder, "routing_finetune.png", "stage 2")]


SECTIONS: tuple[tuple[str, Callable[[ReportInputs], list[str]]], ...] = (
    ("the answer", lambda r: first_screen(r.study, r.proxy, r.finetune)),
    ("the controls and the curves", lambda r: controls_section(r.study, r.finetune) if r.finetune else []),
    ("stage 2", _stage2),
    ("stage 1", lambda r: proxy_section(r.study, r.proxy, answered=r.finetune is None)),
    ("method", lambda r: method_section(r.study, r.proxy, r.finetune)),
)


def write_report(study: StudyConfig, proxy: StageResult, finetune: FinetuneResult | None = None,
                 stage2_not_run: dict | None = None) -> None:
    """``<study>/report/report.md`` with its PNGs, and ``summary.json``: stage 1, and stage 2 once it ran (or
    why it did not: ``stage2_not_run``, ``{"reason": sentence, "plan": the budget's plan}``)."""
    layout = study.layout
    layout.report_dir.mkdir(parents=True, exist_ok=True)
    inputs = ReportInputs(study, proxy, finetune, stage2_not_run)
    lines = [line for _, section in SECTIONS for line in section(inputs)]
    summary = {"regime": {"finetune_trained_layers": study.finetune.trained_layers,
                          "label": study.depth_label() if study.promote else "stage 1 only"}, **proxy.summary.to_dict()}
    if stage2_not_run:
        summary["finetune"] = {"not_run": stage2_not_run}
    if finetune is not None:
        summary["finetune"] = finetune.summary_entry()
    layout.summary_file.write_text(json.dumps(summary, indent=2, default=str))
    layout.report_file.write_text("\n".join(lines) + "\n")
