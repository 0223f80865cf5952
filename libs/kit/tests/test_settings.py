from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mosaic_kit.settings import ServiceSettings

PASSWORD = "pw-Zq81xK"
DB_URL = f"postgresql://app:{PASSWORD}@db.internal:5432/mosaic"


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ServiceSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("SECRETS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_without_any_source() -> None:
    s = ServiceSettings.load()
    assert s.port == 8000
    assert s.max_body_bytes == 1_048_576
    assert s.readiness_timeout == 2.0
    assert s.otel_exporter_otlp_endpoint is None
    assert s.instance_id  # host-pid, never empty


def test_environment_uses_conventional_unprefixed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", DB_URL)
    monkeypatch.setenv("NATS_URL", "nats://n1:4222,nats://n2:4222")
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    s = ServiceSettings.load()
    assert s.database_url.get_secret_value() == DB_URL
    assert s.nats_url == "nats://n1:4222,nats://n2:4222"
    assert s.port == 9001
    assert s.max_body_bytes == 2048
    assert s.otel_exporter_otlp_endpoint == "http://collector:4318"


def test_dotenv_file_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    (isolated / ".env").write_text("NATS_URL=nats://from-dotenv:4222\nPORT=7000\n")
    monkeypatch.setenv("PORT", "7001")
    s = ServiceSettings.load()
    assert s.nats_url == "nats://from-dotenv:4222"
    assert s.port == 7001


def test_secrets_dir_supplies_one_file_per_secret(
    monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    secrets = isolated / "secrets"
    secrets.mkdir()
    (secrets / "database_url").write_text(DB_URL)
    (secrets / "redis_url").write_text("redis://:r3dis@cache:6379/0")
    monkeypatch.setenv("SECRETS_DIR", str(secrets))
    s = ServiceSettings.load()
    assert s.database_url.get_secret_value() == DB_URL
    assert s.redis_url is not None
    assert s.redis_url.get_secret_value() == "redis://:r3dis@cache:6379/0"


def test_precedence_flags_over_env_over_dotenv_over_secrets(
    monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    secrets = isolated / "secrets"
    secrets.mkdir()
    for name in ("db_schema", "nats_url", "log_level", "service_name"):
        (secrets / name).write_text(f"from-secret-{name}")
    monkeypatch.setenv("SECRETS_DIR", str(secrets))
    (isolated / ".env").write_text("DB_SCHEMA=from_dotenv\nNATS_URL=from-dotenv\nLOG_LEVEL=DEBUG\n")
    monkeypatch.setenv("DB_SCHEMA", "from_env")
    monkeypatch.setenv("NATS_URL", "from-env")
    s = ServiceSettings.load(db_schema="from_flag")
    assert s.db_schema == "from_flag"
    assert s.nats_url == "from-env"
    assert s.log_level == "DEBUG"
    assert s.service_name == "from-secret-service_name"


def test_secrets_never_show_in_repr_str_or_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", DB_URL)
    monkeypatch.setenv("REDIS_URL", f"redis://:{PASSWORD}@cache:6379")
    s = ServiceSettings.load()
    for rendering in (repr(s), str(s), s.model_dump_json(), str(s.model_dump())):
        assert PASSWORD not in rendering
    assert PASSWORD in s.sqlalchemy_url()


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:p@h:5432/d",
        "postgresql://u:p@h:5432/d",
        "postgresql+asyncpg://u:p@h:5432/d",
    ],
)
def test_sqlalchemy_url_always_uses_asyncpg(url: str) -> None:
    assert ServiceSettings.load(database_url=url).sqlalchemy_url() == (
        "postgresql+asyncpg://u:p@h:5432/d"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", 70000),
        ("log_format", "xml"),
        ("environment", "staging"),
        ("max_body_bytes", -1),
        ("readiness_timeout", 0),
    ],
)
def test_invalid_values_are_rejected(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        ServiceSettings.load(**{field: value})


def test_invalid_environment_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_POOL_SIZE", "zero")
    with pytest.raises(ValidationError, match="db_pool_size"):
        ServiceSettings.load()


@pytest.mark.parametrize(
    "schema", ['auth"; DROP SCHEMA auth; --', "Auth", "1abc", "", "a-b", "x" * 49, "blog schema"]
)
def test_a_schema_that_is_not_a_plain_identifier_is_refused(schema: str) -> None:
    # It is quoted into DDL (migrations, a rebuild's `<schema>_next_<hex>`): identifiers only.
    with pytest.raises(ValidationError, match="a schema is 1-48 of a-z"):
        ServiceSettings(db_schema=schema)


def test_a_plain_schema_is_taken() -> None:
    assert ServiceSettings(db_schema="t_0123abcd").db_schema == "t_0123abcd"
    assert ServiceSettings(db_schema="x" * 48).db_schema == "x" * 48
