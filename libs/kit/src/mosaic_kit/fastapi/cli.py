"""Every service is a command line program: `<service> serve|migrate|version|openapi|...`.

Each subcommand takes one flag per settings field, generated from the pydantic model
(`database_url` -> `--database-url`, booleans as `--x/--no-x`, `Literal`s as choices, help from
the field's description). A flag given on the command line wins over the environment, `.env` and
the secrets directory; anything not given keeps coming from those.

The web framework, the ASGI server and the service's routes are imported by the commands that
build the app (`serve`, `openapi`), not by the others: a `migrate` or a `seed` process starts
in about half the time (`ServiceCLI.for_definition`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import importlib
import inspect
import json
import math
import signal
import sys
import threading
import types
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, Union, get_args, get_origin

from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo

from mosaic_kit.logging import configure_logging, get_logger
from mosaic_kit.settings import ServiceSettings
from mosaic_kit.version import add_version_flag, build_info, describe

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["CommandFn", "ServiceCLI", "settings_arguments"]

S = TypeVar("S", bound=ServiceSettings)
CommandFn = Callable[[S, argparse.Namespace], "int | Awaitable[int]"]
ArgumentsFn = Callable[[argparse.ArgumentParser], None]

# Settings flags land in the namespace under this prefix, apart from the command's own arguments.
_DEST = "setting__"
_log = get_logger("mosaic_kit.cli")


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _argument_options(field: FieldInfo) -> dict[str, Any]:
    annotation = _unwrap_optional(field.annotation)
    origin = get_origin(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        choices = get_args(annotation)
        return {"choices": choices, "type": type(choices[0])}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        values = [member.value for member in annotation]
        return {"choices": values, "type": type(values[0])}
    if annotation in (int, float, str):
        return {"type": annotation}
    if origin in (list, tuple, set, frozenset, dict) or annotation in (list, dict):
        return {"type": _json_value, "metavar": "JSON"}
    # SecretStr, durations, URLs...: pydantic converts the string itself.
    return {"type": str}


def settings_arguments(
    settings_cls: type[ServiceSettings], only: Collection[str] | None = None
) -> argparse.ArgumentParser:
    """A parent parser with one optional flag per settings field (absent unless given), or per
    field of `only`. Each flag's metavar is its environment variable."""
    parser = argparse.ArgumentParser(add_help=False)
    if only is not None and not only:
        return parser
    group = parser.add_argument_group(
        "settings", "each flag overrides its environment variable, .env entry or secret file"
    )
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    for name, field in settings_cls.model_fields.items():
        if only is not None and name not in only:
            continue
        env = (prefix + name).upper()
        help_text = (field.description or name).replace("%", "%%") + f" [env: {env}]"
        if _unwrap_optional(field.annotation) is SecretStr:
            help_text += " (prefer the env var or a secret file: flags show in `ps`)"
        flag = "--" + name.replace("_", "-")
        options = _argument_options(field)
        if "choices" not in options and options.get("action") is None:
            options.setdefault("metavar", env)
        group.add_argument(
            flag, dest=_DEST + name, default=argparse.SUPPRESS, help=help_text, **options
        )
    return parser


# What `migrate` reads: where the database is, and how to log.
_MIGRATE_SETTINGS = frozenset(
    {"service_name", "instance_id", "log_level", "log_format", "database_url", "db_schema"}
)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k[len(_DEST) :]: v for k, v in vars(args).items() if k.startswith(_DEST)}


@dataclass(frozen=True)
class _Command(Generic[S]):
    run: CommandFn[S]
    help: str
    arguments: ArgumentsFn | None
    logging: bool = True
    database: bool = True
    """Whether it uses the database: then DATABASE_URL must be given, never guessed."""
    settings: Collection[str] | None = None
    """The settings it takes flags for (None: all of them)."""


