"""The routing section of either stage: co-routing against chance, expert vs collection, agreement across seeds
and collapse, with its figure."""

from __future__ import annotations

from sbmoe_ray.analysis import figures
from sbmoe_ray.analysis.routing import routing_lines


def routing_section(routing: dict, folder, name: str, stage: str) -> list[str]:
    lines = [f"## Routing of the chosen configurations ({stage})", "", *routing_lines(routing), ""]
    fig = figures.routing_figure(routing)
    if fig is not None:
        figures.save(fig, folder / name)
        lines += [f"![routing]({name})", ""]
    return lines
