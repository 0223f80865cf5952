"""`mosaic-reco`: serve, migrate, version, openapi (from the kit) and rebuild.

The service (`mosaic_reco.app:RECO`) is imported by the commands that build it, not by
`migrate` or `rebuild`.
"""

from __future__ import annotations

import argparse
import sys

import orjson

from mosaic_kit.fastapi.cli import ServiceCLI
from mosaic_reco.settings import RecoSettings

cli = ServiceCLI.for_definition("mosaic-reco", RecoSettings, "mosaic_reco.app:RECO")


@cli.command(
    "rebuild",
    help="Replay the blog's and auth's streams into a fresh read model and swap it in "
    "(the service keeps answering); print what was replayed as JSON",
)
async def rebuild(settings: RecoSettings, _args: argparse.Namespace) -> int:
    from mosaic_reco.rebuild import rebuild as run

    done = await run(settings)
    sys.stdout.write(
        orjson.dumps(
            {"schema": done.schema, "events": done.events, "seconds": round(done.seconds, 2)}
        ).decode()
        + "\n"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