class ServiceCLI(Generic[S]):
    """The command line of one service.

    `app_factory(settings)` builds the FastAPI app without doing I/O (that happens in its
    lifespan), so `openapi` can build it offline. `package` is the importable package holding
    `migrations/` and the build stamp, e.g. `mosaic_auth`. `database=False` for an app without
    one: `serve` then runs without DATABASE_URL.
    """

    def __init__(
        self,
        name: str,
        settings_cls: type[S],
        app_factory: Callable[[S], FastAPI],
        package: str,
        *,
        database: bool = True,
    ) -> None:
        self.name = name
        self.settings_cls = settings_cls
        self.app_factory = app_factory
        self.package = package
        self._commands: dict[str, _Command[S]] = {
            "serve": _Command(self._serve, "run the HTTP server", None, database=database),
            "migrate": _Command(
                self._migrate,
                "apply database migrations",
                _migrate_arguments,
                settings=_MIGRATE_SETTINGS,
            ),
            "version": _Command(
                self._version,
                "print version and commit",
                _version_arguments,
                logging=False,
                database=False,
                settings=(),
            ),
            "openapi": _Command(
                self._openapi,
                "print the OpenAPI document",
                _openapi_arguments,
                logging=False,
                database=False,
                settings=(),
            ),
        }

    @classmethod
    def for_definition(cls, name: str, settings_cls: type[S], definition: str) -> ServiceCLI[S]:
        """The command line of the `ServiceDefinition` at `definition` ("module:NAME"), imported
        only when a command builds the app. `name` and `settings_cls` must be the definition's
        (checked then): the parser needs them before, and importing the definition would import
        every route, the web framework and the ORM into each `migrate` or `seed` process."""
        module, _, attribute = definition.partition(":")
        if not module or not attribute:
            raise ValueError(f"{definition!r}: expected 'module:NAME'")
        package = module.partition(".")[0]

        def app(settings: S) -> FastAPI:
            found = getattr(importlib.import_module(module), attribute)
            expected = (name, settings_cls, package)
            actual = (f"mosaic-{found.name}", found.settings, found.package)
            if actual != expected:
                raise RuntimeError(f"{definition} is {actual}, its command line says {expected}")
            built: FastAPI = found.app(settings)
            return built

        return cls(name, settings_cls, app, package=package)

    def command(
        self,
        name: str,
        help: str,
        *,
        arguments: ArgumentsFn | None = None,
        database: bool = True,
    ) -> Callable[[CommandFn[S]], CommandFn[S]]:
        """Register `fn(settings, args) -> int` (or an async one) as subcommand `name`.

        `arguments(parser)` may add the subcommand's own arguments. A command that uses the
        database (`database=True`, the default) refuses to run without DATABASE_URL given.
        """

        def register(fn: CommandFn[S]) -> CommandFn[S]:
            self._commands[name] = _Command(fn, help, arguments, database=database)
            return fn

        return register

    def build_parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=self.name)
        self._add_version(parser)
        sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
        for name, command in self._commands.items():
            parent = settings_arguments(self.settings_cls, command.settings)
            sub_parser = sub.add_parser(
                name, help=command.help, description=command.help, parents=[parent]
            )
            self._add_version(sub_parser)
            if command.arguments is not None:
                command.arguments(sub_parser)
        return parser

    def _describe(self) -> str:
        return describe(self.name, self.package)

    def _add_version(self, parser: argparse.ArgumentParser) -> None:
        add_version_flag(parser, self._describe)

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Parse `argv` (default: `sys.argv[1:]`), run the subcommand, return its exit code."""
        args = self.build_parser().parse_args(argv)
        command = self._commands[args.command]
        try:
            settings = self.settings_cls.load(**_overrides(args))
        except ValidationError as exc:
            # Without the inputs: a rejected value may be a secret.
            for error in exc.errors(include_input=False, include_url=False):
                where = ".".join(str(part) for part in error["loc"])
                print(f"{self.name}: invalid setting {where}: {error['msg']}", file=sys.stderr)
            return 2
        if command.database and "database_url" not in settings.model_fields_set:
            # The default (PostgreSQL on 127.0.0.1:5432) is on many machines someone else's
            # server: migrating or rotating keys there by accident is not a default to have.
            print(
                f"{self.name} {args.command}: DATABASE_URL is not set, and this command will not "
                "guess a database. Set it (or --database-url), or run it against the stack that "
                f"`mosaic up` runs: mosaic exec {self.name.removeprefix('mosaic-')} {args.command}",
                file=sys.stderr,
            )
            return 2
        if command.logging:
            configure_logging(
                settings.service_name,
                settings.instance_id,
                settings.log_level,
                settings.log_format,
            )
        result = command.run(settings, args)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        return int(result)

    def _serve(self, settings: S, _args: argparse.Namespace) -> int:
        import uvicorn

        from mosaic_kit.fastapi.server import Server
        from mosaic_kit.tracing import configure_tracing, shutdown_tracing

        configure_tracing(
            settings.service_name, settings.instance_id, settings.otel_exporter_otlp_endpoint
        )
        app = self.app_factory(settings)
        # The installed package's stamp is the authority on what is running, whatever the
        # factory passed to create_app.
        app.state.build = build_info(self.package)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
        )
        server = Server(config)
        try:
            with _stop_signals_end_cleanly():
                server.run()
        except SystemExit as exc:
            # uvicorn exits this way when the lifespan startup or the bind fails.
            return exc.code if isinstance(exc.code, int) else 1
        finally:
            shutdown_tracing()
        return 0 if server.started else 3

    def _migrate(self, settings: S, args: argparse.Namespace) -> int:
        from mosaic_kit.sql.migrations import upgrade

        upgrade(settings, self.package, args.revision)
        _log.info("migrated", schema=settings.db_schema, revision=args.revision)
        return 0

    def _version(self, settings: S, args: argparse.Namespace) -> int:
        info = build_info(self.package)
        if args.json:
            print(json.dumps({"name": self.name, "version": info.version, "commit": info.commit}))
        else:
            print(self._describe())
        return 0

    def _openapi(self, settings: S, args: argparse.Namespace) -> int:
        document = json.dumps(self.app_factory(settings).openapi(), indent=2, ensure_ascii=False)
        if args.output is None:
            print(document)
        else:
            args.output.write_text(document + "\n")
        return 0


@contextlib.contextmanager
def _stop_signals_end_cleanly() -> Iterator[None]:
    """Make a drained stop on SIGTERM/SIGINT exit 0.

    After its graceful shutdown uvicorn re-raises the stop signal against the handler that was in
    place before it started, which by default kills the process (exit -15). With a no-op handler
    there the process returns normally, and orchestrators see a clean exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _ignore_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore_signal(_sig: int, _frame: types.FrameType | None) -> None:
    return None


async def _await(result: Awaitable[int]) -> int:
    return await result


def _migrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--revision", default="head", help="target revision (default: head)")


def _version_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def _openapi_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, help="write to this file instead of stdout")
