"""The README's walk through the API (examples/quickstart.sh) runs as written against the stack."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import System

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "quickstart.sh"


@pytest.mark.skipif(shutil.which("curl") is None, reason="the script calls curl")
def test_the_quickstart_script_runs_as_the_readme_says(system: System) -> None:
    env = {
        **system.env,
        "MOSAIC": f"{shlex.quote(sys.executable)} -m mosaic_devstack.cli",
        "MOSAIC_DATA": str(system.data),
    }
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Hello, Mosaic" in done.stdout
    assert "published " in done.stdout


def test_the_quickstart_script_stops_at_the_first_failure(system: System, tmp_path: Path) -> None:
    # The stack as `mosaic status` reports it, but with a wrong API key: the first call (sign-in)
    # gets a 403, and the script stops there rather than carrying on with an empty token.
    status = system.status()
    status["credentials"]["apiKey"]["key"] = "mk_wrong"
    fake = tmp_path / "status.json"
    fake.write_text(json.dumps(status))
    mosaic = tmp_path / "mosaic"
    mosaic.write_text(f"#!/bin/sh\ncat {shlex.quote(str(fake))}\n")
    mosaic.chmod(0o755)
    env = {**system.env, "MOSAIC": str(mosaic)}
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert "returned error: 403" in done.stderr  # curl -f names the status it failed on
    assert "Traceback" not in done.stderr
    assert "published" not in done.stdout
