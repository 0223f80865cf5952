"""compose.yaml: in sync with a fresh render from the registry, every service in it twice, only
the gateway published, every setting a service cannot start without supplied, secrets only as
files nobody commits."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any

import nats
import nats.aio.client
import nats.errors
import pytest
import yaml

from mosaic_devstack import compose, nats_auth
from mosaic_devstack.embedded import nats_server_binary
from mosaic_devstack.services import SERVICES, Service

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rendered() -> dict[Path, str]:
    # Rendering builds every service's app (offline) for the gateway's routes: once per module.
    return compose.render_files(SERVICES).files


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / compose.COMPOSE_FILE).read_text())
    return loaded


def test_the_committed_files_are_a_fresh_render(rendered: dict[Path, str]) -> None:
    for relative, text in rendered.items():
        assert (ROOT / relative).read_text() == text, (
            f"{relative} is out of date: run `mosaic compose` and commit the result"
        )


def test_every_registry_service_runs_two_replicas(document: dict[str, Any]) -> None:
    services = document["services"]
    for service in SERVICES:
        block = services[service.name]
        assert block["deploy"]["replicas"] == (service.replicas or 2)
        assert block["image"].startswith(f"mosaic-{service.name}:")
        assert block["build"]["dockerfile"] == f"services/{service.name}/Dockerfile"
        assert block["build"]["context"] == "."
        assert block["read_only"] is True


def test_only_the_gateway_publishes_a_port(document: dict[str, Any]) -> None:
    published = {name for name, block in document["services"].items() if block.get("ports")}
    assert published == {"gateway"}
    assert document["services"]["gateway"]["ports"] == ["${MOSAIC_GATEWAY_PORT:-8080}:8080"]


def test_migrations_run_once_before_the_services_which_wait_for_healthy_infrastructure(
    document: dict[str, Any],
) -> None:
    services = document["services"]
    for service in SERVICES:
        after = services[service.name]["depends_on"]
        for infra in ("postgres", *compose.NATS_NODES):
            assert after[infra] == {"condition": "service_healthy"}
        if service.migrate:
            migrate = services[f"{service.name}-migrate"]
            assert migrate["command"] == ["migrate"]
            assert migrate["restart"] == "no"
            assert "deploy" not in migrate  # one container, not one per replica
            assert migrate["image"] == services[service.name]["image"]
            assert after[f"{service.name}-migrate"] == {
                "condition": "service_completed_successfully"
            }


def _supplied(block: dict[str, Any]) -> set[str]:
    names = set(block.get("environment", {}))
    if "SECRETS_DIR" in names:
        names |= {secret["target"] for secret in block.get("secrets", [])}
    return {name.upper() for name in names}


def _required(service: Service) -> set[str]:
    """Settings without a default, and the secrets the registry says it cannot do without."""
    settings = service.load_definition().settings
    required = {
        (field.alias or name).upper()
        for name, field in settings.model_fields.items()
        if field.is_required()
    }
    return required | set(service.secrets)


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_every_setting_a_service_requires_is_supplied(
    document: dict[str, Any], service: Service
) -> None:
    services = document["services"]
    blocks = [services[service.name]]
    if service.migrate:
        blocks.append(services[f"{service.name}-migrate"])
    for block in blocks:
        missing = _required(service) - _supplied(block)
        assert not missing, f"{service.name}: nothing supplies {sorted(missing)}"
        # Its own schema and the cluster, not the defaults pointing at localhost.
        assert {"DATABASE_URL", "NATS_URL", "DB_SCHEMA"} <= _supplied(block)


def test_every_replica_advertises_its_own_address(document: dict[str, Any]) -> None:
    for service in SERVICES:
        entrypoint = document["services"][service.name]["entrypoint"]
        assert entrypoint[:2] == ["/bin/sh", "-c"]
        # `$$` is compose's escape: the container's shell expands its own hostname.
        assert 'ADVERTISE_URL="http://$$(hostname):8000"' in entrypoint[2]
        assert f'exec {service.command[0]} "$$@"' in entrypoint[2]


def test_nats_is_a_three_node_jetstream_cluster_each_on_its_volume(
    document: dict[str, Any],
) -> None:
    services = document["services"]
    volumes = [services[node]["volumes"] for node in compose.NATS_NODES]
    assert len({v[0].split(":")[0] for v in volumes}) == 3
    assert all(v[0].endswith(":/data") for v in volumes)
    config = (ROOT / compose.NATS_FILE).read_text()
    assert "jetstream" in config
    for node in compose.NATS_NODES:
        assert f"nats://{node}:6222" in config
        assert services[node]["environment"] == {"SERVER_NAME": node}
    # Every event stream on all three nodes: a node lost loses no event.
    for service in SERVICES:
        assert services[service.name]["environment"]["NATS_STREAM_REPLICAS"] == "3"


def test_the_gateway_mounts_its_generated_configuration(document: dict[str, Any]) -> None:
    gateway = document["services"]["gateway"]
    assert gateway["configs"] == [{"source": "gateway", "target": compose.GATEWAY_CONFIG_PATH}]
    assert document["configs"]["gateway"] == {"file": f"./{compose.GATEWAY_FILE}"}
    config = yaml.safe_load((ROOT / compose.GATEWAY_FILE).read_text())
    assert config["server"]["listen"] == "0.0.0.0"
    # Every service the gateway can learn routes from is fronted (an empty config is no gateway).
    assert set(config["backends"]) == {s.name for s in SERVICES if s.definition is not None}
    assert {route["backend"] for route in config["routes"]} == set(config["backends"])
    assert config["nats"]["url"] == compose.NATS_URL


def test_no_secret_value_is_committed(document: dict[str, Any]) -> None:
    for secret in document["secrets"].values():
        assert secret["file"].startswith(f"./{compose.SECRETS_FOLDER}/")
    tracked = subprocess.run(
        ["git", "ls-files", str(compose.SECRETS_FOLDER)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert tracked == ""
    text = (ROOT / compose.COMPOSE_FILE).read_text()
    assert "PASSWORD:" not in text  # only POSTGRES_PASSWORD_FILE


def test_generated_secrets_are_made_once_and_fit_together(tmp_path: Path) -> None:
    created = compose.write_secrets(tmp_path, SERVICES)
    folder = tmp_path / compose.SECRETS_FOLDER
    assert {p.name for p in created} == set(compose.secret_files(SERVICES))
    password = (folder / compose.POSTGRES_PASSWORD).read_text().strip()
    assert len(password) >= 32
    assert f":{password}@postgres:5432/" in (folder / "DATABASE_URL").read_text()
    # uid 10001 in the containers reads the bind-mounted files; other host users cannot list them.
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in created} == {0o644}
    before = {p.name: p.read_text() for p in folder.iterdir()}
    assert compose.write_secrets(tmp_path, SERVICES) == []
    assert {p.name: p.read_text() for p in folder.iterdir()} == before
    assert (folder / ".gitignore").read_text().splitlines()[-1] == "*"


def _users(text: str) -> dict[str, str]:
    """user -> the configuration text of its password, from a rendered authorization block."""
    found = re.findall(r'\{"user": "([^"]+)", "password": ([^,}]+)', text)
    return dict(found)


def test_nats_runs_with_the_users_of_mosaic_up_and_no_password_in_the_repo(
    document: dict[str, Any],
) -> None:
    config = (ROOT / compose.NATS_FILE).read_text()
    assert f"include {compose.NATS_PASSWORDS}\n" in config
    expected = nats_auth.users(SERVICES)
    users = _users(config)
    assert list(users) == list(expected)
    # Every password is a variable of the included secret, never a value.
    assert users == {user: f"${nats_auth.password_secret(user)}" for user in expected}
    assert config.count('"permissions"') == len([p for p in expected.values() if p is not None])
    for node in compose.NATS_NODES:
        assert document["services"][node]["secrets"] == [
            {"source": "nats-passwords.conf", "target": compose.NATS_PASSWORDS_PATH}
        ]
    assert document["secrets"]["nats-passwords.conf"] == {
        "file": f"./{compose.SECRETS_FOLDER}/{compose.NATS_PASSWORDS}"
    }


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_every_service_connects_as_its_own_nats_user(
    document: dict[str, Any], service: Service
) -> None:
    services = document["services"]
    blocks = [services[service.name]]
    for name in (f"{service.name}-migrate", f"{service.name}-seed"):
        if name in services:
            blocks.append(services[name])
    for block in blocks:
        env = block["environment"]
        assert env["NATS_USER"] == service.name
        assert env["NATS_INBOX_PREFIX"] == f"_INBOX_{service.name}"
        # Its own password file, not another user's, at SECRETS_DIR/NATS_PASSWORD.
        assert {"source": f"nats_password_{service.name}", "target": "NATS_PASSWORD"} in block[
            "secrets"
        ]


def test_the_gateway_names_its_nats_user_and_password_file(document: dict[str, Any]) -> None:
    gateway = document["services"]["gateway"]
    assert gateway["secrets"] == [{"source": "nats_password_gateway", "target": "NATS_PASSWORD"}]
    assert document["secrets"]["nats_password_gateway"] == {
        "file": f"./{compose.SECRETS_FOLDER}/NATS_PASSWORD_GATEWAY"
    }
    nats = yaml.safe_load((ROOT / compose.GATEWAY_FILE).read_text())["nats"]
    assert nats["user"] == "gateway"
    # Compose mounts a secret without a target path under /run/secrets.
    assert nats["password_file"] == "/run/secrets/NATS_PASSWORD"
    assert nats["inbox_prefix"] == "_INBOX_gateway"
    assert "password" not in nats


def test_no_committed_file_holds_a_nats_password(tmp_path: Path) -> None:
    compose.write_secrets(tmp_path, SERVICES)
    folder = tmp_path / compose.SECRETS_FOLDER
    values = [
        (folder / nats_auth.password_secret(u)).read_text().strip()
        for u in nats_auth.users(SERVICES)
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for relative in (compose.COMPOSE_FILE, compose.NATS_FILE, compose.GATEWAY_FILE):
        assert str(relative) in tracked
        text = (ROOT / relative).read_text()
        assert not re.search(r'"password": "', text), relative
        assert not any(value in text for value in values)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _connect(port: int, user: str, password: str) -> nats.aio.client.Client:
    return await nats.connect(
        f"nats://127.0.0.1:{port}",
        user=user,
        password=password,
        connect_timeout=2,
        max_reconnect_attempts=0,
        allow_reconnect=False,
    )


def test_the_rendered_nats_conf_runs_with_the_included_passwords(tmp_path: Path) -> None:
    """The committed nats.conf and the `--secrets` file, in a real nats-server (one node, no
    routes): each user logs in with its own password file, a wrong one is refused, and a
    service's permissions hold."""
    compose.write_secrets(tmp_path, SERVICES)
    folder = tmp_path / compose.SECRETS_FOLDER
    port = _free_port()
    config = (ROOT / compose.NATS_FILE).read_text()
    config = re.sub(r"cluster \{.*?\n\}\n", "", config, flags=re.S)
    config = config.replace("port: 4222", f"port: {port}").replace("http_port: 8222\n", "")
    config = config.replace("store_dir: /data", f"store_dir: {json.dumps(str(tmp_path / 'js'))}")
    (folder / "nats.conf").write_text(config)
    server = subprocess.Popen(
        [str(nats_server_binary()), "-c", str(folder / "nats.conf")],
        env={"SERVER_NAME": "test-node", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def password(user: str) -> str:
            return (folder / nats_auth.password_secret(user)).read_text().strip()

        async def check() -> None:
            for _ in range(100):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    await asyncio.sleep(0.05)
            for user in nats_auth.users(SERVICES):
                client = await _connect(port, user, password(user))
                await client.close()
            with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
                await _connect(port, "blog", password("auth"))
            errors: list[Exception] = []

            async def on_error(exc: Exception) -> None:
                errors.append(exc)

            blog = await nats.connect(
                f"nats://127.0.0.1:{port}",
                user="blog",
                password=password("blog"),
                error_cb=on_error,
                allow_reconnect=False,
            )
            await blog.publish("events.auth.user.created", b"{}")
            await blog.flush()
            await asyncio.sleep(0.2)
            await blog.close()
            assert any("permissions violation" in str(e).lower() for e in errors), errors

        asyncio.run(check())
    finally:
        server.terminate()
        server.wait(timeout=10)
