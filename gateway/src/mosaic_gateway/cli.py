"""`mosaic-gateway serve|check|openapi --config FILE`, `mosaic-gateway schema`, `mosaic-gateway
version` (or `--version`).

`check` validates a configuration file and prints every problem as `file:line:column: field:
message` (exit 1), or a one-line summary (exit 0): usable in CI and before a reload.
The file may also be named by the `GATEWAY_CONFIG` environment variable. `serve` reloads it on
SIGHUP and when it changes (`--no-watch`: on SIGHUP only). `openapi` prints the merged OpenAPI
document the gateway serves at `docs.path` (handlers/docs.py), from the sources' documents given as files
(`--document auth=auth.json`, e.g. from `mosaic-auth openapi`) or fetched once from the backends'
static instances; exit 1 when a source cannot be had (`--allow-missing`: marked unavailable). `--listen-fd` / `--admin-fd` serve
sockets bound by the caller and inherited (supervisor.py), so the caller can hold the port.
`schema` prints the configuration file's JSON Schema (config/schema.py; committed as
gateway/gateway.schema.json), for editors.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from mosaic_gateway.config import ConfigError, GatewayConfig, load_config, render_json_schema
from mosaic_kit.logging import configure_logging, get_logger
from mosaic_kit.version import add_version_flag, describe

_log = get_logger("mosaic_gateway.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mosaic-gateway", description="Mosaic API gateway: one declarative entry point."
    )
    add_version_flag(parser, _describe)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("version", help="print the version and commit")
    config_help = "the gateway's YAML configuration (default: $GATEWAY_CONFIG)"

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG"), help=config_help)
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes (overrides server.workers; default CPUs)",
    )
    serve.add_argument(
        "--no-watch",
        dest="watch",
        action="store_false",
        help="reload on SIGHUP only, not when the file changes",
    )
    serve.add_argument(
        "--listen-fd",
        type=int,
        default=None,
        metavar="FD",
        help="serve the already bound listening socket inherited as this file descriptor "
        "(its port must be server.port) instead of binding server.listen:server.port",
    )
    serve.add_argument(
        "--admin-fd",
        type=int,
        default=None,
        metavar="FD",
        help="the same for the admin listener (server.admin)",
    )
    serve.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    serve.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default=os.environ.get("LOG_FORMAT", "auto"),
    )

    check = commands.add_parser("check", help="validate a configuration file and exit")
    check.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG"), help=config_help)

    openapi = commands.add_parser(
        "openapi", help="print the merged OpenAPI document the gateway serves at docs.path"
    )
    openapi.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG"), help=config_help)
    openapi.add_argument(
        "--document",
        action="append",
        default=[],
        metavar="SOURCE=FILE",
        help="a source's OpenAPI document from a file instead of its instances (repeatable)",
    )
    openapi.add_argument(
        "--allow-missing",
        action="store_true",
        help="print the document without the sources that cannot be had (marked unavailable)",
    )
    openapi.add_argument("--output", metavar="FILE", help="write it here (default: stdout)")

    schema = commands.add_parser(
        "schema", help="print the JSON Schema of the configuration file (for editors)"
    )
    schema.add_argument("--output", metavar="FILE", help="write it here (default: stdout)")
    return parser


def _load(path: str | None) -> GatewayConfig | None:
    if not path:
        print(
            "mosaic-gateway: no configuration: pass --config FILE or set GATEWAY_CONFIG",
            file=sys.stderr,
        )
        return None
    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return None


def _fail(message: str) -> int:
    print(f"mosaic-gateway openapi: {message}", file=sys.stderr)
    return 1


def _openapi(
    config: GatewayConfig, given: list[str], allow_missing: bool, output: str | None
) -> int:
    from mosaic_gateway.handlers import docs  # the runtime's modules: only this command needs them

    if config.docs is None:
        return _fail("the configuration has no docs section (docs.sources names the documents)")
    documents: dict[str, docs.Json] = {}
    for item in given:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            return _fail(f"--document {item!r}: expected SOURCE=FILE")
        if name not in config.docs.sources:
            known = ", ".join(sorted(config.docs.sources)) or "none"
            return _fail(f"--document {name}: not a docs source (sources: {known})")
        try:
            content = Path(path).read_bytes()
        except OSError as exc:
            return _fail(f"--document {name}: cannot read {path}: {exc.strerror or exc}")
        document = docs.parse_document(content)
        if isinstance(document, str):
            return _fail(f"--document {name}: {path}: {document}")
        documents[name] = document
    fetched, missing = docs.fetch_documents(config, documents)
    for line in missing:
        print(f"mosaic-gateway openapi: {line}", file=sys.stderr)
    if missing and not allow_missing:
        return 1
    text = (
        orjson.dumps(
            docs.merged_document(config, dict(fetched)), option=orjson.OPT_INDENT_2
        ).decode()
        + "\n"
    )
    _write(text, output)
    return 0


def _write(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text)
    else:
        Path(output).write_text(text, encoding="utf-8")


def _describe() -> str:
    return describe("mosaic-gateway", "mosaic_gateway")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(_describe())
        return 0
    if args.command == "schema":
        _write(render_json_schema(), args.output)
        return 0
    config = _load(args.config)
    if config is None:
        return 1
    if args.command == "check":
        print(f"{args.config}: ok ({len(config.routes)} routes, {len(config.backends)} backends)")
        return 0
    if args.command == "openapi":
        return _openapi(config, args.document, args.allow_missing, args.output)
    workers = args.workers if args.workers is not None else config.worker_count()
    if workers < 1:
        print("mosaic-gateway: --workers must be at least 1", file=sys.stderr)
        return 1
    if args.admin_fd is not None and config.server.admin is None:
        print(
            "mosaic-gateway: --admin-fd, but the configuration has no server.admin", file=sys.stderr
        )
        return 1
    configure_logging(
        "gateway", f"{socket.gethostname()}-{os.getpid()}", args.log_level, args.log_format
    )
    from mosaic_gateway.lifecycle.supervisor import serve

    return serve(
        config,
        workers,
        os.path.abspath(args.config),
        watch=args.watch,
        listen_fd=args.listen_fd,
        admin_fd=args.admin_fd,
    )


if __name__ == "__main__":
    sys.exit(main())
