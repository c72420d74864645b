"""The README stays a front door (at most 200 lines) whose every relative link resolves, and the study YAML
of the GPU-cluster guide loads as a valid study. The docs site itself is built strictly by ``make docs``
(a broken internal link or anchor fails it), which CI runs before the tests."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_readme_is_at_most_200_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_every_relative_link_of_the_readme_names_a_file_of_the_repository():
    targets = [t.split("#")[0] for t in LINK.findall((ROOT / "README.md").read_text()) if "://" not in t]
    assert targets, "the README links to its docs"
    missing = [t for t in targets if t and not (ROOT / t).exists()]
    assert not missing


def test_every_page_in_the_docs_nav_exists():
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    pages = re.findall(r"[\w/.-]+\.md", str(nav))
    generated = {"reference/config.md", "reference/cli.md", "reference/api.md"}
    assert [p for p in pages if p not in generated and not (ROOT / "docs" / p).is_file()] == []


def test_the_gpu_cluster_guides_study_loads_and_runs_stage_2_on_gpus():
    from sbmoe_ray.config import load_config
    from sbmoe_ray.study.config import StudyConfig

    study = load_config(StudyConfig, ROOT / "studies" / "gpu_cluster.yaml")
    assert study.finetune.use_gpu and study.storage_path.startswith("/")
    assert 'studies/gpu_cluster.yaml' in (ROOT / "docs" / "guides" / "gpu-cluster.md").read_text()
