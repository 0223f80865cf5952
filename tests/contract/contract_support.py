"""Helpers of the contract tests (fixtures live in conftest.py).

The fuzzing runs schemathesis's own command line (`st run`, as `python -m schemathesis.cli`):
its examples, coverage and fuzzing phases, against the merged document the gateway serves.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# The checks every answer must pass: no 5xx, and a status, content type and body the document
# declares for the operation.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
EXAMPLES = 8
"""Generated requests per operation in the fuzzing phase (the coverage phase adds its own)."""
# Half of the requests to an operation taking an id use an id that exists, so they reach the
# route's logic (a generated UUID is only ever a 404); the other half are generated.
KNOWN_ID_SHARE = 0.5


@dataclass
class Fuzzer:
    """The caller and the data the fuzzed requests use."""

    api_key: str
    token: str
    """Holds every role; its session lives through the run."""
    spare_token: str
    """A session of the same user, for `POST /v1/auth/signout` to end."""
    blog_ids: list[str]
    slugs: list[str]
    user_ids: list[str]
    api_key_ids: list[str]

    def config(self) -> str:
        """schemathesis.toml: the known ids, as dictionaries bound to the path parameters."""
        # A failure is reported with its curl command; no crash files are kept for `st replay`.
        lines: list[str] = ["[cache]", "enabled = false", ""]
        bindings = {
            "blog_id": self.blog_ids,
            "slug": self.slugs,
            "user_id": self.user_ids,
            "key_id": self.api_key_ids,
        }
        for name, values in bindings.items():
            lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
        lines.append("[parameters]")
        for name in bindings:
            lines.append(
                f'"path.{name}" = {{ dictionary = "{name}", probability = {KNOWN_ID_SHARE} }}'
            )
        return "\n".join(lines) + "\n"


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float

    @property
    def cases(self) -> str:
        """The run's count of test cases, e.g. `1132 generated, 1132 passed`."""
        lines = self.output.splitlines()
        found = [lines[i + 1].strip() for i, line in enumerate(lines[:-1]) if line == "Test cases:"]
        return found[-1] if found else "no test cases"


def run_schemathesis(gateway: str, config: Path, token: str, api_key: str, *selection: str) -> Run:
    """`st run` over the gateway's merged document, bounded and repeatable: derandomized
    generation (the same requests every time), no shrinking (a failure is reported as found,
    with its curl command, instead of costing an unbounded number of further requests)."""
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{gateway}/docs/openapi.json",
        "--url",
        gateway,
        "--header",
        f"x-api-key: {api_key}",
        "--header",
        f"authorization: Bearer {token}",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--mode",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--generation-deterministic",
        "--no-shrink",
        "--workers",
        "1",
        "--request-timeout",
        "15",
        "--no-color",
        *selection,
    ]
    started = time.monotonic()
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False, cwd=config.parent
    )
    return Run(done.returncode, done.stdout + done.stderr, time.monotonic() - started)
