"""`mosaic new service`: every refusal writes nothing; a generated service is accepted by
`make lint` and `make test` in a copy of the workspace, and answers through the gateway of the
`mosaic up` of that copy."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from mosaic_devstack.scaffold import (
    REGISTRY_PATH,
    Names,
    ScaffoldError,
    new_service,
    register,
    route_prefixes,
)

ROOT = Path(__file__).resolve().parents[2]
MOSAIC = [sys.executable, "-m", "mosaic_devstack.cli"]


def copy_workspace(target: Path) -> Path:
    """The checkout's files (tracked and new, not ignored) in `target`, sharing its uv."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    if (ROOT / ".tools").is_dir():  # the Makefile's bootstrapped uv, when uv is not on PATH
        (target / ".tools").symlink_to(ROOT / ".tools")
    return target


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def small_workspace(tmp_path: Path) -> Path:
    """The two files the generator edits, and the folders it writes into."""
    (tmp_path / REGISTRY_PATH).parent.mkdir(parents=True)
    shutil.copy2(ROOT / REGISTRY_PATH, tmp_path / REGISTRY_PATH)
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for folder in ("services/auth", "services/blog", "docs"):
        (tmp_path / folder).mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize(
    ("name", "complaint"),
    [
        ("Notes", "not a service name"),
        ("1notes", "not a service name"),
        ("n", "not a service name"),
        ("no-dash", "not a service name"),
        ("no_underscore", "not a service name"),
        ("../escape", "not a service name"),
        ("x" * 31, "not a service name"),
        ("gateway", "reserved"),
        ("postgres", "reserved"),
        ("kit", "reserved"),
        ("devstack", "reserved"),
        ("auth", "already in the registry"),
        ("blog", "already in the registry"),
        ("users", "route prefix"),
    ],
)
def test_a_refused_name_says_why_and_writes_nothing(
    small_workspace: Path, name: str, complaint: str
) -> None:
    before = tree_digest(small_workspace)
    with pytest.raises(ScaffoldError, match=complaint):
        new_service(small_workspace, name, taken_prefixes={"users", "blogs"}, finish=False)
    assert tree_digest(small_workspace) == before


def test_an_existing_folder_is_refused(small_workspace: Path) -> None:
    (small_workspace / "services" / "notes").mkdir()
    before = tree_digest(small_workspace)
    with pytest.raises(ScaffoldError, match=r"services/notes already exists"):
        new_service(small_workspace, "notes", finish=False)
    assert tree_digest(small_workspace) == before


