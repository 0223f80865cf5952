"""The version and git commit a service reports (`<service> version`, `/healthz`).

The version is the installed distribution's (`importlib.metadata`). The commit is stamped into
the package at build time as `<package>/_build.json`, by running, before `uv build` or in the
Dockerfile::

    python -m mosaic_kit.version stamp services/auth/src/mosaic_auth [--commit SHA]

(the commit defaults to `$MOSAIC_GIT_COMMIT`, then `git rev-parse --short HEAD`). Hatchling
includes the file in the wheel because it sits inside the package. Without a stamp (a dev
checkout) the commit comes from `$MOSAIC_GIT_COMMIT`, then git, else `unknown`.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "BUILD_FILE",
    "COMMIT_ENV",
    "BuildInfo",
    "add_version_flag",
    "build_info",
    "describe",
    "git_commit",
    "resolve_commit",
    "stamp",
]

BUILD_FILE = "_build.json"
COMMIT_ENV = "MOSAIC_GIT_COMMIT"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class BuildInfo:
    version: str
    commit: str


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _distribution_version(package: str) -> str:
    names = importlib.metadata.packages_distributions().get(package, [package])
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "0.0.0+unknown"


def git_commit(directory: Path | None = None) -> str | None:
    """The short HEAD commit of the checkout holding `directory`, or None outside one."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def _stamped_commit(package_dir: Path | None) -> str | None:
    if package_dir is None:
        return None
    try:
        data = json.loads((package_dir / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return None
    commit = data.get("commit") if isinstance(data, dict) else None
    return commit if isinstance(commit, str) and commit else None


def resolve_commit(package_dir: Path | None = None) -> str:
    """The stamp in `package_dir`, else `$MOSAIC_GIT_COMMIT`, else git, else `unknown`."""
    return (
        _stamped_commit(package_dir)
        or os.environ.get(COMMIT_ENV)
        or git_commit(package_dir)
        or UNKNOWN
    )


@functools.cache
def build_info(package: str) -> BuildInfo:
    """Version and commit of the importable `package` (e.g. `mosaic_auth`); cached."""
    return BuildInfo(
        version=_distribution_version(package), commit=resolve_commit(_package_dir(package))
    )


def stamp(package_dir: Path | str, commit: str | None = None) -> Path:
    """Write `<package_dir>/_build.json` with the commit being built; returns its path."""
    directory = Path(package_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"no package directory {directory}")
    resolved = commit or os.environ.get(COMMIT_ENV) or git_commit(directory) or UNKNOWN
    path = directory / BUILD_FILE
    built_at = datetime.now(UTC).isoformat(timespec="seconds")
    path.write_text(json.dumps({"commit": resolved, "built_at": built_at}) + "\n")
    return path


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mosaic_kit.version")
    sub = parser.add_subparsers(dest="command", required=True)
    stamp_cmd = sub.add_parser("stamp", help=f"write {BUILD_FILE} into a package before building")
    stamp_cmd.add_argument("package_dir", type=Path)
    stamp_cmd.add_argument("--commit", help=f"commit to record (default: ${COMMIT_ENV}, then git)")
    args = parser.parse_args(argv)
    path = stamp(args.package_dir, args.commit)
    print(path.read_text().strip(), "->", path)
    return 0


if __name__ == "__main__":
    sys.exit(_main())


class _VersionAction(argparse.Action):
    """`--version`: prints `describe()` and exits; the stamp is looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        self.describe: Callable[[], str] = kwargs.pop("describe")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        print(self.describe())
        parser.exit()


def add_version_flag(parser: argparse.ArgumentParser, describe: Callable[[], str]) -> None:
    """Give `parser` a `--version` flag printing `describe()` (`mosaic-auth 0.1.0 (abc1234)`)."""
    parser.add_argument(
        "--version", action=_VersionAction, describe=describe, help="print the version"
    )


def describe(program: str, package: str) -> str:
    """`<program> <version> (<commit>)` of the installed `package`."""
    info = build_info(package)
    return f"{program} {info.version} ({info.commit})"
