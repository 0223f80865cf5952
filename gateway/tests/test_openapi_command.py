"""`mosaic-gateway openapi`: the merged document the gateway serves, printed without serving.

From files (offline, e.g. each service's `openapi` command) or fetched once from the backends'
static instances; the same merge as the running gateway's /docs/openapi.json (compared here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway_support import BackendFactory, GatewayFactory, free_port, plain_get
from test_docs import docs_config, operations

from mosaic_gateway.cli import main

pytestmark = pytest.mark.timeout(60)

ROUTED = {
    ("/v1/items", "get"),
    ("/v1/items/{item_id}", "get"),
    ("/v1/items/{item_id}", "delete"),
    ("/b/items", "get"),
    ("/b/items/{item_id}", "get"),
}


def write_config(directory: Path, config: dict[str, Any]) -> str:
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def nobody() -> str:
    """An instance URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["openapi", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_fetched_from_the_instances_it_is_what_the_gateway_serves(
    tmp_path: Path,
    backends: BackendFactory,
    gateways: GatewayFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alpha = backends("alpha")
    beta = backends("beta")
    config = docs_config(alpha.url, beta.url)
    served = (await gateways(config).client().get("/docs/openapi.json")).json()
    code, out, err = run(capsys, "--config", write_config(tmp_path, config))
    assert (code, err) == (0, "")
    printed = json.loads(out)
    assert printed == served
    assert operations(printed) == ROUTED
    assert printed["x-gateway-sources"] == {"alpha": "ok", "beta": "ok"}


def test_from_files_no_instance_needed(
    tmp_path: Path, backends: BackendFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # The documents saved from real backends, then the backends gone: files are enough.
    alpha, beta = backends("alpha"), backends("beta")
    for backend in (alpha, beta):
        document = plain_get(backend.url + "/openapi.json").content
        (tmp_path / f"{backend.name}.json").write_bytes(document)
    backends.close()
    config = write_config(tmp_path, docs_config(nobody(), nobody()))
    output = tmp_path / "merged.json"
    code, out, err = run(
        capsys,
        "--config",
        config,
        "--document",
        f"alpha={tmp_path / 'alpha.json'}",
        "--document",
        f"beta={tmp_path / 'beta.json'}",
        "--output",
        str(output),
    )
    assert (code, out, err) == (0, "", "")
    assert operations(json.loads(output.read_text())) == ROUTED


def test_a_source_that_cannot_be_had_fails_unless_allowed(
    tmp_path: Path, backends: BackendFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    alpha = backends("alpha")
    config = write_config(tmp_path, docs_config(alpha.url, nobody()))
    code, out, err = run(capsys, "--config", config)
    assert (code, out) == (1, "")
    assert "beta: http://127.0.0.1:" in err
    assert "ConnectError" in err

    code, out, err = run(capsys, "--config", config, "--allow-missing")
    assert code == 0
    printed = json.loads(out)
    assert printed["x-gateway-sources"] == {"alpha": "ok", "beta": "unavailable"}
    assert {path for path, _ in operations(printed)} == {"/v1/items", "/v1/items/{item_id}"}
    assert "beta:" in err


@pytest.mark.parametrize(
    ("document", "content", "message"),
    [
        ("alpha", None, "expected SOURCE=FILE"),
        ("gamma={file}", b"{}", "gamma: not a docs source (sources: alpha, beta)"),
        ("alpha={missing}", None, "cannot read"),
        ("alpha={file}", b"<html>", "not JSON"),
        ("alpha={file}", b'{"openapi": "3.1.0"}', "not an OpenAPI document (no paths)"),
    ],
)
def test_bad_document_arguments_are_refused_and_nothing_is_printed(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    document: str,
    content: bytes | None,
    message: str,
) -> None:
    file = tmp_path / "doc.json"
    if content is not None:
        file.write_bytes(content)
    argument = document.format(file=file, missing=tmp_path / "missing.json")
    output = tmp_path / "merged.json"
    config = write_config(tmp_path, docs_config(nobody(), nobody()))
    code, out, err = run(
        capsys, "--config", config, "--document", argument, "--output", str(output)
    )
    assert (code, out) == (1, "")
    assert message in err
    assert not output.exists()


def test_a_configuration_without_docs_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = docs_config(nobody(), nobody())
    del config["docs"]
    code, out, err = run(capsys, "--config", write_config(tmp_path, config))
    assert (code, out) == (1, "")
    assert "no docs section" in err
