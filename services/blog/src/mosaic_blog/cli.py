"""`mosaic-blog`: serve, migrate, version, openapi (all from the kit)."""

from __future__ import annotations

from mosaic_blog.app import BLOG

cli = BLOG.cli()


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
