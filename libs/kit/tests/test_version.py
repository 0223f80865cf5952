from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import mosaic_kit
from mosaic_kit.version import BUILD_FILE, build_info, git_commit, stamp


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """An importable package outside any git checkout, under a name no other test uses."""
    name = f"stamped_{uuid.uuid4().hex[:8]}"
    directory = tmp_path / name
    directory.mkdir()
    (directory / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("MOSAIC_GIT_COMMIT", raising=False)
    return name, directory


def test_stamp_is_what_the_package_reports(
    package: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, directory = package
    path = stamp(directory, "1a2b3c4")
    assert path == directory / BUILD_FILE
    assert json.loads(path.read_text())["commit"] == "1a2b3c4"
    # The stamp outranks the environment: it is what was actually built.
    monkeypatch.setenv("MOSAIC_GIT_COMMIT", "from-env")
    assert build_info(name).commit == "1a2b3c4"


def test_unstamped_package_uses_the_environment(
    package: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, _ = package
    monkeypatch.setenv("MOSAIC_GIT_COMMIT", "env5678")
    assert build_info(name).commit == "env5678"


def test_outside_a_checkout_without_hints_the_commit_is_unknown(
    package: tuple[str, Path],
) -> None:
    name, directory = package
    assert git_commit(directory) is None
    info = build_info(name)
    assert info.commit == "unknown"
    assert info.version == "0.0.0+unknown"  # not an installed distribution


def test_installed_distribution_reports_its_version_and_commit() -> None:
    info = build_info("mosaic_kit")
    assert info.version == "0.1.0"
    stamp_file = Path(mosaic_kit.__file__).parent / BUILD_FILE
    if stamp_file.exists():
        expected = json.loads(stamp_file.read_text())["commit"]
    else:
        expected = (
            os.environ.get("MOSAIC_GIT_COMMIT")
            or subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    assert info.commit == expected


def test_stamp_command_line(package: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, directory = package
    result = subprocess.run(
        [sys.executable, "-m", "mosaic_kit.version", "stamp", str(directory)],
        capture_output=True,
        text=True,
        env={"MOSAIC_GIT_COMMIT": "c0ffee1", "PATH": "/usr/bin:/bin"},
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((directory / BUILD_FILE).read_text())["commit"] == "c0ffee1"


def test_stamp_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        stamp(tmp_path / "nope", "abc")
