"""`python -m partner_app` (with `examples/` on the path): see cli.py."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
