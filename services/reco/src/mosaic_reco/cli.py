"""`mosaic-reco`: serve, migrate, version, openapi (all from the kit).

The service (`mosaic_reco.app:RECO`) is imported by the commands that build it, not by
`migrate`: add a command with `@cli.command(...)` and import what it needs inside it.
"""

from __future__ import annotations

from mosaic_kit.fastapi.cli import ServiceCLI
from mosaic_reco.settings import RecoSettings

cli = ServiceCLI.for_definition("mosaic-reco", RecoSettings, "mosaic_reco.app:RECO")


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
