"""Settings: DIALER_* variables, errors that name the variable, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from dialer.settings import HostPort, Settings, SettingsError, mask_url


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings.database_url is None
    assert settings.api_listen == HostPort("127.0.0.1", 8080)


def test_reads_every_kind_of_value() -> None:
    settings = Settings.from_env(
        {
            "DIALER_DATABASE_URL": "postgresql://u:hunter2@db:5432/d",
            "DIALER_AMQP_URL": "amqp://guest:guest@mq/",
            "DIALER_API_LISTEN": "0.0.0.0:9000",
            "DIALER_SIP_LISTEN": "[::1]:5060",
            "DIALER_RTP_PORT_MIN": "30000",
            "DIALER_RTP_PORT_MAX": "30100",
            "DIALER_TRUNK_URI": "sip:trunk.example.com",
            "DIALER_TRUNK_USERNAME": "acme",
            "DIALER_TRUNK_PASSWORD": "s3cret-pw",
            "DIALER_DATA_DIR": "/srv/dialer",
            "DIALER_WEBHOOK_ALLOW_HOSTS": "127.0.0.0/8, hooks.local",
            "DIALER_LOG_JSON": "true",
        }
    )
    assert settings.api_listen == HostPort("0.0.0.0", 9000)
    assert settings.public_url == "http://0.0.0.0:9000"
    assert settings.sip_listen == HostPort("::1", 5060)
    assert settings.recording_dir == Path("/srv/dialer/recordings")
    assert settings.webhook_allow_hosts == ("127.0.0.0/8", "hooks.local")
    assert settings.trunk_password.value == "s3cret-pw"
    assert settings.log_json is True


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DIALER_API_LISTEN": "nonsense"}, "DIALER_API_LISTEN"),
        ({"DIALER_API_LISTEN": "host:99999"}, "DIALER_API_LISTEN"),
        ({"DIALER_SIP_LISTEN": "host:port"}, "DIALER_SIP_LISTEN"),
        ({"DIALER_DATABASE_URL": "mysql://x/y"}, "DIALER_DATABASE_URL"),
        ({"DIALER_AMQP_URL": "http://x"}, "DIALER_AMQP_URL"),
        ({"DIALER_RTP_PORT_MIN": "abc"}, "DIALER_RTP_PORT_MIN"),
        ({"DIALER_RTP_PORT_MIN": "40000", "DIALER_RTP_PORT_MAX": "30000"}, "DIALER_RTP_PORT_MIN"),
        ({"DIALER_TRUNK_URI": "http://trunk"}, "DIALER_TRUNK_URI"),
        ({"DIALER_TRUNK_PASSWORD": "x"}, "DIALER_TRUNK_USERNAME"),
        ({"DIALER_WEBHOOK_ALLOW_HOSTS": "10.0.0.0/33"}, "DIALER_WEBHOOK_ALLOW_HOSTS"),
        ({"DIALER_LOG_LEVEL": "LOUD"}, "DIALER_LOG_LEVEL"),
        ({"DIALER_LOG_JSON": "maybe"}, "DIALER_LOG_JSON"),
        ({"DIALER_DATABSE_URL": "postgresql://x/y"}, "DIALER_DATABSE_URL"),  # misspelt
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert info.value.variable == variable
    assert str(info.value).startswith(variable)


def test_the_install_time_switch_is_not_a_setting() -> None:
    # DIALER_PURE_PYTHON is read by setup.py; left exported, it must not stop the program.
    assert Settings.from_env({"DIALER_PURE_PYTHON": "1"}) == Settings.from_env({})


def test_secrets_never_shown() -> None:
    settings = Settings.from_env(
        {
            "DIALER_DATABASE_URL": "postgresql://u:hunter2@db/d",
            "DIALER_TRUNK_USERNAME": "acme",
            "DIALER_TRUNK_PASSWORD": "s3cret-pw",
            "DIALER_WEBHOOK_SECRET": "whsec_abc",
        }
    )
    for text in (repr(settings), str(settings), str(settings.describe())):
        assert "hunter2" not in text
        assert "s3cret-pw" not in text
        assert "whsec_abc" not in text
    assert "u:********@db" in settings.describe()["database_url"]
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"DIALER_DATABASE_URL": "mysql://u:hunter2@db/d"})
    assert "hunter2" not in str(info.value)


def test_mask_url() -> None:
    assert mask_url("amqp://guest:guest@h:5672/") == "amqp://guest:********@h:5672/"
    assert mask_url("postgresql://h/db") == "postgresql://h/db"
    assert mask_url(None) is None
