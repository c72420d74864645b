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


SECTIONS = {"train", "proxy", "finetune", "analysis", "optim", "model", "data", "memory", "scaling", "run", "loss",
            "evaluation", "space"}
# What a user reads (the contributor's pages, stack notes and results pages keep their dated records)
USER_PAGES = [ROOT / "README.md", ROOT / "docs" / "index.md", ROOT / "docs" / "getting-started.md",
              *sorted((ROOT / "docs" / "guides").glob("*.md")), *sorted((ROOT / "docs" / "concepts").glob("*.md"))]


def _resolves(key: str) -> bool:
    """Whether a dotted config key names a field of the study config or of the training config."""
    import dataclasses

    from sbmoe_ray.study.config import StudyConfig
    from sbmoe_ray.train.config import TrainConfig

    def walk(cls, parts) -> bool:
        if not parts:
            return True
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if parts[0] not in fields:
            return False
        nested = fields[parts[0]].default_factory if fields[parts[0]].default_factory is not dataclasses.MISSING \
            else None
        sub = type(nested()) if nested else None
        if len(parts) == 1:
            return True
        return dataclasses.is_dataclass(sub) and walk(sub, parts[1:])

    parts = key.split(".")
    return parts[0] == "space" or walk(StudyConfig, parts) or walk(TrainConfig, parts)


def test_every_config_key_the_user_pages_name_is_one_the_config_accepts():
    pattern = re.compile(r"`([a-z_]+(?:\.[a-z_0-9]+)+)(?:[:= ][^`]*)?`")
    wrong = [(page.name, key) for page in USER_PAGES for key in pattern.findall(page.read_text())
             if key.split(".")[0] in SECTIONS and not _resolves(key)]
    assert not wrong, wrong
    assert not _resolves("train.data_dir") and _resolves("train.data.data_dir")     # the key a page once named


def test_no_user_page_carries_a_dated_measurement():
    """Measurements live on dated results pages; a guide may link one, but carries no date of its own."""
    dated = [(page.name, line.strip()[:80]) for page in USER_PAGES for line in page.read_text().splitlines()
             if re.search(r"\b20\d\d-\d\d-\d\d\b", re.sub(r"\]\([^)]*\)|results/[\w.-]+", "", line))]
    assert not dated, dated


def _architecture():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_architecture", ROOT / "docs" / "_scripts" / "gen_architecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_architecture_page_is_generated_from_the_layers_and_the_docstrings():
    page = (ROOT / "docs" / "concepts" / "architecture.md").read_text()
    assert page == _architecture().render(), (
        "docs/concepts/architecture.md drifted: python docs/_scripts/gen_architecture.py > docs/concepts/architecture.md")


def test_every_module_is_in_a_layer_and_no_import_runs_back_up_the_layers():
    import ast

    import sbmoe_ray

    layer_of = {unit: i for i, (_, units) in enumerate(sbmoe_ray.LAYERS) for unit in units}
    package = ROOT / "sbmoe_ray"
    files = [p for p in package.rglob("*.py") if p != package / "__init__.py"]
    units = {p.relative_to(package).parts[0].removesuffix(".py") for p in files}
    assert units - set(layer_of) == set(), "a module outside sbmoe_ray.LAYERS"
    upward = []
    for file in files:
        own = layer_of[file.relative_to(package).parts[0].removesuffix(".py")]
        for node in ast.walk(ast.parse(file.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                parts = name.split(".")
                if parts[0] == "sbmoe_ray" and len(parts) > 1 and layer_of.get(parts[1], -1) > own:
                    upward.append(f"{file.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert upward == []
