"""The command line: `python -m partner_app [options] [summary|blogs|trending|also-liked ID]`.

Configuration comes from the environment (or options), the secret only from the environment or
a file: a secret on a command line ends up in shell histories and in every `ps` listing.

| variable | option | meaning |
|---|---|---|
| `MOSAIC_GATEWAY_URL` | `--gateway` | the gateway (default `http://127.0.0.1:8080`) |
| `MOSAIC_CLIENT_ID` | `--client-id` | the client's id, from `POST /v1/clients` |
| `MOSAIC_CLIENT_SECRET_FILE` | `--secret-file` | a file holding the client's secret |
| `MOSAIC_CLIENT_SECRET` | | the secret itself (when there is no file) |
| `MOSAIC_CLIENT_SCOPE` | `--scope` | scopes to ask for (default: all the client's) |

Exit codes: 0 done, 1 another error answer (e.g. 404), 2 bad configuration, 3 credentials or
token refused, 4 a scope missing, 5 rate limited or unavailable after the retries.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .client import MosaicError, PartnerClient

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
EXIT_CONFIG = 2


class ConfigError(Exception):
    """The application is not configured well enough to start."""


@dataclass(frozen=True)
class Config:
    gateway: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None
    timeout: float


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m partner_app",
        description="Read Mosaic's published blogs and recommendations as a client application"
        " (OAuth 2.0 client credentials). The secret is read from MOSAIC_CLIENT_SECRET_FILE or"
        " MOSAIC_CLIENT_SECRET, never from the command line.",
    )
    p.add_argument("--gateway", help=f"gateway URL (MOSAIC_GATEWAY_URL; {DEFAULT_GATEWAY})")
    p.add_argument("--client-id", help="client id (MOSAIC_CLIENT_ID)")
    p.add_argument(
        "--secret-file", type=Path, help="file with the secret (MOSAIC_CLIENT_SECRET_FILE)"
    )
    p.add_argument("--scope", help="space-separated scopes to ask for (default: all the client's)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request (10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a summary")
    commands = p.add_subparsers(dest="command")
    commands.add_parser("summary", help="the newest blogs and what is trending (the default)")
    blogs = commands.add_parser("blogs", help="published blogs, newest first")
    blogs.add_argument("--limit", type=int, default=20, help="per page, 1-100 (20)")
    blogs.add_argument("--tag")
    pages = blogs.add_mutually_exclusive_group()
    pages.add_argument("--pages", type=int, default=1, help="pages to read, following the cursor")
    pages.add_argument("--all", action="store_true", help="follow the cursor to the end")
    trending = commands.add_parser("trending", help="trending blogs")
    trending.add_argument("--limit", type=int, default=10, help="1-50 (10)")
    trending.add_argument("--window", choices=["24h", "7d", "30d"])
    trending.add_argument("--tag")
    liked = commands.add_parser("also-liked", help="what readers of a blog also liked")
    liked.add_argument("blog_id")
    liked.add_argument("--limit", type=int, default=10, help="1-50 (10)")
    return p


def load_config(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    gateway = args.gateway or env.get("MOSAIC_GATEWAY_URL") or DEFAULT_GATEWAY
    if not gateway.startswith(("http://", "https://")):
        raise ConfigError(f"the gateway URL must be http(s)://...: {gateway!r}")
    client_id = args.client_id or env.get("MOSAIC_CLIENT_ID")
    if not client_id:
        raise ConfigError("no client id: set MOSAIC_CLIENT_ID (or --client-id)")
    secret_file = args.secret_file or (
        Path(env["MOSAIC_CLIENT_SECRET_FILE"]) if env.get("MOSAIC_CLIENT_SECRET_FILE") else None
    )
    if secret_file is not None:
        secret = read_secret_file(secret_file)
    else:
        secret = env.get("MOSAIC_CLIENT_SECRET", "").strip()
    if not secret:
        raise ConfigError(
            "no client secret: set MOSAIC_CLIENT_SECRET_FILE to a file holding it"
            " (or MOSAIC_CLIENT_SECRET)"
        )
    scope = args.scope or env.get("MOSAIC_CLIENT_SCOPE") or None
    if args.timeout <= 0:
        raise ConfigError("--timeout must be positive")
    return Config(gateway, client_id, secret, scope, args.timeout)


def read_secret_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the secret file {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # As ssh does for keys: say so, but do not refuse (the file's owner decides).
        print(
            f"warning: {path} is readable by other users; chmod 600 it", file=sys.stderr, flush=True
        )
    return secret


# -- output ----------------------------------------------------------------------------------------


def _author(blog: Mapping[str, Any]) -> str:
    author = blog.get("author") or {}
    return str(author.get("name") or "unknown author")


def _day(blog: Mapping[str, Any]) -> str:
    return str(blog.get("publishedAt") or "")[:10] or "unpublished"


def print_blogs(pages: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    items = [blog for page in pages for blog in page["items"]]
    more = bool(pages and pages[-1].get("nextCursor"))
    plural = "page" if len(pages) == 1 else "pages"
    print(
        f"Published blogs: {len(items)} in {len(pages)} {plural}"
        + (" (more after these)" if more else ""),
        file=out,
    )
    for blog in items:
        tags = ", ".join(blog.get("tags") or [])
        print(f"  {_day(blog)}  {blog['title']}  by {_author(blog)}  [{tags}]", file=out)
        print(f"              id {blog['id']}", file=out)


def print_picks(title: str, items: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    print(f"{title}: {len(items)}", file=out)
    for rank, item in enumerate(items, 1):
        blog = item["blog"]
        print(
            f"  {rank:>2}. {blog['title']}  by {_author(blog)}"
            f"  (score {float(item['score']):.2f}, {item['reason']})",
            file=out,
        )
    if not items:
        print("  (none yet)", file=out)


# -- running ---------------------------------------------------------------------------------------


def run(client: PartnerClient, args: argparse.Namespace, out: TextIO) -> None:
    command = args.command or "summary"
    result: dict[str, Any]
    if command == "summary":
        first = client.blogs(limit=5)
        picks = client.trending(limit=5)
        result = {"blogs": first["items"], "nextCursor": first["nextCursor"], "trending": picks}
        if not args.json:
            print_blogs([first], out)
            print_picks("Trending (7 days)", picks, out)
    elif command == "blogs":
        max_pages = None if args.all else args.pages
        pages = list(client.blog_pages(limit=args.limit, tag=args.tag, max_pages=max_pages))
        result = {
            "blogs": [blog for page in pages for blog in page["items"]],
            "pages": len(pages),
            "nextCursor": pages[-1]["nextCursor"] if pages else None,
        }
        if not args.json:
            print_blogs(pages, out)
    elif command == "trending":
        picks = client.trending(limit=args.limit, window=args.window, tag=args.tag)
        result = {"trending": picks}
        if not args.json:
            print_picks(f"Trending ({args.window or '7d'})", picks, out)
    else:
        picks = client.also_liked(args.blog_id, limit=args.limit)
        result = {"blogId": args.blog_id, "alsoLiked": picks}
        if not args.json:
            print_picks(f"Readers of {args.blog_id} also liked", picks, out)
    if args.json:
        json.dump(result, out, indent=2)
        out.write("\n")


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    args = parser().parse_args(argv)
    try:
        config = load_config(args, os.environ if env is None else env)
    except ConfigError as exc:
        print(f"partner_app: {exc}", file=err)
        return EXIT_CONFIG
    try:
        with PartnerClient.connect(
            config.gateway,
            client_id=config.client_id,
            client_secret=config.client_secret,
            scope=config.scope,
            timeout=config.timeout,
        ) as client:
            run(client, args, out)
    except MosaicError as exc:
        print(f"partner_app: {exc}", file=err)
        return exc.exit_code
    return 0
