"""The benchmark scripts import one another by their bare names (`import loadgen`), as they do when
run from bench/: so bench/ goes on the path for these tests."""

import sys
from pathlib import Path

BENCH = str(Path(__file__).resolve().parents[1])
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
