"""README documents every setting and every CLI command, and its two commands exist."""

import re
from pathlib import Path

import pytest

from stream.commands import REGISTRY
from stream.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
MAKEFILE = (Path(__file__).resolve().parents[2] / "Makefile").read_text()


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented(name):
    assert f"CHURN_{name.upper()}" in README


@pytest.mark.parametrize("command", sorted(REGISTRY))
def test_every_command_is_documented(command):
    assert f"churn-stream {command}" in README


def test_the_two_readme_commands_are_make_targets():
    for target in ("demo", "test"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", MAKEFILE, re.MULTILINE)
