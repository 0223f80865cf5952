"""Reading the file: YAML with positions, the models' validation, then the cross-checks of each
section; every problem is reported at once, each as `file:line:column: field: message`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from mosaic_gateway.config.aggregate import check_aggregates
from mosaic_gateway.config.backends import check_backends
from mosaic_gateway.config.base import Problem
from mosaic_gateway.config.cache import check_caches
from mosaic_gateway.config.docs import check_docs
from mosaic_gateway.config.document import GatewayConfig
from mosaic_gateway.config.routes import check_route_resilience, check_routes
from mosaic_gateway.config.security import check_security
from mosaic_gateway.config.yaml_source import YamlSourceError, load_yaml

# Rules that span fields (references between sections, route conflicts), run once the file is
# structurally valid, in this order.
CROSS_CHECKS: tuple[Callable[[GatewayConfig], list[Problem]], ...] = (
    check_backends,
    check_security,
    check_caches,
    check_docs,
    check_route_resilience,
    check_routes,
    check_aggregates,
)


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int | None
    column: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.column}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ConfigError(Exception):
    """The file cannot be used; `issues` lists every problem found."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


def _field_name(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read, parse and validate a configuration file, or raise ConfigError."""
    file = os.fspath(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(file, None, None, "", f"cannot read: {exc}")]) from None
    return parse_config(text, file)


def parse_config(text: str, file: str = "<config>") -> GatewayConfig:
    """Validate configuration text; `file` only names the source in error messages."""
    try:
        document = load_yaml(text)
    except YamlSourceError as exc:
        line = exc.position.line if exc.position else None
        column = exc.position.column if exc.position else None
        raise ConfigError([ConfigIssue(file, line, column, "", exc.message)]) from None

    def issue(path: Sequence[str | int], message: str) -> ConfigIssue:
        position, _ = document.position_of(path)
        return ConfigIssue(
            file,
            position.line if position else None,
            position.column if position else None,
            _field_name(path),
            message,
        )

    if not isinstance(document.data, dict):
        raise ConfigError([issue((), "the file must hold a mapping with 'backends' and 'routes'")])
    try:
        config = GatewayConfig.model_validate(document.data)
    except ValidationError as exc:
        issues = []
        for error in exc.errors(include_url=False):
            # Pydantic appends "[key]" when a dict key (not its value) failed.
            loc = [part for part in error["loc"] if part != "[key]"]
            message = error["msg"]
            if message.startswith("Value error, "):
                message = message[len("Value error, ") :]
            issues.append(issue(loc, message))
        raise ConfigError(issues) from None
    problems = [problem for check in CROSS_CHECKS for problem in check(config)]
    if problems:
        raise ConfigError([issue(path, message) for path, message in problems])
    return config
