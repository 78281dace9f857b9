"""Action nodes (sms, email, webhook) as requests: rendering and verdicts, no IO.

An action runs in two halves. Inside the record's transaction,
:func:`render_action` turns the node and the record into a plain JSON
request (the node's templates filled in), which is stored; outside any
transaction, the runner turns that request into what goes on the wire
(:func:`sms_http`, :func:`webhook_http`, :func:`email_message`), sends it,
and asks :func:`http_verdict` and :func:`retry_delay_s` what the answer means.

Templates are ``{{path}}``: ``record.*`` (``record.first_name`` and
``record.firstName`` are the same field), ``placeholders.*``, ``meta.*``,
``call.*`` and ``result.*`` (the last call and the bot's result), plus the
names an action adds (``to``, ``sender``, ``text`` for the SMS gateway;
``action_id``, ``node_id``, ``workflow_id``). A missing value renders as an
empty string. Where a JSON document is the template, every string in it is
rendered on its own, so a value can never break the document's syntax, and a
string that is exactly one placeholder takes the value's own JSON type.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from dialer import jsonutil
from dialer.settings import DEFAULT_SMS_BODY, Settings
from scheduler.workflow import TEMPLATE, Context, as_text, lookup

__all__ = [
    "ACTION_KINDS",
    "ActionError",
    "ActionPolicy",
    "Gateways",
    "HttpRequest",
    "SmsGateway",
    "SmtpServer",
    "email_message",
    "http_verdict",
    "outcome_for",
    "parse_retry_after",
    "render_action",
    "render_text",
    "render_url",
    "render_value",
    "resolver",
    "retry_delay_s",
    "sms_http",
    "webhook_http",
]

ACTION_KINDS = ("sms", "email", "webhook")
Resolve = Callable[[str], Any]
Verdict = Literal["ok", "transient", "permanent"]

_WHOLE = re.compile(rf"^{TEMPLATE.pattern}$")
_METHODS = ("POST", "PUT", "PATCH", "GET")
_OUTCOMES = {
    "sms": ("sent", "failed"),
    "email": ("sent", "failed"),
    "webhook": ("success", "failure"),
}
# 408 and 425 say "try again"; 429 asks to slow down; every 5xx is the server's own trouble.
_TRANSIENT = frozenset({408, 425, 429})
# RFC 9110 section 5.6.2: a header name is a token; ours are at most 128 characters.
HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}$")


class ActionError(ValueError):
    """An action that cannot be carried out as written; ``reason`` is for the tenant."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def outcome_for(kind: str, ok: bool) -> str:
    """The node's outcome name: sms and email are sent|failed, webhook success|failure."""
    good, bad = _OUTCOMES[kind]
    return good if ok else bad


# -- templates ---------------------------------------------------------------


def resolver(context: Context, extra: Mapping[str, Any] | None = None) -> Resolve:
    """Look paths up in ``extra`` (flat names) first, then in the record's context."""
    names = dict(extra or {})

    def resolve(path: str) -> Any:
        if path in names:
            return names[path]
        return lookup(context, path)

    return resolve


def render_text(template: str, resolve: Resolve) -> str:
    """Fill every ``{{path}}``; objects and lists render as JSON, a missing value as ''."""
    return TEMPLATE.sub(lambda m: as_text(resolve(m[1])), template)


def render_url(template: str, resolve: Resolve) -> str:
    """Fill a URL template, percent-encoding each value so it stays one path or query part."""
    return TEMPLATE.sub(lambda m: quote(as_text(resolve(m[1])), safe=""), template)


def render_value(value: Any, resolve: Resolve) -> Any:
    """Render every string inside a JSON value; ``"{{x}}"`` alone becomes x's own value."""
    if isinstance(value, str):
        whole = _WHOLE.match(value)
        if whole:
            found = resolve(whole[1])
            if isinstance(found, Mapping):
                return dict(found)
            return "" if found is None else found
        return render_text(value, resolve)
    if isinstance(value, Mapping):
        return {render_text(str(k), resolve): render_value(v, resolve) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, resolve) for v in value]
    return value


def _json_template(text: str) -> Any | None:
    """The JSON document ``text`` holds (an object or a list), or None."""
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return None
    try:
        value = jsonutil.loads(stripped)
    except ValueError:
        return None
    return value if isinstance(value, (dict, list)) else None


