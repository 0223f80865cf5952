"""`mosaic new service NAME`: a complete service on the kit's chassis, wired into the workspace.

It writes, from `templates/service/` (`{{name}}`-style placeholders, in paths too):
`services/NAME/` (package, settings, api / rpc / service / store / events / tables modules, the
first migration, tests against real PostgreSQL and NATS) and `docs/services/NAME.md`; then
registers the package everywhere the workspace lists its members (root `pyproject.toml`: uv
workspace, pytest paths, mypy, the import contracts) and appends it to the service registry
(`mosaic up` runs it, its gateway routes come from its OpenAPI). Last, through the Makefile, it
locks and syncs the environment, regenerates docs/configuration.md, formats the new code and
re-renders compose.yaml (its Dockerfile comes from the template like the rest).

Every refusal (a bad, reserved or taken name; a route prefix another service uses) happens before
anything is written. Files are staged beside their place and moved in; the registry is written
last, so an interrupted run leaves `services/NAME` without a registry entry, which a new run
names as taken (delete the folder to start over).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Array

from mosaic_devstack.services import RESERVED, RegistryError, load_registry

__all__ = ["TEMPLATES", "Names", "ScaffoldError", "check", "new_service", "register", "render"]

TEMPLATES = Path(__file__).with_name("templates") / "service"
REGISTRY_PATH = Path("devstack/src/mosaic_devstack/services.toml")
# A Python package (`mosaic_NAME`), a PostgreSQL schema, a NATS subject token and stream name, a
# command and a URL segment all at once.
NAME = re.compile(r"[a-z][a-z0-9]{1,29}")
# Beyond the devstack's own process names: the workspace's other packages, and words the platform
# uses in subjects, streams and paths.
_ALSO_RESERVED = frozenset(
    {"kit", "chassis", "devstack", "docs", "test", "tests", "events", "dlq", "srv", "v1"}
)


class ScaffoldError(ValueError):
    """Why the service cannot be generated; nothing was written."""


@dataclass(frozen=True)
class Names:
    name: str

    @property
    def package(self) -> str:
        return f"mosaic_{self.name}"

    @property
    def distribution(self) -> str:
        return f"mosaic-{self.name}"

    @property
    def command(self) -> str:
        return f"mosaic-{self.name}"

    def placeholders(self, today: str) -> dict[str, str]:
        return {
            "{{name}}": self.name,
            "{{Name}}": self.name.capitalize(),
            "{{NAME}}": self.name.upper(),
            "{{package}}": self.package,
            "{{distribution}}": self.distribution,
            "{{command}}": self.command,
            "{{date}}": today,
        }


def _fill(text: str, placeholders: dict[str, str]) -> str:
    for key, value in placeholders.items():
        text = text.replace(key, value)
    return text


def check(root: Path, name: str, taken_prefixes: Iterable[str] = ()) -> Names:
    """The names of service `name` in workspace `root`, or `ScaffoldError` saying why not."""
    if not NAME.fullmatch(name):
        raise ScaffoldError(
            f"{name!r} is not a service name: 2 to 30 characters, lower-case letters and digits, "
            "starting with a letter (it becomes a package, a schema, NATS subjects and a URL)"
        )
    if name in RESERVED or name in _ALSO_RESERVED:
        raise ScaffoldError(f"{name!r} is reserved: Mosaic uses it itself; pick another name")
    names = Names(name)
    if not (root / "pyproject.toml").is_file() or not (root / REGISTRY_PATH).is_file():
        raise ScaffoldError(f"{root} is not a Mosaic workspace (no pyproject.toml and registry)")
    try:
        registered = {s.name for s in load_registry(root / REGISTRY_PATH)}
    except RegistryError as exc:
        raise ScaffoldError(str(exc)) from exc
    if name in registered:
        raise ScaffoldError(f"a service named {name!r} is already in the registry")
    for path in (root / "services" / name, root / "docs" / "services" / f"{name}.md"):
        if path.exists():
            raise ScaffoldError(f"{path.relative_to(root)} already exists")
    if name in set(taken_prefixes):
        raise ScaffoldError(f"/v1/{name}/ is a route prefix another service already serves")
    return names


def render(names: Names, today: str) -> dict[Path, str]:
    """Each file of the new service (a path relative to the workspace) and its text."""
    placeholders = names.placeholders(today)
    files: dict[Path, str] = {}
    for template in sorted(TEMPLATES.rglob("*.tmpl")):
        relative = template.relative_to(TEMPLATES).with_suffix("")
        files[Path(_fill(str(relative), placeholders))] = _fill(template.read_text(), placeholders)
    return files


def _append(array: Any, value: str, *, after: str | None = None) -> None:
    """Add `value` to a TOML array once, after the last entry starting with `after` if any."""
    if not isinstance(array, Array) or value in array:
        return
    if after is not None:
        last = max((i for i, item in enumerate(array) if str(item).startswith(after)), default=-1)
        if last >= 0:
            array.insert(last + 1, value)
            return
    array.append(value)


def register(pyproject: str, names: Names) -> str:
    """The workspace's root `pyproject.toml` with the new member listed wherever members are."""
    doc = tomlkit.parse(pyproject)
    project: Any = doc["project"]
    _append(project["dependencies"], names.distribution)
    tool: Any = doc["tool"]
    _append(tool["uv"]["workspace"]["members"], f"services/{names.name}", after="services/")
    sources = tool["uv"]["sources"]
    if names.distribution not in sources:
        # Parsed rather than built, to keep the spacing of its neighbours.
        sources[names.distribution] = tomlkit.parse("x = { workspace = true }")["x"]
    tests = f"services/{names.name}/tests"
    pytest_options = tool["pytest"]["ini_options"]
    _append(pytest_options["testpaths"], tests, after="services/")
    _append(pytest_options["pythonpath"], tests, after="services/")
    _append(tool["mypy"]["packages"], names.package)
    _append(tool["ruff"]["lint"]["isort"]["known-first-party"], names.package)
    importlinter = tool["importlinter"]
    _append(importlinter["root_packages"], names.package)
    for contract in importlinter["contracts"]:
        if contract.get("id") == "service-layer":
            _append(contract["source_modules"], f"{names.package}.service")
        elif contract.get("id") == "services-independent":
            _append(contract["modules"], names.package)
    return tomlkit.dumps(doc)


