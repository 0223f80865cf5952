"""The Dockerfiles: hadolint accepts each, every registry service has one, made from the
scaffold's template, installing its own package, running its CLI as uid 10001."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mosaic_devstack.images import service_dockerfile
from mosaic_devstack.scaffold import Names, render
from mosaic_devstack.services import SERVICES, Service
from mosaic_kit.version import COMMIT_ENV

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = ROOT / ".venv" / "bin" / "hadolint"
DOCKERFILES = {
    **{s.name: ROOT / "services" / s.name / "Dockerfile" for s in SERVICES},
    "gateway": ROOT / "gateway" / "Dockerfile",
}
COMMANDS = {**{s.name: s.command[0] for s in SERVICES}, "gateway": "mosaic-gateway"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ))  # fmt: skip
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), " ".join(rest.split())))
    return found


def last(text: str, keyword: str) -> str:
    values = [rest for kw, rest in instructions(text) if kw == keyword]
    assert values, f"no {keyword}"
    return values[-1]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_accepts_the_dockerfile(name: str) -> None:
    done = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILES[name])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_the_image_installs_its_package_and_runs_its_cli_as_10001(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    steps = instructions(text)
    sync = next(rest for kw, rest in steps if kw == "RUN" and "uv sync" in rest)
    assert f"--package mosaic-{name} " in sync + " "
    for flag in ("--locked", "--no-dev", "--no-editable", "--mount=type=cache"):
        assert flag in sync
    assert json.loads(last(text, "ENTRYPOINT")) == [COMMANDS[name]]
    assert last(text, "USER") == "10001:10001"
    assert "--uid 10001" in next(rest for kw, rest in steps if kw == "RUN" and "useradd" in rest)
    command = json.loads(last(text, "CMD"))
    assert command[0] == "serve"
    if name != "gateway":  # the gateway's address and port are in its configuration file
        assert command[1:] == ["--host", "0.0.0.0", "--port", "8000"]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_the_image_is_built_in_two_stages_of_the_same_python(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    bases = [rest.split()[0] for kw, rest in instructions(text) if kw == "FROM"]
    pythons = [b for b in bases if b.startswith("python:")]
    # The virtualenv copied from the builder points at the builder's interpreter by path.
    assert len(pythons) == 2
    assert len(set(pythons)) == 1
    assert any(b.startswith("ghcr.io/astral-sh/uv:") and not b.endswith(":latest") for b in bases)
    env = " ".join(rest for kw, rest in instructions(text) if kw == "ENV")
    for setting in ("UV_COMPILE_BYTECODE=1", "UV_LINK_MODE=copy"):
        assert setting in env


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_version_and_commit_are_labels_and_what_the_kit_reads(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    steps = instructions(text)
    args = {rest.split("=")[0] for kw, rest in steps if kw == "ARG"}
    assert {"VERSION", "GIT_COMMIT"} <= args
    labels = " ".join(rest for kw, rest in steps if kw == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert 'org.opencontainers.image.revision="${GIT_COMMIT}"' in labels
    env = " ".join(rest for kw, rest in steps if kw == "ENV")
    assert f"{COMMIT_ENV}=${{GIT_COMMIT}}" in env


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_the_healthcheck_asks_healthz_with_python(name: str) -> None:
    check = last(DOCKERFILES[name].read_text(), "HEALTHCHECK")
    assert '"python"' in check
    assert "/healthz" in check
    assert "curl" not in check


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_a_service_dockerfile_is_the_scaffold_template_filled_in(service: Service) -> None:
    name = service.name
    assert DOCKERFILES[name].read_text() == service_dockerfile(name), (
        f"services/{name}/Dockerfile differs from the template: regenerate it with "
        f"mosaic_devstack.images.service_dockerfile({name!r})"
    )


def test_a_new_service_gets_its_dockerfile() -> None:
    files = render(Names("notes"), datetime.now(UTC).date().isoformat())
    text = files[Path("services/notes/Dockerfile")]
    assert "uv sync --locked --no-dev --package mosaic-notes --no-editable" in text
    assert json.loads(last(text, "ENTRYPOINT")) == ["mosaic-notes"]
    assert "{{" not in text


def test_the_build_context_leaves_out_secrets_stamps_and_environments() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "**/_build.json", "deploy/compose/secrets", ".env"} <= ignored


# What the gateway's image does differently: it describes itself, names its configuration file,
# listens on 8080 and 9090 (health on the admin one) and serves that file, not --host/--port.
GATEWAY_OWN = {"LABEL", "ENV", "EXPOSE", "HEALTHCHECK", "CMD"}


def test_the_gateway_dockerfile_is_the_template_but_for_what_it_serves() -> None:
    # Hand-written (docs/containers.md), so nothing else keeps its bases, build and user in step
    # with the services' when the template changes.
    gateway = instructions(DOCKERFILES["gateway"].read_text())
    template = instructions(service_dockerfile("gateway"))
    assert [kw for kw, _ in gateway] == [kw for kw, _ in template]
    differing = {
        kw for (kw, mine), (_, theirs) in zip(gateway, template, strict=True) if mine != theirs
    }
    assert differing <= GATEWAY_OWN
