"""Contract fuzzing: schemathesis over the merged OpenAPI document at the gateway's `/docs`.

Every operation the gateway routes gets generated requests, valid and invalid (the coverage
phase's boundary values, NUL bytes included, then random ones), through the gateway with the
demo API key and a token holding every role. Every answer must be no 5xx, with a status, a content
type and a body that the document declares for that operation. A failure is fixed in the service
or in its OpenAPI declarations, never skipped here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from contract_support import Fuzzer, run_schemathesis
from e2e_support import System

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SIGNOUT = "/v1/auth/signout"


def test_every_answer_is_one_the_merged_openapi_declares(
    system: System, fuzzer: Fuzzer, tmp_path: Path
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(fuzzer.config())
    # Sign-out ends the session it is called with: it gets a session of its own.
    runs = [
        run_schemathesis(
            system.gateway, config, fuzzer.token, fuzzer.api_key, "--exclude-path", SIGNOUT
        ),
        run_schemathesis(
            system.gateway, config, fuzzer.spare_token, fuzzer.api_key, "--include-path", SIGNOUT
        ),
    ]
    for run in runs:
        assert run.returncode == 0, run.output
        assert " passed" in run.cases, run.output
    print("schemathesis:", "; ".join(f"{run.cases} in {run.seconds:.1f} s" for run in runs))