def registry_entry(names: Names) -> str:
    return (
        "\n[[service]]\n"
        f'name = "{names.name}"\n'
        f'command = ["{names.command}"]\n'
        f'definition = "{names.package}.app:{names.name.upper()}"\n'
        f'schema = "{names.name}"\n'
        "seed = false\n"
        # Its NATS user: it verifies tokens with auth's keys and follows auth's revocations.
        'nats_consumes = ["auth"]\n'
        'nats_calls = ["auth.jwks.get"]\n'
    )


def _replace(path: Path, text: str) -> None:
    """Write `path` whole or not at all."""
    fd, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:
        out.write(text)
    Path(staged).chmod(0o644)
    Path(staged).replace(path)


def _write_files(root: Path, files: dict[Path, str]) -> None:
    """Stage every file in a temporary folder inside `root`, then move each top folder in."""
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".mosaic-new-"))
    try:
        for relative, text in files.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        for group in sorted({Path(*p.parts[:2]) for p in files}):
            destination = root / group
            destination.parent.mkdir(parents=True, exist_ok=True)
            if not destination.exists():
                (staging / group).rename(destination)  # the service's folder: in at once
                continue
            # A folder other services share (docs/services): file by file, none replaced (a
            # name already there was refused before anything was written).
            for relative in sorted(p for p in files if p.parts[:2] == group.parts):
                target = root / relative
                if target.exists():
                    raise FileExistsError(f"{relative} exists")
                target.parent.mkdir(parents=True, exist_ok=True)
                (staging / relative).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def new_service(
    root: Path,
    name: str,
    *,
    taken_prefixes: Iterable[str] = (),
    finish: bool = True,
    say: Callable[[str], None] = print,
) -> Names:
    """Generate service `name` in workspace `root`; see the module's docstring.

    `finish=False` skips the Makefile steps (lock, sync, docs, format), for tests of the writing.
    """
    root = root.resolve()
    names = check(root, name, taken_prefixes)
    files = render(names, datetime.now(UTC).date().isoformat())
    pyproject = register((root / "pyproject.toml").read_text(), names)
    registry = (root / REGISTRY_PATH).read_text().rstrip("\n") + "\n" + registry_entry(names)

    _write_files(root, files)
    _replace(root / "pyproject.toml", pyproject)
    _replace(root / REGISTRY_PATH, registry)
    say(f"wrote services/{name}/ and docs/services/{name}.md; registered {names.package}")
    if finish:
        _finish(root, names, say)
    return names


def _finish(root: Path, names: Names, say: Callable[[str], None]) -> None:
    service = f"services/{names.name}"
    steps = [
        (["make", "-s", "lock"], "uv.lock"),
        (["make", "-s", "docs"], "the environment and docs/configuration.md"),
        ([".venv/bin/ruff", "check", "--fix", "--quiet", service], "lint fixes"),
        ([".venv/bin/ruff", "format", "--quiet", service], "formatting"),
        # After the sync: rendering imports the new service for its gateway routes.
        (
            [".venv/bin/python", "-m", "mosaic_devstack.cli", "compose", "--root", "."],
            "compose.yaml and its gateway configuration",
        ),
    ]
    for argv, what in steps:
        done = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ScaffoldError(
                f"the service is written, but `{' '.join(argv)}` failed ({what}):\n"
                f"{done.stdout}{done.stderr}"
            )
        say(f"updated {what}")
    say(
        f"\nnext: make test ARGS={service}/tests   (then `make lint`, `make run`)\n"
        f"      its page: docs/services/{names.name}.md; the guide: docs/new-service.md"
    )


def route_prefixes(root: Path) -> set[str]:
    """First path segments after `/v1/` of the routes of every service registered in `root` that
    this environment can import (importing builds each app, offline)."""
    from fastapi.routing import APIRoute, iter_route_contexts

    prefixes: set[str] = set()
    for service in load_registry(root / REGISTRY_PATH):
        try:
            definition = service.load_definition()
        except RegistryError:
            continue  # not installed here: its name is still refused through the registry
        app = definition.app(definition.settings())
        for context in iter_route_contexts(app.routes):
            route = context.route
            if isinstance(route, APIRoute) and route.path.startswith("/v1/"):
                prefixes.add(route.path.split("/")[2])
    return prefixes
