"""Settings from ``DIALER_*`` environment variables.

Every process reads its configuration once, at start-up, into a frozen
:class:`Settings` that is passed down; nothing reads the environment later.
A bad value raises :class:`SettingsError` naming the variable, so that the
operator sees ``DIALER_API_LISTEN: expected host:port, got 'x'`` rather
than a traceback. Secrets are wrapped in :class:`Secret`, whose ``repr`` and
``str`` never show the value, and URLs are masked before they are shown.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, urlsplit, urlunsplit

__all__ = [
    "DEFAULT_SMS_BODY",
    "HostPort",
    "Secret",
    "Settings",
    "SettingsError",
    "mask_url",
]

PREFIX = "DIALER_"
# The SMS gateway's request body: a JSON document or a form (``a={{x}}&b=...``)
# whose values are templates; {{to}} is the E.164 number, {{text}} the node's text.
DEFAULT_SMS_BODY = '{"to": "{{to}}", "from": "{{sender}}", "text": "{{text}}"}'


class SettingsError(ValueError):
    """A ``DIALER_*`` variable holds a value we cannot use."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


@dataclass(frozen=True, slots=True)
class Secret:
    """A value that must never reach a log line, a repr or an error message."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('********')" if self.value else "Secret('')"

    def __str__(self) -> str:
        return "********" if self.value else ""

    def __bool__(self) -> bool:
        return bool(self.value)


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def mask_url(url: str | None) -> str | None:
    """``postgresql://user:pw@host/db`` -> ``postgresql://user:********@host/db``."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}:********@{netloc[1]}"))


