from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from kit_support import follow_stderr
from pydantic import Field, SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from mosaic_kit.fastapi.app import create_app
from mosaic_kit.fastapi.cli import ServiceCLI
from mosaic_kit.metrics import new_registry
from mosaic_kit.settings import ServiceSettings
from mosaic_kit.version import build_info

TESTS = Path(__file__).parent


class DemoSettings(ServiceSettings):
    demo_flag: bool = Field(False, description="Turn the demo on.")
    demo_mode: Literal["fast", "safe"] = Field("safe", description="Mode; 100% safe by default.")
    demo_tags: list[str] = Field(default_factory=list, description="Tags to attach.")
    demo_ratio: float | None = Field(None, description="Optional ratio.")
    demo_token: SecretStr = Field(SecretStr("default-token"), description="A credential.")


def _refuse_to_start() -> None:
    raise AssertionError("building the OpenAPI document must not start the app")


def _factory(settings: DemoSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _refuse_to_start()
        yield

    router = APIRouter()

    @router.get("/v1/demo")
    async def demo() -> dict[str, str]:
        return {}

    return create_app(
        settings,
        title="Demo",
        description="demo",
        version="0.1.0",
        routers=[router],
        lifespan=lifespan,
        registry=new_registry(process_metrics=False),
    )


@pytest.fixture
def cli_and_seen() -> tuple[ServiceCLI[DemoSettings], list[DemoSettings]]:
    cli = ServiceCLI("demo", DemoSettings, _factory, package="mosaic_kit")
    seen: list[DemoSettings] = []

    @cli.command("show", help="record the settings", database=False)
    def show(settings: DemoSettings, _args: argparse.Namespace) -> int:
        seen.append(settings)
        return 0

    return cli, seen


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in DemoSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("SECRETS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    yield
    # `main()` configured logging onto this test's captured stderr, which is about to close.
    follow_stderr()


def test_every_settings_field_has_a_flag_with_help(
    cli_and_seen: tuple[ServiceCLI[DemoSettings], list[DemoSettings]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli, _ = cli_and_seen
    # argparse wraps help to the terminal's width and breaks lines at hyphens, which would
    # split "comma-separated" into "comma- separated" on a narrow terminal: no wrapping here.
    monkeypatch.setenv("COLUMNS", "10000")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for name, field in DemoSettings.model_fields.items():
        assert "--" + name.replace("_", "-") in out
        assert f"[env: {name.upper()}]" in out
        assert field.description is not None
        assert " ".join(field.description.split()) in out
    assert "--demo-flag, --no-demo-flag" in out
    assert "{fast,safe}" in out


@pytest.mark.parametrize("command", ["serve", "migrate", "show"])
def test_the_database_flag_exists_where_the_database_is_used(
    cli_and_seen: tuple[ServiceCLI[DemoSettings], list[DemoSettings]], command: str
) -> None:
    cli, _ = cli_and_seen
    args = cli.build_parser().parse_args([command, "--database-url", "postgresql://x/y"])
    assert args.setting__database_url == "postgresql://x/y"


def test_each_subcommand_lists_only_the_settings_it_reads(
    cli_and_seen: tuple[ServiceCLI[DemoSettings], list[DemoSettings]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli, _ = cli_and_seen

    def usage(*argv: str) -> str:
        with pytest.raises(SystemExit):
            cli.main([*argv, "--help"])
        return capsys.readouterr().out

    migrate = usage("migrate")
    assert "--database-url DATABASE_URL" in migrate  # the variable as metavar, not SETTING__...
    assert "--db-schema DB_SCHEMA" in migrate
    assert "--port" not in migrate
    assert "SETTING__" not in migrate
    for command in ("version", "openapi"):
        assert "--database-url" not in usage(command)
    assert "--port PORT" in usage("serve")
    with pytest.raises(SystemExit) as refused:
        cli.main(["version", "--port", "1"])
    assert refused.value.code == 2


@pytest.mark.parametrize("argv", [["--version"], ["serve", "--version"], ["migrate", "--version"]])
def test_version_flag_on_every_command(
    cli_and_seen: tuple[ServiceCLI[DemoSettings], list[DemoSettings]],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    cli, _ = cli_and_seen
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("demo ")


def test_flags_override_the_environment(
    cli_and_seen: tuple[ServiceCLI[DemoSettings], list[DemoSettings]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli, seen = cli_and_seen
    monkeypatch.setenv("PORT", "1111")
    monkeypatch.setenv("DEMO_FLAG", "true")
    monkeypatch.setenv("DB_SCHEMA", "from_env")
    assert cli.main(["show"]) == 0
    assert cli.main(["show", "--port", "2222", "--no-demo-flag"]) == 0
    from_env, from_flags = seen
    assert (from_env.port, from_env.demo_flag) == (1111, True)
    assert (from_flags.port, from_flags.demo_flag) == (2222, False)
    # Settings without a flag still come from the environment.
    assert from_flags.db_schema == "from_env"


def test_a_database_command_refuses_to_guess_the_database(
    cli_and_seen: tuple[ServiceCLI[DemoSettings], list[DemoSettings]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli, _ = cli_and_seen
    ran: list[str] = []

    @cli.command("wipe", help="uses the database")
    def wipe(settings: DemoSettings, _args: argparse.Namespace) -> int:
        ran.append(settings.database_url.get_secret_value())
        return 0

    for command in ("wipe", "migrate", "serve"):
        assert cli.main([command]) == 2
    err = capsys.readouterr().err
    assert "demo wipe: DATABASE_URL is not set" in err
    assert "mosaic exec demo wipe" in err
    assert ran == []
    assert cli.main(["wipe", "--database-url", "postgresql://db.example/x"]) == 0
    follow_stderr()  # main() configured logging onto capsys' stream, which closes first
    assert ran == ["postgresql://db.example/x"]


def test_flag_types_follow_the_model(
    cli_and_seen: tuple[ServiceCLI[DemoSettings], list[DemoSettings]],
) -> None:
    cli, seen = cli_and_seen
    argv = [
        "show",
        "--demo-flag",
        "--demo-mode",
        "fast",
        "--demo-tags",
        '["a", "b"]',
        "--demo-ratio",
        "0.25",
        "--demo-token",
        "s3cret",
        "--nats-request-timeout",
        "0.5",
        "--log-format",
        "json",
    ]
    assert cli.main(argv) == 0
    (s,) = seen
    assert s.demo_flag is True
    assert s.demo_mode == "fast"
    assert s.demo_tags == ["a", "b"]
    assert s.demo_ratio == 0.25
    assert s.demo_token.get_secret_value() == "s3cret"
    assert s.nats_request_timeout == 0.5
    assert s.log_format == "json"
    assert s.sqlalchemy_url().startswith("postgresql+asyncpg://")


def test_bad_choice_is_an_argparse_error(
    cli_and_seen: tuple[ServiceCLI[DemoSettings], list[DemoSettings]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli, seen = cli_and_seen
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["show", "--demo-mode", "reckless"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert seen == []


def test_invalid_value_exits_2_without_echoing_it(
    cli_and_seen: tuple[ServiceCLI[DemoSettings], list[DemoSettings]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli, seen = cli_and_seen
    assert cli.main(["show", "--port", "70000", "--demo-token", "topsecret"]) == 2
    err = capsys.readouterr().err
    assert "invalid setting port" in err
    assert "topsecret" not in err
    assert seen == []


def test_extra_command_with_arguments_and_async_body(
    cli_and_seen: tuple[ServiceCLI[DemoSettings], list[DemoSettings]],
) -> None:
    cli, _ = cli_and_seen
    got: list[tuple[int, str]] = []

    def arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("code", type=int)

    @cli.command("exit-with", help="exit with CODE", arguments=arguments, database=False)
    async def exit_with(settings: DemoSettings, args: argparse.Namespace) -> int:
        await asyncio.sleep(0)
        got.append((args.code, settings.service_name))
        return int(args.code)

    assert cli.main(["exit-with", "7", "--service-name", "custom"]) == 7
    assert got == [(7, "custom")]


def test_version_prints_version_and_commit(
    cli_and_seen: tuple[ServiceCLI[DemoSettings], list[DemoSettings]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli, _ = cli_and_seen
    info = build_info("mosaic_kit")
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"demo {info.version} ({info.commit})"
    assert cli.main(["version", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "name": "demo",
        "version": info.version,
        "commit": info.commit,
    }


def test_openapi_is_built_without_starting_the_app(
    cli_and_seen: tuple[ServiceCLI[DemoSettings], list[DemoSettings]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    cli, _ = cli_and_seen
    assert cli.main(["openapi"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["info"]["title"] == "Demo"
    assert "/v1/demo" in document["paths"]
    target = tmp_path / "openapi.json"
    assert cli.main(["openapi", "--output", str(target)]) == 0
    assert json.loads(target.read_text()) == document


def _migration_package(root: Path) -> str:
    name = f"kitmig_{uuid.uuid4().hex[:8]}"
    versions = root / name / "migrations" / "versions"
    versions.mkdir(parents=True)
    (root / name / "__init__.py").write_text("")
    (root / name / "migrations" / "__init__.py").write_text("")
    (root / name / "migrations" / "env.py").write_text(
        "from sqlalchemy import MetaData\n"
        "from mosaic_kit.sql.migrations import run_env\n"
        "run_env(MetaData())\n"
    )
    (versions / "0001_widgets.py").write_text(
        textwrap.dedent(
            """
            import sqlalchemy as sa
            from alembic import op

            revision = "0001"
            down_revision = None

            def upgrade() -> None:
                op.create_table("widgets", sa.Column("id", sa.Integer, primary_key=True))

            def downgrade() -> None:
                op.drop_table("widgets")
            """
        )
    )
    return name


async def test_migrate_applies_the_packages_migrations(
    pg_url: str, fresh_schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    package = _migration_package(tmp_path)
    cli = ServiceCLI("mig", ServiceSettings, lambda s: FastAPI(), package=package)
    argv = ["migrate", "--database-url", pg_url, "--db-schema", fresh_schema]
    assert await asyncio.to_thread(cli.main, argv) == 0
    engine = create_async_engine(pg_url)
    try:
        async with engine.connect() as conn:
            tables = await conn.execute(
                text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                {"s": fresh_schema},
            )
            version = await conn.execute(
                text(f'SELECT version_num FROM "{fresh_schema}".alembic_version')
            )
            assert sorted(r[0] for r in tables) == ["alembic_version", "widgets"]
            assert version.scalar_one() == "0001"
    finally:
        await engine.dispose()


# `serve` for real: a subprocess, a socket, SIGTERM.


class _Lines:
    """Reads a process' stderr in the background; finds JSON log events in it."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stderr is not None
        stream = proc.stderr

        def pump() -> None:
            for line in stream:
                self.lines.put(line)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        while True:
            line = self.lines.get(timeout=timeout)
            self.seen.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                return record  # type: ignore[no-any-return]

    def rest(self) -> list[str]:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.seen


@pytest.fixture
def served() -> Iterator[tuple[subprocess.Popen[str], _Lines, int]]:
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "HOST", "SECRETS_DIR")}
    env["MOSAIC_GIT_COMMIT"] = "cafe123"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(TESTS / "kit_serve_app.py"),
            "serve",
            "--port",
            "0",
            "--log-format",
            "json",
            "--service-name",
            "serve-test",
            "--shutdown-grace",
            "10",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    lines = _Lines(proc)
    try:
        listening = lines.wait_for("http_listening")
        yield proc, lines, listening["ports"][0]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


async def test_serve_freezes_the_startup_heap(
    served: tuple[subprocess.Popen[str], _Lines, int],
) -> None:
    # What lives from startup on is kept out of the collector's full passes (a throughput cost
    # under load otherwise).
    _proc, _lines, port = served
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        frozen = (await c.get("/gc-frozen")).json()["frozen"]
    assert frozen > 10_000


async def test_serve_answers_and_drains_on_sigterm(
    served: tuple[subprocess.Popen[str], _Lines, int],
) -> None:
    proc, lines, port = served
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        health = await c.get("/healthz")
        assert health.status_code == 200
        body = health.json()
        assert body["service"] == "serve-test"
        assert body["commit"] == "cafe123"
        assert health.headers["x-request-id"]
        assert "server" not in health.headers

        # A request in flight when SIGTERM arrives is finished, not cut off.
        slow = asyncio.create_task(c.get("/slow", params={"seconds": 1.5}))
        await asyncio.to_thread(lines.wait_for, "slow_started")
        proc.send_signal(signal.SIGTERM)
        response = await slow
    assert response.status_code == 200
    assert response.json() == {"done": "yes"}
    assert await asyncio.to_thread(proc.wait, 30) == 0
    await asyncio.to_thread(lines.wait_for, "lifespan_stopped")
    output = "".join(lines.rest())
    # One access line per request, ours (with request ids), none from uvicorn.
    access = [json.loads(line) for line in output.splitlines() if '"http_request"' in line]
    assert [line["route"] for line in access if line["path"] == "/slow"] == ["/slow"]
    assert "uvicorn.access" not in output


def test_serve_exits_nonzero_when_startup_fails(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "HOST", "SECRETS_DIR")}
    blocker = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                sys.path.insert(0, {str(TESTS)!r})
                import kit_serve_app
                from contextlib import asynccontextmanager

                def broken(settings):
                    @asynccontextmanager
                    async def lifespan(app):
                        raise RuntimeError("cannot reach the database")
                        yield
                    app = kit_serve_app.create(settings)
                    app.router.lifespan_context = lifespan
                    return app

                kit_serve_app.cli.app_factory = broken
                sys.exit(kit_serve_app.cli.main(["serve", "--port", "0", "--log-format", "json"]))
                """
            ),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert blocker.returncode == 3, blocker.stderr
    assert "cannot reach the database" in blocker.stderr
