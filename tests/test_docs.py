"""The docs match the code: every training-config key and every command is in docs/commands-and-config.md,
every relative link in README and docs/ points at a file that exists, and the repository's docs
cite no files outside it."""

import dataclasses
import re
from pathlib import Path

from lingvla.config import DepthConfig, ModelConfig
from lingvla.train.config import DataConfig, OptimConfig, ParallelConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]


def config_keys() -> list[str]:
    keys = []
    sections = (("", TrainConfig), ("data.", DataConfig), ("optim.", OptimConfig), ("parallel.", ParallelConfig),
                ("model.", ModelConfig), ("model.depth.", DepthConfig))
    for prefix, cls in sections:
        for field in dataclasses.fields(cls):
            default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
            if not dataclasses.is_dataclass(default):
                keys.append(prefix + field.name)
    return keys


def test_reference_names_every_config_key_and_command():
    import argparse

    from lingvla.cli import build_parser

    text = (ROOT / "docs" / "commands-and-config.md").read_text()
    undocumented = [k for k in config_keys() if f"`{k}`" not in text and f"`{k} [" not in text]
    assert not undocumented, f"docs/commands-and-config.md lacks config keys {undocumented}"
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [c for c in commands if c != "bench" and f"`lingvla {c}" not in text]
    assert not missing, f"docs/commands-and-config.md lacks commands {missing}"


def test_relative_links_resolve_and_nothing_outside_the_repository_is_cited():
    broken, outside = [], []
    for doc in DOCS:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.name}: {target}")
        if re.search(r"\.\./shared|REFERENCE\.md|RELEASED\.md|DEVELOPERS\.md", text):
            outside.append(doc.name)
    assert not broken, broken
    assert not outside, outside