def _one_line(text: str) -> str:
    # A header value with a line break would start a header of its own.
    return " ".join(text.splitlines()).strip()


# -- rendering a node (inside the record's transaction) ---------------------


def _context_body(context: Context, extra: Mapping[str, Any]) -> dict[str, Any]:
    """What a webhook node without a body sends: the record, as the CRM gave it."""
    return {
        **{k: v for k, v in extra.items() if k in ("action_id", "node_id", "workflow_id")},
        "record": dict(context.record),
        "placeholders": context.placeholders,
        "meta": context.meta,
        "call": dict(context.call),
        "result": dict(context.result),
    }


def email_recipients(raw: str) -> list[str]:
    """The addresses in a rendered ``to``; ActionError names the first that is none."""
    found = []
    for _, address in email.utils.getaddresses([raw]):
        if not address.strip():
            continue  # an empty item: a template whose value was missing
        local, at, domain = address.rpartition("@")
        if not at or not local or "." not in domain or any(c.isspace() for c in address):
            raise ActionError(f"{address or raw!r} is not an email address")
        found.append(address)
    if not found:
        raise ActionError("no email recipient (set the node's to, or a placeholder 'email')")
    return found


def render_action(
    node: Mapping[str, Any],
    context: Context,
    *,
    phone_e164: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The request an action node amounts to for this record, as a JSON object.

    Raises :class:`ActionError` when the node cannot be carried out for this
    record at all (no email address, a webhook URL that is not http(s) once
    filled in): the node then fails at once, without any network attempt.
    """
    names = dict(extra or {})
    resolve = resolver(context, names)
    kind = node["type"]
    if kind == "sms":
        text = render_text(node["text"], resolve)
        if not text.strip():
            raise ActionError("the SMS text is empty once rendered")
        return {
            "to": phone_e164,
            "sender": render_text(node.get("sender", ""), resolve),
            "text": text,
            **names,
        }
    if kind == "email":
        to_template = node.get("to") or ""
        raw_to = render_text(to_template, resolve) if to_template.strip() else ""
        if not raw_to.strip():
            raw_to = as_text(lookup(context, "placeholders.email") or lookup(context, "meta.email"))
        return {
            "to": email_recipients(raw_to),
            "subject": _one_line(render_text(node["subject"], resolve)),
            "body": render_text(node["body"], resolve),
            **names,
        }
    if kind == "webhook":
        method = str(node.get("method", "POST")).upper()
        if method not in _METHODS:
            raise ActionError(f"method {method!r} is not one of {', '.join(_METHODS)}")
        url = render_url(node["url"], resolve)
        if urlsplit(url).scheme not in ("http", "https"):
            raise ActionError("the URL must be http(s) once rendered")
        headers = []
        raw_headers = node.get("headers")
        if isinstance(raw_headers, Mapping):
            for name, value in raw_headers.items():
                if not isinstance(name, str) or not HEADER_NAME.match(name):
                    raise ActionError(f"header name {name!r} is not a valid HTTP header name")
                if isinstance(value, str):
                    headers.append([name, _one_line(render_text(value, resolve))])
        request: dict[str, Any] = {"method": method, "url": url, "headers": headers}
        if method != "GET":
            body = node.get("body")
            document = _json_template(body) if isinstance(body, str) else body
            if body is None:
                request["json"] = _context_body(context, names)
            elif document is not None:
                request["json"] = render_value(document, resolve)
            else:
                request["text"] = render_text(body, resolve)
        if "action_id" in names:
            request["action_id"] = names["action_id"]
        return request
    raise ActionError(f"{kind!r} is not an action node")


# -- the wire (outside any transaction) ---------------------------------------


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None


@dataclass(frozen=True, slots=True)
class SmsGateway:
    """An HTTP SMS gateway: where to POST and the body template (JSON or a form)."""

    url: str
    body: str = DEFAULT_SMS_BODY
    authorization: str = ""


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """Where email goes: ``smtp://user:pass@host:port`` or ``smtps://...``.

    ``smtp://`` upgrades with STARTTLS when the server offers it
    (``?starttls=require`` refuses a server that does not, ``?starttls=off``
    never upgrades); ``smtps://`` is TLS from the first byte.
    """

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    use_tls: bool = False
    start_tls: bool | None = None  # None: when offered

    @classmethod
    def parse(cls, url: str) -> SmtpServer:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("expected smtp://user:pass@host:port or smtps://...")
        use_tls = parts.scheme == "smtps"
        mode = dict(parse_qsl(parts.query)).get("starttls", "auto")
        start_tls = {"auto": None, "require": True, "off": False}[mode]
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if use_tls else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            use_tls=use_tls,
            start_tls=None if use_tls else start_tls,
        )

    def __repr__(self) -> str:
        return f"SmtpServer({self.host}:{self.port}, user={self.username!r}, tls={self.use_tls})"


@dataclass(frozen=True, slots=True)
class Gateways:
    """What the operator configured for action nodes; None where nothing is."""

    sms: SmsGateway | None = None
    smtp: SmtpServer | None = None
    email_from: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Gateways:
        sms = None
        if settings.sms_url:
            sms = SmsGateway(settings.sms_url, settings.sms_body, settings.sms_auth.value)
        smtp = SmtpServer.parse(settings.smtp_url) if settings.smtp_url else None
        return cls(sms=sms, smtp=smtp, email_from=settings.email_from)


def sms_http(request: Mapping[str, Any], gateway: SmsGateway) -> HttpRequest:
    """The gateway request for a rendered SMS: a JSON body, or a form, from the template."""
    resolve = resolver(Context(), request)
    headers = [("Idempotency-Key", str(request.get("action_id", "")))]
    if gateway.authorization:
        headers.append(("Authorization", gateway.authorization))
    document = _json_template(gateway.body)
    if document is not None:
        body = jsonutil.dumps_bytes(render_value(document, resolve))
        headers.append(("Content-Type", "application/json"))
    else:
        pairs = parse_qsl(gateway.body.strip(), keep_blank_values=True)
        body = urlencode([(k, render_text(v, resolve)) for k, v in pairs]).encode()
        headers.append(("Content-Type", "application/x-www-form-urlencoded"))
    return HttpRequest("POST", render_url(gateway.url, resolve), tuple(headers), body)


def webhook_http(request: Mapping[str, Any]) -> HttpRequest:
    """The HTTP request a rendered webhook node sends."""
    headers = [(str(k), str(v)) for k, v in request.get("headers", [])]
    given = {k.lower() for k, _ in headers}
    if "idempotency-key" not in given and request.get("action_id"):
        headers.append(("Idempotency-Key", str(request["action_id"])))
    body: bytes | None = None
    if "json" in request:
        body = jsonutil.dumps_bytes(request["json"])
        content_type = "application/json"
    elif "text" in request:
        body = str(request["text"]).encode()
        content_type = "text/plain; charset=utf-8"
    if body is not None and "content-type" not in given:
        headers.append(("Content-Type", content_type))
    return HttpRequest(request["method"], request["url"], tuple(headers), body)


def email_message(
    request: Mapping[str, Any], sender: str, *, message_id: str, now: float
) -> EmailMessage:
    """The message for a rendered email node; ``message_id`` is the same on every retry."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(request["to"])
    message["Subject"] = request["subject"]
    message["Date"] = email.utils.format_datetime(dt.datetime.fromtimestamp(now, dt.UTC))
    domain = sender.rpartition("@")[2].strip("> ") or "dialer.invalid"
    message["Message-ID"] = f"<{message_id}@{domain}>"
    message.set_content(request["body"])
    return message


# -- verdicts --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActionPolicy:
    """How often a transient failure is tried again, and after how long."""

    max_attempts: int = 4
    retry_delays_s: tuple[float, ...] = (5.0, 30.0, 120.0)
    retry_after_cap_s: float = 600.0


def http_verdict(status: int) -> Verdict:
    """2xx is done; 408, 425, 429 and 5xx may pass on a later try; anything else will not."""
    if 200 <= status < 300:
        return "ok"
    if status in _TRANSIENT or status >= 500:
        return "transient"
    return "permanent"


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is ignored: the delay stands)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def retry_delay_s(policy: ActionPolicy, attempt: int, retry_after_s: float | None) -> float | None:
    """After transient failure number ``attempt`` (1-based): wait this long, or None: give up."""
    if attempt >= policy.max_attempts or not policy.retry_delays_s:
        return None
    delay = policy.retry_delays_s[min(attempt, len(policy.retry_delays_s)) - 1]
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, policy.retry_after_cap_s))
    return delay
