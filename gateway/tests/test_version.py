"""`mosaic-gateway version` and `--version` name the installed build, without a configuration."""

from __future__ import annotations

import re

import pytest

from mosaic_gateway.cli import main

BUILD = re.compile(r"^mosaic-gateway \d+\.\d+\.\d+\S* \(\w+\)$")


def test_version_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert BUILD.match(capsys.readouterr().out.strip())


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert BUILD.match(capsys.readouterr().out.strip())
