"""Action nodes as requests: rendering, the wire form, verdicts. No IO, no event loop."""

from __future__ import annotations

import email
import email.policy
from urllib.parse import parse_qs

import orjson
import pytest

from dialer.settings import DEFAULT_SMS_BODY, Settings, SettingsError
from scheduler.actions import (
    ActionError,
    ActionPolicy,
    Gateways,
    SmsGateway,
    SmtpServer,
    email_message,
    http_verdict,
    outcome_for,
    parse_retry_after,
    render_action,
    render_text,
    render_url,
    render_value,
    resolver,
    retry_delay_s,
    sms_http,
    webhook_http,
)
from scheduler.workflow import Context

CONTEXT = Context(
    record={
        "id": "r1",
        "first_name": "Anna",
        "last_name": "O'Neil",
        "phone": "+12125550123",
        "phone_number": "2125550123",
        "case_id": "C-1",
    },
    placeholders={"appointment": "Tuesday 3pm", "email": "anna@example.com", "n": 3},
    meta={"crm_id": 42, "tags": ["a", "b"], "nested": {"x": "y"}, "quote": 'say "hi"'},
    call={"outcome": "no_answer", "sip_status": 480},
    result={"answer": "yes"},
)
RESOLVE = resolver(CONTEXT, {"action_id": "act-1"})


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Hi {{record.first_name}}", "Hi Anna"),
        ("Hi {{record.firstName}}", "Hi Anna"),  # camelCase reads the same field
        ("Hi {{ record.lastName }}", "Hi O'Neil"),
        ("{{placeholders.appointment}} / {{meta.crm_id}}", "Tuesday 3pm / 42"),
        ("{{record.phone_number}} {{record.phone}}", "2125550123 +12125550123"),
        ("{{call.outcome}} {{call.sipStatus}} {{result.answer}}", "no_answer 480 yes"),
        ("{{meta.tags}} {{meta.nested}}", '["a","b"] {"x":"y"}'),  # JSON, not Python repr
        ("[{{meta.missing}}] [{{nothing.here}}]", "[] []"),
        ("{{action_id}}", "act-1"),
    ],
)
def test_render_text(template: str, expected: str) -> None:
    assert render_text(template, RESOLVE) == expected


def test_render_value_keeps_json_safe_and_types() -> None:
    template = {
        "name": "{{record.first_name}} {{record.last_name}}",
        "quote": "{{meta.quote}}",
        "crm_id": "{{meta.crm_id}}",
        "meta": "{{meta}}",
        "list": ["{{placeholders.n}}", "n={{placeholders.n}}"],
        "fixed": 7,
    }
    out = render_value(template, RESOLVE)
    assert out == {
        "name": "Anna O'Neil",
        "quote": 'say "hi"',
        "crm_id": 42,
        "meta": dict(CONTEXT.meta),
        "list": [3, "n=3"],
        "fixed": 7,
    }
    # The document survives a value full of quotes: it was never spliced into text.
    assert orjson.loads(orjson.dumps(out))["quote"] == 'say "hi"'


def test_render_url_encodes_each_value() -> None:
    resolve = resolver(Context(meta={"id": "a/b?c=d&e", "n": 5}))
    url = render_url("https://crm.example.com/c/{{meta.id}}?n={{meta.n}}", resolve)
    assert url == "https://crm.example.com/c/a%2Fb%3Fc%3Dd%26e?n=5"


def test_render_sms() -> None:
    node = {
        "id": "s",
        "type": "sms",
        "text": "Hi {{record.firstName}}, {{placeholders.appointment}}",
        "sender": "ACME",
    }
    req = render_action(node, CONTEXT, phone_e164="+12125550123", extra={"action_id": "a1"})
    assert req == {
        "to": "+12125550123",
        "sender": "ACME",
        "text": "Hi Anna, Tuesday 3pm",
        "action_id": "a1",
    }
    with pytest.raises(ActionError, match="empty"):
        render_action({"type": "sms", "text": "{{meta.none}}"}, CONTEXT, phone_e164="+1")


