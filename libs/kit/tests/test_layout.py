"""The kit's shape: a framework-free core, adapters as packages, one home per public name.

`make lint` checks the import contracts statically (import-linter, `[tool.importlinter]` in the
root pyproject.toml); these tests keep that configuration honest (a new core module cannot slip
out of the core contract) and check at run time what the contracts promise: importing the core, or
a gateway worker, loads no web framework, ORM or database driver.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
KIT = ROOT / "libs" / "kit" / "src" / "mosaic_kit"
ADAPTERS = {"fastapi", "sql", "nats", "redis", "chassis"}
# Core packages: pure data shared by services (the contracts), under the core contract too.
CORE_PACKAGES = {"contracts"}


def _contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["id"]: c for c in config["tool"]["importlinter"]["contracts"]}


def _module_name(path: Path) -> str:
    parts = path.relative_to(KIT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exports(path: Path) -> list[str] | None:
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            value = ast.literal_eval(node.value)  # type: ignore[attr-defined]
            return list(value)
    return None


def test_every_core_module_is_under_the_core_contract() -> None:
    modules = [f"mosaic_kit.{p.stem}" for p in KIT.glob("*.py") if p.name != "__init__.py"]
    core = sorted([*modules, *(f"mosaic_kit.{name}" for name in CORE_PACKAGES)])
    assert sorted(_contracts()["kit-core"]["source_modules"]) == core  # type: ignore[arg-type]


def test_the_adapters_are_packages_and_layered() -> None:
    packages = {p.parent.name for p in KIT.glob("*/__init__.py")} - CORE_PACKAGES
    assert packages == ADAPTERS
    layers = _contracts()["kit-adapters"]["layers"]
    named = {part.strip() for layer in layers for part in str(layer).split("|")}  # type: ignore[attr-defined]
    assert named == ADAPTERS


def test_every_module_declares_its_public_names_and_each_has_one_home() -> None:
    homes: dict[str, str] = {}
    for path in sorted(KIT.rglob("*.py")):
        module = _module_name(path)
        if path.name == "__init__.py":
            # Packages re-export nothing: importing one adapter module must not load the others.
            assert _exports(path) is None, module
            continue
        exports = _exports(path)
        assert exports is not None, f"{module} has no __all__"
        defined = _top_level_names(path)
        for name in exports:
            assert name in defined, f"{module}.__all__ names {name}, which it does not define"
            assert name not in homes, f"{name} is exported by {homes[name]} and by {module}"
            homes[name] = module


def _top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom):
            # A re-exported third-party type (e.g. nats-py's Client) is a name's only Mosaic home.
            names.update(alias.asname or alias.name for alias in node.names)
    return names


PROBE = """
import json, sys
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _loaded_by(*modules: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *modules],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return set(json.loads(done.stdout))


@pytest.mark.parametrize(
    ("what", "modules", "forbidden"),
    [
        (
            "the kit's core",
            [f"mosaic_kit.{p.stem}" for p in sorted(KIT.glob("*.py")) if p.name != "__init__.py"],
            {
                "fastapi",
                "starlette",
                "uvicorn",
                "sqlalchemy",
                "asyncpg",
                "alembic",
                "nats",
                "redis",
            },
        ),
        (
            "a gateway worker",
            [
                "mosaic_gateway.cli",
                "mosaic_gateway.lifecycle.worker",
                "mosaic_gateway.lifecycle.supervisor",
                "mosaic_gateway.filters.security",
                "mosaic_gateway.filters.apikeys",
                "mosaic_gateway.filters.context",
                "mosaic_gateway.handlers.docs",
                "mosaic_gateway.filters.ratelimit",
                "mosaic_gateway.filters.cache_invalidation",
            ],
            {"fastapi", "starlette", "uvicorn", "sqlalchemy", "asyncpg", "alembic"},
        ),
    ],
)
def test_importing_loads_no_framework_or_orm(
    what: str, modules: list[str], forbidden: set[str]
) -> None:
    loaded = _loaded_by(*modules)
    assert not loaded & forbidden, f"{what} loads {sorted(loaded & forbidden)}"