def test_the_cli_refuses_with_a_message_and_exit_code_2(small_workspace: Path) -> None:
    before = tree_digest(small_workspace)
    done = subprocess.run(
        [*MOSAIC, "new", "service", "Bad-Name", "--root", str(small_workspace)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "mosaic new service: 'Bad-Name' is not a service name" in done.stderr
    assert tree_digest(small_workspace) == before


def test_the_route_prefixes_of_the_registered_services_are_taken() -> None:
    assert {"users", "auth", "blogs", "author"} <= route_prefixes(ROOT)


def test_registering_lists_the_member_wherever_the_workspace_lists_members() -> None:
    text = register((ROOT / "pyproject.toml").read_text(), Names("notes"))
    edited = tomllib.loads(text)
    assert "mosaic-notes" in edited["project"]["dependencies"]
    tool = edited["tool"]
    assert "services/notes" in tool["uv"]["workspace"]["members"]
    assert tool["uv"]["sources"]["mosaic-notes"] == {"workspace": True}
    assert "services/notes/tests" in tool["pytest"]["ini_options"]["testpaths"]
    assert "services/notes/tests" in tool["pytest"]["ini_options"]["pythonpath"]
    assert "mosaic_notes" in tool["mypy"]["packages"]
    assert "mosaic_notes" in tool["ruff"]["lint"]["isort"]["known-first-party"]
    assert "mosaic_notes" in tool["importlinter"]["root_packages"]
    contracts = {c["id"]: c for c in tool["importlinter"]["contracts"]}
    assert "mosaic_notes.service" in contracts["service-layer"]["source_modules"]
    assert "mosaic_notes" in contracts["services-independent"]["modules"]
    # Idempotent: registering twice lists it once.
    assert register(text, Names("notes")) == text


@pytest.fixture
def workspace() -> Iterator[Path]:
    # Outside pytest's temp root: the copy's `mosaic up` runs PostgreSQL as its own user.
    root = Path(tempfile.mkdtemp(prefix="mosaic-new-"))
    root.chmod(0o755)
    try:
        yield copy_workspace(root / "ws")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_generated_service_passes_lint_and_its_tests_and_answers_through_the_gateway(
    workspace: Path, pg_url: str
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "NATS_URL", "REDIS_URL", "MOSAIC_DATA", "VIRTUAL_ENV"}
        and not k.startswith("MAKE")
        and k != "MFLAGS"
    }
    out = run([*MOSAIC, "new", "service", "notes", "--root", str(workspace)], ROOT, env, 300)
    assert "make test ARGS=services/notes/tests" in out
    for path in (
        "services/notes/src/mosaic_notes/app.py",
        "services/notes/src/mosaic_notes/migrations/versions/0001_initial_schema.py",
        "services/notes/tests/test_api.py",
        "docs/services/notes.md",
        "services/notes/Dockerfile",
    ):
        assert (workspace / path).is_file(), path
    assert "--package mosaic-notes" in (workspace / "services/notes/Dockerfile").read_text()
    # compose.yaml is rendered again with the new service in it.
    compose = yaml.safe_load((workspace / "compose.yaml").read_text())
    assert compose["services"]["notes"]["deploy"]["replicas"] == 2
    assert "## notes (`mosaic-notes`)" in (workspace / "docs/configuration.md").read_text()

    run(["make", "-s", "lint"], workspace, env, 300)
    # The database is shared (each test has its own schema); NATS is not: the suite's two
    # processes (xdist) each serve `notes.items.get` in the service's queue group, so on one
    # server a request could be answered by the other process's app, which reads another schema.
    # Each process starts its own embedded NATS, as on a fresh machine.
    tested = run(
        ["make", "-s", "test", "ARGS=services/notes/tests tests/docs -p no:cacheprovider"],
        workspace,
        {**env, "MOSAIC_TEST_DATABASE_URL": pg_url},
        300,
    )
    assert " passed" in tested
    assert "failed" not in tested

    data = workspace.parent / "data"
    mosaic = [str(workspace / ".venv/bin/mosaic")]
    run([*mosaic, "up", "--detach", "--data", str(data), "--replicas", "1",
         "--gateway-port", "0"], workspace, env, 200)  # fmt: skip
    state = json.loads((data / "state.json").read_text())
    try:
        status = json.loads(run([*mosaic, "status", "--json", "--data", str(data)], ROOT, env, 60))
        assert {"auth", "blog", "notes"} <= {i["service"] for i in status["instances"]}
        key = {"x-api-key": status["credentials"]["apiKey"]["key"]}
        admin = status["credentials"]["admin"]
        with httpx.Client(base_url=status["gateway"]["url"], timeout=15, trust_env=False) as http:
            signed_in = http.post(
                "/v1/auth/signin",
                json={"email": admin["email"], "password": admin["password"]},
                headers=key,
            )
            assert signed_in.status_code == 200, signed_in.text
            token = signed_in.json()["tokens"]["accessToken"]
            created = http.post(
                "/v1/notes/items",
                json={"title": "Through the gateway"},
                headers={**key, "authorization": f"Bearer {token}"},
            )
            assert created.status_code == 201, created.text
            item = created.json()
            read = http.get(f"/v1/notes/items/{item['id']}", headers=key)
            assert read.status_code == 200
            assert read.json() == item
            # The generated route carries the gateway policy declared beside it.
            assert http.get(f"/v1/notes/items/{item['id']}").status_code == 401
    finally:
        run([*mosaic, "down", "--data", str(data)], ROOT, env, 90)
        pids = [state["supervisor_pid"], *(i["pid"] for i in state["instances"])]
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        assert alive == [], f"processes left behind: {alive}"
