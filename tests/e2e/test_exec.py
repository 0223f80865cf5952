"""`mosaic exec`: a service's operator command against the running stack, never a guessed one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from e2e_support import MOSAIC, System


def exec_(system: System, *arguments: str) -> subprocess.CompletedProcess[str]:
    # Options of `mosaic exec` come before SERVICE: everything after it is the command's.
    return subprocess.run(
        [*MOSAIC, "exec", "--data", str(system.data), *arguments],
        env=system.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_rotate_keys_through_exec_reaches_the_running_stack(system: System) -> None:
    done = exec_(system, "auth", "rotate-keys")
    assert done.returncode == 0, done.stderr
    kid = json.loads(done.stdout.strip().splitlines()[-1])["kid"]
    with system.client(api_key=None) as http:
        keys = http.get("/v1/auth/jwks.json").json()["keys"]
    assert kid in {key["kid"] for key in keys}


def test_exec_without_a_stack_or_with_an_unknown_service_says_so(
    system: System, tmp_path: Path
) -> None:
    nowhere = subprocess.run(
        [*MOSAIC, "exec", "auth", "migrate", "--data", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert nowhere.returncode == 2
    assert "no stack runs from" in nowhere.stderr
    unknown = exec_(system, "nope", "migrate")
    assert unknown.returncode == 2
    assert "no service 'nope' in the registry" in unknown.stderr


def test_a_service_command_outside_the_stack_refuses_to_guess(system: System) -> None:
    env = {k: v for k, v in system.env.items() if k != "DATABASE_URL"}
    auth = str(Path(sys.executable).parent / "mosaic-auth")
    done = subprocess.run(
        [auth, "migrate"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert "mosaic exec auth migrate" in done.stderr