def _parse_host_port(variable: str, raw: str) -> HostPort:
    raw = raw.strip()
    host, sep, port_text = raw.rpartition(":")
    if not sep or not host:
        raise SettingsError(variable, f"expected host:port, got {raw!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise SettingsError(variable, f"port must be an integer, got {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise SettingsError(variable, f"port must be 0-65535, got {port}")
    return HostPort(host, port)


def _parse_int(variable: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(variable, f"expected an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(variable, f"must be between {low} and {high}, got {value}")
    return value


def _parse_bool(variable: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(variable, f"expected true or false, got {raw!r}")


def _check_url(variable: str, raw: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in schemes or not parts.netloc:
        shown = mask_url(raw)
        raise SettingsError(variable, f"expected a {'/'.join(schemes)} URL, got {shown!r}")
    return raw.strip()


def _parse_allow_hosts(variable: str, raw: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    for item in items:
        if "/" in item:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise SettingsError(variable, f"{item!r} is not a valid CIDR") from None
    return items


def _check_sms_body(variable: str, raw: str) -> str:
    """A JSON object or array, or a form whose values are templates."""
    try:
        if isinstance(json.loads(raw), (dict, list)):
            return raw
    except ValueError:
        pass
    try:
        if parse_qsl(raw.strip(), keep_blank_values=True, strict_parsing=True):
            return raw.strip()
    except ValueError:
        pass
    raise SettingsError(
        variable, "expected a JSON object or a form (to={{to}}&text={{text}}) of templates"
    )


def _check_smtp_url(variable: str, raw: str) -> str:
    url = _check_url(variable, raw, ("smtp", "smtps"))
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError:
        raise SettingsError(variable, f"bad port in {mask_url(url)!r}") from None
    starttls = parse_qs(parts.query).get("starttls", ["auto"])
    if len(starttls) != 1 or starttls[0] not in ("auto", "require", "off"):
        raise SettingsError(variable, "starttls must be auto, require or off")
    if parts.scheme == "smtps" and starttls[0] != "auto":
        raise SettingsError(variable, "smtps:// is TLS from the start; starttls does not apply")
    return url


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a process needs to know, read once at start-up."""

    database_url: str | None = None
    amqp_url: str | None = None
    api_listen: HostPort = HostPort("127.0.0.1", 8080)
    public_url: str = "http://127.0.0.1:8080"
    sip_listen: HostPort = HostPort("127.0.0.1", 5070)
    rtp_port_min: int = 20000
    rtp_port_max: int = 29999
    realtime_priority: int = 0  # SCHED_RR priority of worker processes (0: normal)
    trunk_uri: str | None = None
    trunk_username: str | None = None
    trunk_password: Secret = Secret("")
    recording_dir: Path = Path("var/recordings")
    data_dir: Path = Path("var")
    webhook_secret: Secret = Secret("")
    webhook_allow_hosts: tuple[str, ...] = ()
    # When set, GET /metrics asks for it as a bearer token.
    metrics_token: Secret = Secret("")
    max_body_bytes: int = 8 * 1024 * 1024
    log_level: str = "INFO"
    log_json: bool = False
    sms_url: str | None = None
    sms_body: str = DEFAULT_SMS_BODY
    sms_auth: Secret = Secret("")
    smtp_url: str | None = None
    email_from: str | None = None
    # Worker processes `dialer up` runs (one in its own process, the rest as
    # children); 0 means one per core.
    workers: int = 0
    # Set by `dialer up` for its worker processes: its in-process broker's socket.
    broker_socket: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``DIALER_*`` variables; raise :class:`SettingsError` on a bad one."""
        env = os.environ if env is None else env
        known = {f"{PREFIX}{f.name.upper()}" for f in fields(cls)}
        # A misspelt variable silently ignored is a classic outage: name it.
        for name in env:
            if name.startswith(PREFIX) and name not in known and name not in _IGNORED:
                raise SettingsError(name, "unknown setting (see the README's configuration table)")

        def get(name: str) -> str | None:
            value = env.get(PREFIX + name)
            return value if value not in (None, "") else None

        values: dict[str, object] = {}
        if (raw := get("DATABASE_URL")) is not None:
            values["database_url"] = _check_url(
                "DIALER_DATABASE_URL", raw, ("postgres", "postgresql")
            )
        if (raw := get("AMQP_URL")) is not None:
            values["amqp_url"] = _check_url("DIALER_AMQP_URL", raw, ("amqp", "amqps"))
        if (raw := get("API_LISTEN")) is not None:
            values["api_listen"] = _parse_host_port("DIALER_API_LISTEN", raw)
        if (raw := get("PUBLIC_URL")) is not None:
            values["public_url"] = _check_url("DIALER_PUBLIC_URL", raw, ("http", "https")).rstrip(
                "/"
            )
        elif "api_listen" in values:
            values["public_url"] = f"http://{values['api_listen']}"
        if (raw := get("SIP_LISTEN")) is not None:
            values["sip_listen"] = _parse_host_port("DIALER_SIP_LISTEN", raw)
        if (raw := get("RTP_PORT_MIN")) is not None:
            values["rtp_port_min"] = _parse_int("DIALER_RTP_PORT_MIN", raw, 1024, 65534)
        if (raw := get("RTP_PORT_MAX")) is not None:
            values["rtp_port_max"] = _parse_int("DIALER_RTP_PORT_MAX", raw, 1025, 65535)
        if (raw := get("REALTIME_PRIORITY")) is not None:
            values["realtime_priority"] = _parse_int("DIALER_REALTIME_PRIORITY", raw, 0, 99)
        if (raw := get("TRUNK_URI")) is not None:
            if not raw.startswith(("sip:", "sips:")):
                raise SettingsError(
                    "DIALER_TRUNK_URI", f"expected a sip: or sips: URI, got {raw!r}"
                )
            values["trunk_uri"] = raw
        if (raw := get("TRUNK_USERNAME")) is not None:
            values["trunk_username"] = raw
        if (raw := get("TRUNK_PASSWORD")) is not None:
            values["trunk_password"] = Secret(raw)
        if (raw := get("RECORDING_DIR")) is not None:
            values["recording_dir"] = Path(raw)
        if (raw := get("DATA_DIR")) is not None:
            values["data_dir"] = Path(raw)
            if get("RECORDING_DIR") is None:
                values["recording_dir"] = Path(raw) / "recordings"
        if (raw := get("WEBHOOK_SECRET")) is not None:
            values["webhook_secret"] = Secret(raw)
        if (raw := get("METRICS_TOKEN")) is not None:
            values["metrics_token"] = Secret(raw)
        if (raw := get("WEBHOOK_ALLOW_HOSTS")) is not None:
            values["webhook_allow_hosts"] = _parse_allow_hosts("DIALER_WEBHOOK_ALLOW_HOSTS", raw)
        if (raw := get("MAX_BODY_BYTES")) is not None:
            values["max_body_bytes"] = _parse_int(
                "DIALER_MAX_BODY_BYTES", raw, 1024, 1024 * 1024 * 1024
            )
        if (raw := get("LOG_LEVEL")) is not None:
            level = raw.strip().upper()
            if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
                raise SettingsError("DIALER_LOG_LEVEL", f"unknown level {raw!r}")
            values["log_level"] = level
        if (raw := get("LOG_JSON")) is not None:
            values["log_json"] = _parse_bool("DIALER_LOG_JSON", raw)
        if (raw := get("SMS_URL")) is not None:
            values["sms_url"] = _check_url("DIALER_SMS_URL", raw, ("http", "https"))
        if (raw := get("SMS_BODY")) is not None:
            values["sms_body"] = _check_sms_body("DIALER_SMS_BODY", raw)
        if (raw := get("SMS_AUTH")) is not None:
            values["sms_auth"] = Secret(raw.strip())
        if (raw := get("SMTP_URL")) is not None:
            values["smtp_url"] = _check_smtp_url("DIALER_SMTP_URL", raw)
        if (raw := get("EMAIL_FROM")) is not None:
            if "@" not in raw or any(ch in raw for ch in "\r\n"):
                raise SettingsError("DIALER_EMAIL_FROM", f"expected an email address, got {raw!r}")
            values["email_from"] = raw.strip()
        if (raw := get("WORKERS")) is not None:
            values["workers"] = _parse_int("DIALER_WORKERS", raw, 0, 256)
        if (raw := get("BROKER_SOCKET")) is not None:
            values["broker_socket"] = raw

        settings = cls(**values)  # type: ignore[arg-type]
        if settings.rtp_port_min >= settings.rtp_port_max:
            raise SettingsError(
                "DIALER_RTP_PORT_MIN",
                f"must be below DIALER_RTP_PORT_MAX ({settings.rtp_port_max})",
            )
        if settings.trunk_password and not settings.trunk_username:
            raise SettingsError("DIALER_TRUNK_USERNAME", "required when a trunk password is set")
        if settings.smtp_url and not settings.email_from:
            raise SettingsError("DIALER_EMAIL_FROM", "required when DIALER_SMTP_URL is set")
        return settings

    def describe(self) -> dict[str, str]:
        """The settings as an operator may see them: secrets and URL passwords masked."""
        shown: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in {"database_url", "amqp_url", "sms_url", "smtp_url"}:
                value = mask_url(value)
            shown[f.name] = "" if value is None else str(value)
        return shown

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.describe().items())
        return f"Settings({inner})"


# Variables the test and CI tooling set that are not process settings.
_IGNORED = frozenset(
    {
        "DIALER_TEST_DATABASE_URL",
        "DIALER_TESTDATA",
        "DIALER_TEST_AMQP_URL",
        # Read by setup.py at install time (no compiled modules), not by the program.
        "DIALER_PURE_PYTHON",
    }
)
