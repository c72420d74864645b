"""Pages generated at every ``make docs`` (mkdocs-gen-files), so they cannot drift from the code:

* ``reference/config.md``: every key of every config section, from the config dataclasses: its type, its
  default (a study's and ``sbmoe train``'s where they differ), its single-field limit (the rule its check
  states) and the comment written next to it; each class's cross-field rules as their source.
* ``reference/cli.md``: every ``sbmoe`` command's help, from the command-line parser.
* ``reference/api.md``: the public API of ``sbmoe_ray`` (its ``__init__``), rendered by mkdocstrings.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import os
import textwrap
import tokenize
import typing
from contextlib import redirect_stdout

import mkdocs_gen_files

import sbmoe_ray
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.train.config import TrainConfig


class _Nothing:
    """A value every limit refuses, so that a check states its rule."""

    def __repr__(self) -> str:
        return "?"


def field_comments(cls: type) -> dict[str, str]:
    """The comment beside each field of ``cls`` and the comment lines right above it, from its source."""
    lines, start = inspect.getsourcelines(cls)
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO("".join(lines)).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    out: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        name = line.strip().split(":")[0]
        if not line.startswith("    ") or line.startswith("     ") or not name.isidentifier():
            continue
        above, n = [], number - 1
        while n in comments and lines[n - 1].strip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        beside, n = [comments[number]] if number in comments else [], number + 1
        while beside and n in comments and lines[n - 1].lstrip().startswith("#") and _indent(lines[n - 1]) > 4:
            beside.append(comments[n])     # a beside-comment continued on the next lines (indented past the field)
            n += 1
        out[name] = " ".join(above + beside)
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def limit(field: dataclasses.Field) -> str:
    check = field.metadata.get("check")
    if check is None:
        return ""
    rule = check(_Nothing()) or ""
    return rule + (" (or null)" if check(None) is None and "null" not in rule else "")


def shown(value) -> str:
    if dataclasses.is_dataclass(value):
        return "(section)"
    text = repr(value) if isinstance(value, str) else str(value).replace("True", "true").replace("False", "false")
    return "`" + (text.replace("None", "null") if value is None or isinstance(value, (list, dict)) else text) + "`"


def section_table(cls: type, study_values, train_values) -> list[str]:
    comments = field_comments(cls)
    rows = ["| key | type | default | limit | meaning |", "|---|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        if field.name.isupper():
            continue
        value = getattr(study_values, field.name) if study_values is not None else None
        default = shown(value)
        if train_values is not None and study_values is not None and getattr(train_values, field.name) != value:
            default += f" (`sbmoe train`: {shown(getattr(train_values, field.name))})"
        kind = str(field.type).replace("|", "or")
        meaning = comments.get(field.name, "").replace("|", "\\|")
        rows.append(f"| `{field.name}` | {kind} | {default} | {limit(field)} | {meaning} |")
    return rows


def rules_source(cls: type) -> list[str]:
    if "rules" not in cls.__dict__:
        return []
    source = textwrap.dedent(inspect.getsource(cls.__dict__["rules"]))
    return ["", f'??? note "Cross-field rules of `{cls.__name__}`"', "", "    ```python",
            *("    " + line for line in source.rstrip().splitlines()), "    ```"]


def sections(cls: type, prefix: str, study_values, train_values):
    """(dotted prefix, class, study's values, sbmoe train's values) for ``cls`` and every nested section."""
    yield prefix, cls, study_values, train_values
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints.get(field.name)
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            yield from sections(kind, f"{prefix}.{field.name}" if prefix else field.name,
                                getattr(study_values, field.name) if study_values is not None else None,
                                getattr(train_values, field.name) if train_values is not None else None)


def config_page() -> str:
    out = ["# Config reference", "",
           "Generated from the config dataclasses at every docs build (`docs/_scripts/gen_reference.py`).",
           "A study's YAML has the keys of `StudyConfig` below; its `train` section, and the whole file of",
           "`sbmoe train --config`, the keys of `TrainConfig`. Defaults are a study's (the preset-free",
           "`StudyConfig()`); where `sbmoe train` starts elsewhere, its default follows. Any key can be given",
           "on the command line: `--set section.key=value`. A bad value stops before anything runs, with",
           "`<file>:<line>: config.<section>.<key>=<value>: <rule>`.", ""]
    study = StudyConfig()
    for prefix, cls, study_values, _ in sections(StudyConfig, "", study, None):
        train = TrainConfig() if prefix.startswith("train") else None
        if train is not None and prefix != "train":
            for part in prefix.split(".")[1:]:
                train = getattr(train, part)
        doc = cls.__doc__ if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else ""
        doc = inspect.cleandoc(doc)
        out += [f"## `{prefix or 'study'}`", "", f"`{cls.__module__}.{cls.__name__}`", "",
                doc.split("\n\n")[0].replace("\n", " "), "",
                *section_table(cls, study_values, train), *rules_source(cls), ""]
    return "\n".join(out)


def cli_page() -> str:
    from sbmoe_ray.cli import build_parser

    os.environ["COLUMNS"] = "110"
    parser = build_parser()
    out = ["# CLI reference", "", "Generated from the `sbmoe` parser at every docs build.", "",
           "```text", parser.format_help().rstrip(), "```", ""]
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subs.choices.items():
        helped = next((c.help for c in subs._choices_actions if c.dest == name), "")
        out += [f"## `sbmoe {name}`", "", helped[:1].upper() + helped[1:] + ".", "", "```text",
                sub.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def api_page() -> str:
    out = ["# Python API", "", "What `import sbmoe_ray` offers (its `__init__`); the names load on first use.", ""]
    for name in sbmoe_ray.__all__:
        target = sbmoe_ray._EXPORTS[name]
        module, attribute = target if isinstance(target, tuple) else (target, name)
        out += [f"## `sbmoe_ray.{name}`", "", f"::: {module}.{attribute}", "    options:",
                "      show_root_heading: false", "      heading_level: 3", ""]
    return "\n".join(out)


with redirect_stdout(io.StringIO()):
    pages = {"reference/config.md": config_page(), "reference/cli.md": cli_page(), "reference/api.md": api_page()}
for path, text in pages.items():
    with mkdocs_gen_files.open(path, "w") as page:
        page.write(text)
