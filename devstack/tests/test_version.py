"""`mosaic --version` names the installed build."""

from __future__ import annotations

import re

import pytest

from mosaic_devstack.cli import main


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert re.match(r"^mosaic \d+\.\d+\.\d+\S* \(\w+\)$", capsys.readouterr().out.strip())
