"""The docs move with the code: the configuration reference is regenerated and compared."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _configdoc():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("configdoc", ROOT / "tools" / "configdoc.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_current() -> None:
    expected = _configdoc().render()
    actual = (ROOT / "docs" / "configuration.md").read_text()
    assert actual == expected, "run: .venv/bin/python tools/configdoc.py > docs/configuration.md"


def test_every_setting_is_documented_with_its_variable() -> None:
    from mosaic_devstack.services import SERVICES

    text = (ROOT / "docs" / "configuration.md").read_text()
    for service in SERVICES:
        for name in service.load_definition().settings.model_fields:
            assert f"`{name.upper()}`" in text


def test_readme_gives_the_two_quick_start_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme
    assert "make test" in readme
    for doc in ("architecture", "api", "configuration", "operations", "new-service"):
        assert f"docs/{doc}.md" in readme
        assert (ROOT / "docs" / f"{doc}.md").exists(), doc
