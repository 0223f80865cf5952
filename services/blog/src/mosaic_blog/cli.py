"""`mosaic-blog`: serve, migrate, version, openapi (all from the kit)."""

from __future__ import annotations

from mosaic_blog.app import create_blog_app
from mosaic_blog.settings import BlogSettings
from mosaic_kit.fastapi.cli import ServiceCLI

cli = ServiceCLI("mosaic-blog", BlogSettings, create_blog_app, package="mosaic_blog")


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
