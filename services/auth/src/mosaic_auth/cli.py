"""`mosaic-auth`: serve, migrate, version, openapi (from the kit) plus seed and rotate-keys.

`serve`, `seed` and `rotate-keys` handle private signing keys: without AUTH_SIGNING_KEY_SECRET
(or AUTH_ALLOW_PLAINTEXT_KEYS=true) they refuse, with the reason on stderr and exit code 2.
The service's routes and web framework are imported by `serve` and `openapi` only; `seed` and
`rotate-keys` use the service layer alone.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

import orjson

from mosaic_auth import keys
from mosaic_auth.settings import AuthSettings
from mosaic_kit.fastapi.cli import ServiceCLI

if TYPE_CHECKING:
    from mosaic_auth.service import AuthService

cli = ServiceCLI.for_definition("mosaic-auth", AuthSettings, "mosaic_auth.app:AUTH")


def _service(settings: AuthSettings) -> AuthService:
    from mosaic_auth.service import build_service
    from mosaic_kit.revocation import RevocationSet
    from mosaic_kit.sql.db import Database

    return build_service(settings, Database.from_settings(settings), RevocationSet())


async def _seed(settings: AuthSettings) -> dict[str, object]:
    svc = _service(settings)
    try:
        return await svc.seed()
    finally:
        await svc.db.dispose()


async def _rotate(settings: AuthSettings) -> str:
    svc = _service(settings)
    try:
        return await svc.rotate_keys()
    finally:
        await svc.db.dispose()


@cli.command("serve", help="run the HTTP server")
def serve(settings: AuthSettings, args: argparse.Namespace) -> int:
    # Checked before the server starts: a failing lifespan would bury the reason in a traceback.
    keys.secret_for(settings)
    return cli._serve(settings, args)


@cli.command("seed", help="Create the admin user and demo API key if missing; print them as JSON")
def seed(settings: AuthSettings, _args: argparse.Namespace) -> int:
    # The generated secrets go to stdout once, for the operator (or `mosaic up`) to keep.
    sys.stdout.write(orjson.dumps(asyncio.run(_seed(settings))).decode() + "\n")
    return 0


@cli.command("rotate-keys", help="Start signing with a new key; old tokens stay valid")
def rotate_keys(settings: AuthSettings, _args: argparse.Namespace) -> int:
    kid = asyncio.run(_rotate(settings))
    sys.stdout.write(orjson.dumps({"kid": kid}).decode() + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return cli.main(argv)
    except keys.KeyStorageError as exc:
        sys.stderr.write(f"mosaic-auth: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
