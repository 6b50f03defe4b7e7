"""The configuration schema: typed values, per-environment defaults, one error naming every problem."""

import re
from pathlib import Path

import pytest

from core import config
from core.config import SCHEMA, ConfigError, load, parse_bytes

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_load_with_an_empty_environment():
    loaded = load({})
    assert loaded.environment == "development"
    assert loaded.PORT == 4000
    assert loaded.JSON_BODY_LIMIT == 100 * 1024
    assert loaded.PGHOST is None
    assert loaded.CONSUL_HOST == "consul-client" and loaded.CONSUL_PORT == 8500
    assert loaded.CONSUL_SERVICE_NAME is None


@pytest.mark.parametrize(
    "raw, expected",
    [("20b", 20), ("27b", 27), ("100kb", 102400), ("1mb", 1048576), ("1.5kb", 1536), ("42", 42), ("2KB", 2048)],
)
def test_body_limit_units_follow_the_bytes_library(raw, expected):
    assert parse_bytes(raw) == expected


def test_environment_name_selects_per_environment_defaults():
    assert load({"APP_ENV": "test"}).LOG_LEVEL == "WARNING"
    assert load({"APP_ENV": "production"}).LOG_LEVEL == "INFO"


def test_node_env_is_honoured_as_the_reference_name_of_app_env():
    assert load({"NODE_ENV": "production"}).environment == "production"


def test_every_invalid_value_is_reported_at_once():
    with pytest.raises(ConfigError) as excinfo:
        load({"APP_ENV": "staging", "PORT": "99999", "JSON_BODY_LIMIT": "lots", "PGPORT": "x", "DEBUG": "maybe"})
    problems = excinfo.value.problems
    assert [p.split(":")[0] for p in problems] == ["APP_ENV", "PORT", "JSON_BODY_LIMIT", "DEBUG", "PGPORT"]
    assert "'staging' is not one of development, test, production" in problems[0]


def test_secrets_are_masked_in_errors_and_display():
    loaded = load({"PGPASSWORD": "hunter2"})
    assert loaded.display("PGPASSWORD") == "********"
    assert loaded.PGPASSWORD == "hunter2"


def test_password_can_come_from_a_file(tmp_path):
    secret = tmp_path / "pgpassword"
    secret.write_text("from-a-file\n")
    loaded = load({"PGPASSWORD_FILE": str(secret)})
    assert loaded.PGPASSWORD == "from-a-file"
    assert loaded.source("PGPASSWORD") == "file"


def test_unreadable_password_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        load({"PGPASSWORD_FILE": str(tmp_path / "missing")})
    assert excinfo.value.problems[0].startswith("PGPASSWORD_FILE: cannot read")


def test_env_example_lists_exactly_the_schema():
    """Regenerate with `make docs` when this fails."""
    names = re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE)
    assert names == [setting.name for setting in SCHEMA]
    assert (ROOT / ".env.example").read_text() == config.env_example()


def test_configuration_page_table_matches_the_schema():
    """Regenerate with `make docs` when this fails."""
    page = (ROOT / "docs" / "configuration.md").read_text()
    table = page.split("<!-- config-table:start -->\n", 1)[1].split("<!-- config-table:end -->", 1)[0]
    assert table == config.markdown_table()


def test_every_setting_has_a_type_parser_and_a_doc():
    for setting in SCHEMA:
        assert setting.type in config.PARSERS, setting.name
        assert setting.doc and "\n" not in setting.doc, setting.name