def test_render_email_recipient_rules() -> None:
    node = {
        "type": "email",
        "subject": "For {{record.first_name}}\r\nBcc: x@evil.example",
        "body": "See you {{placeholders.appointment}}",
    }
    req = render_action(node, CONTEXT, phone_e164="+1")
    assert req["to"] == ["anna@example.com"]  # the placeholder, when the node names nobody
    assert req["subject"] == "For Anna Bcc: x@evil.example"  # one line: no header injection
    assert req["body"] == "See you Tuesday 3pm"
    named = render_action(
        {**node, "to": "{{meta.crm_id}}@crm.example.com, b@example.org"}, CONTEXT, phone_e164="+1"
    )
    assert named["to"] == ["42@crm.example.com", "b@example.org"]
    gap = render_action({**node, "to": "{{meta.none}}, b@example.org"}, CONTEXT, phone_e164="+1")
    assert gap["to"] == ["b@example.org"]
    with pytest.raises(ActionError, match="no email recipient"):
        render_action(node, Context(record={"first_name": "X"}), phone_e164="+1")
    with pytest.raises(ActionError, match="not an email address"):
        render_action({**node, "to": "not-an-address"}, CONTEXT, phone_e164="+1")


def test_render_webhook_bodies() -> None:
    base = {"type": "webhook", "url": "https://crm.example.com/hook/{{meta.crm_id}}"}
    plain = render_action(
        base, CONTEXT, phone_e164="+1", extra={"action_id": "a1", "node_id": "hook"}
    )
    assert plain["method"] == "POST" and plain["url"] == "https://crm.example.com/hook/42"
    # No body: the record as the CRM gave it, with the last call and the bot's result.
    assert plain["json"]["record"]["first_name"] == "Anna"
    assert plain["json"]["meta"] == CONTEXT.meta and plain["json"]["result"] == {"answer": "yes"}
    assert plain["json"]["node_id"] == "hook"
    as_text = render_action(
        {**base, "body": '{"who": "{{record.first_name}}", "q": "{{meta.quote}}"}'},
        CONTEXT,
        phone_e164="+1",
    )
    assert as_text["json"] == {"who": "Anna", "q": 'say "hi"'}  # a JSON string template
    free = render_action({**base, "body": "Hello {{record.first_name}}"}, CONTEXT, phone_e164="+1")
    assert free["text"] == "Hello Anna" and "json" not in free
    get = render_action({**base, "method": "GET", "body": {"x": 1}}, CONTEXT, phone_e164="+1")
    assert "json" not in get and "text" not in get
    headered = render_action(
        {**base, "headers": {"X-Crm": "{{meta.crm_id}}\r\nX: y"}}, CONTEXT, phone_e164="+1"
    )
    assert headered["headers"] == [["X-Crm", "42 X: y"]]
    with pytest.raises(ActionError, match="header name"):
        render_action({**base, "headers": {"Bad Name": "x"}}, CONTEXT, phone_e164="+1")


def test_webhook_http_round_trip() -> None:
    req = render_action(
        {
            "type": "webhook",
            "url": "https://x.example/",
            "method": "PUT",
            "body": {"id": "{{meta.crm_id}}"},
        },
        CONTEXT,
        phone_e164="+1",
        extra={"action_id": "a1"},
    )
    http = webhook_http(orjson.loads(orjson.dumps(req)))  # as stored and read back
    assert (http.method, http.url) == ("PUT", "https://x.example/")
    assert orjson.loads(http.body) == {"id": 42}
    headers = dict(http.headers)
    assert headers["Content-Type"] == "application/json" and headers["Idempotency-Key"] == "a1"
    text = webhook_http({"method": "POST", "url": "https://x.example/", "text": "hé"})
    assert text.body == "hé".encode() and dict(text.headers)["Content-Type"].startswith("text/")


def test_sms_http_json_and_form() -> None:
    req = {"to": "+12125550123", "sender": "ACME", "text": 'Say "yes"', "action_id": "a1"}
    http = sms_http(req, SmsGateway("https://sms.example/send", DEFAULT_SMS_BODY, "Bearer k"))
    assert http.method == "POST" and http.url == "https://sms.example/send"
    assert orjson.loads(http.body) == {"to": "+12125550123", "from": "ACME", "text": 'Say "yes"'}
    assert dict(http.headers)["Authorization"] == "Bearer k"
    form = sms_http(
        req, SmsGateway("https://sms.example/", "To={{to}}&Body={{text}}&Ref={{action_id}}")
    )
    assert dict(form.headers)["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(form.body.decode()) == {
        "To": ["+12125550123"],
        "Body": ['Say "yes"'],
        "Ref": ["a1"],
    }
    assert "Authorization" not in dict(form.headers)


