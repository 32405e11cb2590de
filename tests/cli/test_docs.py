"""The docs name only flags and commands that exist: README.md, recipes/README.md, convert/README.md and
CONTRIBUTING.md against `hf-gqa`'s parsers and the recipe's."""

import argparse
import re

import pytest
from conftest import REPO

from hf_gqa.cli import COMMANDS, build_parser

DOCS = ["README.md", "recipes/README.md", "convert/README.md", "CONTRIBUTING.md"]
# Flags of other tools the docs show (pip, ruff, accelerate launch: its flags take underscores).
OTHER_TOOLS = {"--no-deps", "--check", "--cpu", "--multi_gpu", "--num_processes", "--num_machines",
               "--mixed_precision", "--dynamo_backend", "--config_file"}  # fmt: skip


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = set()
    for action in parser._actions:
        flags.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _flags(sub)
    return flags


def known_flags() -> set[str]:
    flags = _flags(build_parser())
    for script in (REPO / "benchmarks").glob("*.py"):  # the benchmark scripts' own flags
        flags |= set(re.findall(r"add_argument\(\s*\"(--[a-z0-9-]+)\"", script.read_text()))
    try:
        from hf_gqa.training.arguments import build_parser as recipe_parser
    except ImportError:  # the recipes extra is not installed
        return flags
    return flags | {f.replace("_", "-") for f in _flags(recipe_parser())}


@pytest.mark.parametrize("doc", DOCS)
def test_every_flag_in_the_docs_exists(doc):
    text = (REPO / doc).read_text()
    used = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]", text))
    assert not sorted(used - known_flags() - OTHER_TOOLS)


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_in_the_docs_exists(doc):
    text = (REPO / doc).read_text()
    used = set(re.findall(r"(?:^|`|&& )hf-gqa ([a-z]+)\b", text, flags=re.MULTILINE))  # commands, not prose
    assert not sorted(used - set(COMMANDS))
