"""The service registry and the seed's output contract."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mosaic_devstack.provision import StepError, parse_seed_output
from mosaic_devstack.services import SERVICES, RegistryError, Service, load_services


def test_builtin_registry_runs_the_auth_service_from_this_environment() -> None:
    auth = next(s for s in SERVICES if s.name == "auth")
    assert auth.schema == "auth"
    argv = auth.argv("migrate")
    assert argv[0] == str(Path(sys.executable).parent / "mosaic-auth")
    assert argv[1:] == ["migrate"]
    assert auth.instance_names(3) == ["auth-1", "auth-2", "auth-3"]
    # Auth refuses to start without it; `mosaic up` generates it once and keeps it.
    assert auth.secrets == ("AUTH_SIGNING_KEY_SECRET",)
    assert Service("gw", ("x",), replicas=1).instance_names(3) == ["gw-1"]


def test_registry_file(tmp_path: Path) -> None:
    path = tmp_path / "services.json"
    path.write_text(
        json.dumps(
            [
                {
                    "name": "auth",
                    "command": [sys.executable, "svc.py"],
                    "schema": "auth",
                    "secrets": ["AUTH_SIGNING_KEY_SECRET"],
                },
                {"name": "search", "command": "mosaic-search", "migrate": False, "replicas": 1},
            ]
        )
    )
    auth, search = load_services(path)
    assert auth.command == (sys.executable, "svc.py")
    assert (auth.secrets, search.secrets) == (("AUTH_SIGNING_KEY_SECRET",), ())
    assert (search.command, search.migrate, search.seed, search.replicas) == (
        ("mosaic-search",),
        False,
        True,
        1,
    )


@pytest.mark.parametrize(
    ("entries", "complaint"),
    [
        ([{"name": "Auth", "command": ["x"]}], "name must match"),
        ([{"name": "postgres", "command": ["x"]}], "name must match"),  # its log file is ours
        ([{"name": "gateway", "command": ["x"]}], "name must match"),  # so is the gateway
        ([{"name": "a", "command": ["x"]}, {"name": "a", "command": ["y"]}], "unique"),
        ([{"name": "a", "command": []}], "non-empty list"),
        ([{"name": "a"}], "missing"),
        ([{"name": "a", "command": ["x"], "replicas": 0}], "positive"),
        # A secret's name becomes a file name in the data folder: no paths.
        ([{"name": "a", "command": ["x"], "secrets": ["../X"]}], "'secrets' must be"),
        ([{"name": "a", "command": ["x"], "secrets": "X"}], "'secrets' must be"),
        ([], "non-empty JSON list"),
        ([{"name": "a", "command": ["x"], "definition": "no colon"}], "module:NAME"),
    ],
)
def test_registry_file_errors_say_what_is_wrong(
    tmp_path: Path, entries: list[object], complaint: str
) -> None:
    path = tmp_path / "services.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(RegistryError, match=complaint):
        load_services(path)


def test_the_registry_names_each_service_definition() -> None:
    # Tools read a service's settings and OpenAPI through it without running the service.
    for service in SERVICES:
        definition = service.load_definition()
        assert definition.name == service.name
        assert service.command == (f"mosaic-{service.name}",)


def test_a_registry_entry_without_a_loadable_definition_is_named() -> None:
    with pytest.raises(RegistryError, match=r"cannot load mosaic_nope\.app:NOPE"):
        Service("nope", ("x",), definition="mosaic_nope.app:NOPE").load_definition()


def test_a_missing_program_is_named() -> None:
    with pytest.raises(RegistryError, match="mosaic-nonexistent-svc not found"):
        Service("x", ("mosaic-nonexistent-svc",)).argv("serve")


def test_seed_output_is_the_json_object_even_after_stray_lines() -> None:
    out = b'starting\n{"admin": {"email": "a@x", "password": "p"}, "apiKey": null}\n'
    assert parse_seed_output(out, "auth") == {
        "admin": {"email": "a@x", "password": "p"},
        "apiKey": None,
    }
    pretty = json.dumps({"admin": None, "apiKey": None}, indent=2).encode()
    assert parse_seed_output(pretty, "auth") == {"admin": None, "apiKey": None}
    with pytest.raises(StepError, match="auth seed printed no JSON object"):
        parse_seed_output(b"done\n[1, 2]\n", "auth")
