"""`mosaic-blog`: serve, migrate, version, openapi (all from the kit).

The service (`mosaic_blog.app:BLOG`) is imported by the commands that build it, not by `migrate`.
"""

from __future__ import annotations

from mosaic_blog.settings import BlogSettings
from mosaic_kit.fastapi.cli import ServiceCLI

cli = ServiceCLI.for_definition("mosaic-blog", BlogSettings, "mosaic_blog.app:BLOG")


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