def test_email_message() -> None:
    req = {"to": ["anna@example.com"], "subject": "Votre rendez-vous ✓", "body": "À mardi"}
    msg = email_message(req, "Dialer <noreply@dialer.example>", message_id="a1", now=0.0)
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == "Votre rendez-vous ✓" and parsed["To"] == "anna@example.com"
    assert parsed["Message-ID"] == "<a1@dialer.example>"
    assert parsed["Date"] == "Thu, 01 Jan 1970 00:00:00 +0000"
    assert parsed.get_content().strip() == "À mardi"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example", SmtpServer("mail.example", 25)),
        ("smtps://u%40x:p%3Aw@mail.example", SmtpServer("mail.example", 465, "u@x", "p:w", True)),
        (
            "smtp://u:p@mail.example:587?starttls=require",
            SmtpServer("mail.example", 587, "u", "p", False, True),
        ),
        ("smtp://127.0.0.1:2525?starttls=off", SmtpServer("127.0.0.1", 2525, start_tls=False)),
    ],
)
def test_smtp_url(url: str, expected: SmtpServer) -> None:
    assert SmtpServer.parse(url) == expected
    assert "p:w" not in repr(SmtpServer.parse(url))


def test_settings_for_actions() -> None:
    env = {
        "DIALER_SMS_URL": "https://sms.example/send",
        "DIALER_SMS_AUTH": "Bearer k",
        "DIALER_SMTP_URL": "smtp://u:pw-9f3k@mail.example:587",
        "DIALER_EMAIL_FROM": "a@b.example",
    }
    settings = Settings.from_env(env)
    gateways = Gateways.from_settings(settings)
    assert gateways.sms == SmsGateway("https://sms.example/send", DEFAULT_SMS_BODY, "Bearer k")
    assert gateways.smtp == SmtpServer("mail.example", 587, "u", "pw-9f3k")
    assert "pw-9f3k" not in repr(settings) and "Bearer k" not in repr(settings)
    assert Gateways.from_settings(Settings()) == Gateways()
    bad = [
        ({"DIALER_SMS_URL": "ftp://x"}, "DIALER_SMS_URL"),
        ({"DIALER_SMS_BODY": "{not json"}, "DIALER_SMS_BODY"),
        (
            {"DIALER_SMTP_URL": "smtp://h?starttls=maybe", "DIALER_EMAIL_FROM": "a@b.c"},
            "DIALER_SMTP_URL",
        ),
        ({"DIALER_SMTP_URL": "smtp://h"}, "DIALER_EMAIL_FROM"),
    ]
    for bad_env, variable in bad:
        with pytest.raises(SettingsError) as info:
            Settings.from_env(bad_env)
        assert info.value.variable == variable
    assert Settings.from_env({"DIALER_SMS_BODY": "To={{to}}&Body={{text}}"}).sms_body


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, "ok"),
        (204, "ok"),
        (301, "permanent"),
        (400, "permanent"),
        (404, "permanent"),
        (408, "transient"),
        (429, "transient"),
        (500, "transient"),
        (503, "transient"),
    ],
)
def test_http_verdict(status: int, verdict: str) -> None:
    assert http_verdict(status) == verdict


def test_retry_schedule_and_outcomes() -> None:
    policy = ActionPolicy(max_attempts=3, retry_delays_s=(1.0, 10.0))
    assert [retry_delay_s(policy, n, None) for n in (1, 2, 3)] == [1.0, 10.0, None]
    assert retry_delay_s(policy, 1, 30.0) == 30.0  # Retry-After only lengthens a wait
    assert retry_delay_s(policy, 1, 1e9) == policy.retry_after_cap_s
    assert parse_retry_after(" 12 ") == 12.0 and parse_retry_after("soon") is None
    assert [outcome_for(k, ok) for k in ("sms", "email", "webhook") for ok in (True, False)] == [
        "sent",
        "failed",
        "sent",
        "failed",
        "success",
        "failure",
    ]
