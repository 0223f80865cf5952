"""`mosaic`: run the whole Mosaic system on this machine.

mosaic up [--replicas N] [--data DIR] [--detach]   start everything (the gateway in front), stream
          [--nats-cluster 3]                       the logs
mosaic status [--json]                             what runs, and whether it is ready
mosaic down                                        stop everything `up` started
mosaic logs [SERVICE|INSTANCE] [--follow]          the log files, prefixed
mosaic exec SERVICE COMMAND [ARGS...]              a service's command against the running stack
mosaic new service NAME [--root DIR]               generate a service on the kit's chassis
mosaic manifests --overlay dev|prod --out DIR      Kubernetes manifests from the registry
mosaic compose [--secrets] [--root DIR]            compose.yaml from the registry
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mosaic_devstack.down import down
from mosaic_devstack.execute import exec_in_stack
from mosaic_devstack.logs import logs
from mosaic_devstack.output import Console
from mosaic_devstack.scaffold import ScaffoldError, new_service, route_prefixes
from mosaic_devstack.services import (
    SERVICES,
    RegistryError,
    Service,
    load_registry,
    load_services,
)
from mosaic_devstack.state import DataDir, StateError
from mosaic_devstack.status import status
from mosaic_devstack.supervisor import UpOptions
from mosaic_devstack.up import run_detached, run_foreground
from mosaic_kit.version import add_version_flag, describe

DEFAULT_DATA = ".mosaic"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _cluster_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    # JetStream keeps a stream while a majority of its servers is up: 2 nodes tolerate no
    # loss at all (one down leaves no majority), so an even size only adds a way to fail.
    if value != 1 and (value < 3 or value % 2 == 0):
        raise argparse.ArgumentTypeError(
            f"{value} nodes: a JetStream cluster needs an odd number of at least 3 (3 or 5) "
            "to keep a quorum when one node is down; 1 is the single embedded server"
        )
    if value > 5:
        raise argparse.ArgumentTypeError("at most 5 nodes (JetStream replicates to at most 5)")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be a port number (0: any free port)")
    return value


def _env_port() -> int | None:
    text = os.environ.get("MOSAIC_GATEWAY_PORT")
    return _port(text) if text else None


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        default=Path(os.environ.get("MOSAIC_DATA", DEFAULT_DATA)),
        help="data folder (default: $MOSAIC_DATA or ./.mosaic)",
    )
    parser = argparse.ArgumentParser(
        prog="mosaic", description="Run the whole Mosaic system on this machine."
    )
    add_version_flag(parser, lambda: describe("mosaic", "mosaic_devstack"))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up",
        parents=[common],
        help="start PostgreSQL, NATS and every service",
        description="Start embedded PostgreSQL and NATS (unless DATABASE_URL / NATS_URL are "
        "set), migrate and seed every service, run its replicas, stream their output. "
        "Ctrl-C stops everything.",
    )
    up.add_argument(
        "--replicas", type=_positive_int, default=2, metavar="N", help="instances per service (2)"
    )
    up.add_argument(
        "--nats-cluster",
        type=_cluster_size,
        default=1,
        metavar="N",
        help="run N embedded NATS servers as a JetStream cluster (3 or 5), every stream "
        "replicated on each; services get all their URLs (default 1: a single server)",
    )
    up.add_argument(
        "--detach", action="store_true", help="run in the background; return once ready"
    )
    up.add_argument(
        "--quiet", action="store_true", help="do not echo the services' output (logs still kept)"
    )
    up.add_argument(
        "--ready-timeout",
        type=_seconds,
        metavar="SECONDS",
        default=60.0,
        help="seconds an instance has to answer /readyz (60)",
    )
    up.add_argument(
        "--grace",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="seconds a service has to stop (10)",
    )
    up.add_argument(
        "--max-restarts",
        type=int,
        metavar="N",
        default=5,
        help="restarts in a row of a crashing instance before giving up (5)",
    )
    up.add_argument(
        "--services",
        type=Path,
        metavar="FILE",
        help="JSON file listing the services to run instead of the built-in list",
    )
    up.add_argument(
        "--gateway-port",
        type=_port,
        metavar="PORT",
        default=None,
        help="the gateway's port, the one clients call (default: $MOSAIC_GATEWAY_PORT, else "
        "8080 when free, else any free port; 0: any free port)",
    )
    up.add_argument(
        "--gateway-workers",
        type=_positive_int,
        default=2,
        metavar="N",
        help="gateway worker processes (2)",
    )
    up.add_argument(
        "--no-gateway",
        dest="gateway",
        action="store_false",
        help="run the services without the gateway in front",
    )

    st = commands.add_parser("status", parents=[common], help="show what runs")
    st.add_argument("--json", action="store_true", help="machine-readable, with credentials")

    dn = commands.add_parser("down", parents=[common], help="stop what `up` started")
    dn.add_argument(
        "--timeout",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="seconds to wait for the supervisor (60)",
    )

    lg = commands.add_parser("logs", parents=[common], help="print the log files")
    lg.add_argument("name", nargs="?", help="a service (auth), an instance (auth-1), or all")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    lg.add_argument(
        "-n",
        "--lines",
        type=int,
        default=200,
        metavar="N",
        help="lines per file to start with (0: all)",
    )

    ex = commands.add_parser(
        "exec",
        parents=[common],
        help="run a service's command (migrate, rotate-keys, ...) against the running stack",
        description="Run `<service command> COMMAND ARGS` with the database, NATS, schema and "
        "secrets that `mosaic up` gives the service.",
    )
    ex.add_argument("service", metavar="SERVICE", help="a service of the registry, e.g. auth")
    ex.add_argument("arguments", nargs=argparse.REMAINDER, metavar="COMMAND [ARGS...]")

    new = commands.add_parser("new", help="generate a new part of the workspace")
    kinds = new.add_subparsers(dest="kind", required=True, metavar="KIND")
    service = kinds.add_parser(
        "service",
        help="a complete service on the kit's chassis (docs/new-service.md)",
        description="Generate services/NAME (package, migrations, tests, docs page), register "
        "it in the workspace and the service registry, lock and sync the environment.",
    )
    service.add_argument("name", metavar="NAME", help="lower-case letters and digits, e.g. reco")
    service.add_argument(
        "--root",
        type=Path,
        default=Path.cwd(),
        metavar="DIR",
        help="the workspace (default: the current directory)",
    )
    mf = commands.add_parser(
        "manifests",
        help="render Kubernetes manifests from the service registry (docs/kubernetes.md)",
        description="Write one YAML file per resource and a kustomization.yaml into DIR, for "
        "`kubectl apply -k DIR`. No secret value is written: DIR/create-secrets.sh lists the "
        "Secrets to create.",
    )
    mf.add_argument("--overlay", required=True, metavar="NAME", help="dev, prod, ... (a TOML)")
    mf.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    mf.add_argument(
        "--overlays",
        type=Path,
        metavar="DIR",
        default=None,
        help="folder of the overlays (default: deploy/k8s/overlays of the workspace)",
    )
    mf.add_argument(
        "--services",
        type=Path,
        metavar="FILE",
        help="JSON file listing the services instead of the built-in registry",
    )
    cp = commands.add_parser(
        "compose",
        help="render compose.yaml from the service registry (docs/containers.md)",
        description="Write compose.yaml and deploy/compose/{gateway.yaml,nats.conf} into the "
        "workspace. With --secrets, also create the missing files of deploy/compose/secrets/ "
        "(never replacing one).",
    )
    cp.add_argument("--secrets", action="store_true", help="create missing secret files too")
    cp.add_argument(
        "--root",
        type=Path,
        default=Path.cwd(),
        metavar="DIR",
        help="the workspace (default: the current directory)",
    )
    return parser


def _compose(args: argparse.Namespace) -> int:
    # Imported here: rendering loads every service's app for its OpenAPI document.
    from mosaic_devstack import compose
    from mosaic_devstack.scaffold import REGISTRY_PATH

    root = args.root.resolve()
    try:
        services = load_registry(root / REGISTRY_PATH)
        written = compose.write(root, services)
        created = compose.write_secrets(root, services) if args.secrets else []
    except (RegistryError, StateError) as exc:
        print(f"mosaic compose: {exc}", file=sys.stderr)
        return 2
    for path in [*written, *created]:
        print(f"mosaic compose: wrote {path.relative_to(root)}")
    return 0


def _manifests(args: argparse.Namespace) -> int:
    # Imported here: rendering loads every service's app for its OpenAPI document.
    from mosaic_devstack import manifests

    try:
        overlay = manifests.load_overlay(args.overlay, args.overlays or manifests.OVERLAYS)
        services = SERVICES if args.services is None else load_services(args.services)
        written = manifests.write(services, overlay, args.out)
    except (manifests.ManifestError, RegistryError) as exc:
        print(f"mosaic manifests: {exc}", file=sys.stderr)
        return 2
    print(f"mosaic manifests: {len(written)} files in {args.out} (kubectl apply -k {args.out})")
    return 0


def _new(args: argparse.Namespace) -> int:
    root = args.root.resolve()
    try:
        new_service(root, args.name, taken_prefixes=route_prefixes(root))
    except ScaffoldError as exc:
        print(f"mosaic new service: {exc}", file=sys.stderr)
        return 2
    return 0


def _up(args: argparse.Namespace, data: DataDir, console: Console) -> int:
    services: tuple[Service, ...] = SERVICES
    if args.gateway_port is None:
        args.gateway_port = _env_port()
    if args.services is not None:
        args.services = args.services.absolute()
        services = load_services(args.services)
    if args.detach:
        forwarded = [
            "--data", str(data.root),
            "--replicas", str(args.replicas),
            "--ready-timeout", str(args.ready_timeout),
            "--grace", str(args.grace),
            "--max-restarts", str(args.max_restarts),
            "--gateway-workers", str(args.gateway_workers),
        ]  # fmt: skip
        if args.services is not None:
            forwarded += ["--services", str(args.services)]
        if args.gateway_port is not None:
            forwarded += ["--gateway-port", str(args.gateway_port)]
        if not args.gateway:
            forwarded.append("--no-gateway")
        if args.nats_cluster != 1:
            forwarded += ["--nats-cluster", str(args.nats_cluster)]
        return run_detached(data, forwarded, console)
    options = UpOptions(
        data=data,
        services=services,
        replicas=args.replicas,
        ready_timeout=args.ready_timeout,
        grace=args.grace,
        max_restarts=args.max_restarts,
        quiet=args.quiet,
        gateway=args.gateway,
        gateway_port=args.gateway_port,
        gateway_workers=args.gateway_workers,
        nats_cluster=args.nats_cluster,
    )
    return run_foreground(options, console)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "new":
        return _new(args)
    if args.command == "manifests":
        return _manifests(args)
    if args.command == "compose":
        return _compose(args)
    data = DataDir.at(args.data)
    console = Console()
    try:
        if args.command == "up":
            return _up(args, data, console)
        if args.command == "status":
            return status(data, as_json=args.json, console=Console(color=False))
        if args.command == "down":
            return down(data, timeout=args.timeout, console=console)
        if args.command == "exec":
            return exec_in_stack(data, SERVICES, args.service, args.arguments)
        return logs(data, args.name, follow=args.follow, lines=args.lines, console=console)
    except (RegistryError, StateError) as exc:
        print(f"mosaic: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
