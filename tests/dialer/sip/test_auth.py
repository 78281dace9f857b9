"""Digest authentication, client side (dialer.sip.auth)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialer.sip.auth import (
    AUTH_FAILED,
    AUTH_REFUSED,
    AUTH_UNSUPPORTED,
    AuthAttempt,
    AuthError,
    Authorize,
    AuthRefused,
    Credentials,
    DigestChallenge,
    DigestClient,
    build_authorization,
    choose_challenge,
    digest_response,
    parse_challenges,
)


def params(header_value: str) -> dict[str, str]:
    """Our own reading of an Authorization value, to check what was sent."""
    scheme, _, rest = header_value.partition(" ")
    assert scheme == "Digest"
    result = {}
    for part in rest.split(", "):
        name, _, value = part.partition("=")
        result[name] = value[1:-1] if value.startswith('"') else value
    return result


# --- published test vectors ------------------------------------------------------------------

RFC2617_CHALLENGE = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)

# RFC 7616 §3.9.1: the same protection space offered with SHA-256 and with MD5, as two
# header values, folded the way the RFC prints them.
RFC7616_SHA256 = (
    'Digest\r\n    realm="http-auth@example.org",\r\n    qop="auth, auth-int",\r\n'
    '    algorithm=SHA-256,\r\n    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",\r\n'
    '    opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_MD5 = RFC7616_SHA256.replace("SHA-256", "MD5")
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_CREDENTIALS = Credentials("Mufasa", "Circle of Life")


def test_rfc2617_section_3_5_example() -> None:
    (challenge,) = parse_challenges(RFC2617_CHALLENGE)
    value = build_authorization(
        challenge,
        Credentials("Mufasa", "Circle Of Life"),
        "GET",
        "/dir/index.html",
        cnonce="0a4f113b",
        nonce_count=1,
    )
    assert params(value) == {
        "username": "Mufasa",
        "realm": "testrealm@host.com",
        "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "uri": "/dir/index.html",
        "response": "6629fae49393a05397450978507c4ef1",
        "algorithm": "MD5",
        "cnonce": "0a4f113b",
        "opaque": "5ccc069c403ebaf9f0171e9517f40e41",
        "qop": "auth",
        "nc": "00000001",
    }


@pytest.mark.parametrize(
    ("header", "algorithm", "response"),
    [
        (RFC7616_MD5, "MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        (
            RFC7616_SHA256,
            "SHA-256",
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        ),
    ],
)
def test_rfc7616_section_3_9_1_examples(header: str, algorithm: str, response: str) -> None:
    (challenge,) = parse_challenges(header)
    assert challenge.algorithm == algorithm
    assert challenge.qop == ("auth", "auth-int")
    value = build_authorization(
        challenge, RFC7616_CREDENTIALS, "GET", "/dir/index.html", cnonce=RFC7616_CNONCE
    )
    assert value == (
        'Digest username="Mufasa", realm="http-auth@example.org", '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", uri="/dir/index.html", '
        f'response="{response}", algorithm={algorithm}, cnonce="{RFC7616_CNONCE}", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS", qop=auth, nc=00000001'
    )


def test_rfc7616_two_challenges_prefer_sha256() -> None:
    client = DigestClient(RFC7616_CREDENTIALS, "example.org")
    result = client.respond(
        [RFC7616_MD5, RFC7616_SHA256],
        proxy=False,
        method="GET",
        uri="/dir/index.html",
        target_host="example.org",
        cnonce=RFC7616_CNONCE,
    )
    assert isinstance(result, Authorize)
    assert params(result.header_value)["response"] == (
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    )


def test_rfc2069_form_without_qop() -> None:
    # Value as computed by an independent Digest implementation for the RFC 2069 example.
    (challenge,) = parse_challenges(
        'Digest realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    value = build_authorization(
        challenge, Credentials("Mufasa", "CircleOfLife"), "GET", "/dir/index.html", cnonce="x"
    )
    sent = params(value)
    assert sent["response"] == "1949323746fe6a43ef61f9606e7febea"
    assert "qop" not in sent and "nc" not in sent and "cnonce" not in sent
    assert sent["opaque"] == "5ccc069c403ebaf9f0171e9517f40e41"


def h(hash_name: str, data: str | bytes) -> str:
    return hashlib.new(hash_name, data.encode() if isinstance(data, str) else data).hexdigest()


@pytest.mark.parametrize(
    ("algorithm", "hash_name", "qop"),
    [
        ("SHA-512-256", "sha512_256", "auth"),
        ("SHA-256-sess", "sha256", "auth"),
        ("MD5-sess", "md5", "auth"),
        ("MD5", "md5", "auth-int"),
        ("SHA-256", "sha256", "auth-int"),
    ],
)
def test_other_algorithms_follow_rfc7616_section_3_4(algorithm: str, hash_name: str, qop: str):
    challenge = DigestChallenge("sip.example.net", "abc123", algorithm, qop=(qop,))
    creds = Credentials("bob", "zanzibar")
    body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"
    a1 = h(hash_name, "bob:sip.example.net:zanzibar")
    if algorithm.endswith("-sess"):
        a1 = h(hash_name, f"{a1}:abc123:c0ffee")
    a2 = "INVITE:sip:+15551234567@sip.example.net"
    if qop == "auth-int":
        a2 += ":" + h(hash_name, body)
    expected = h(hash_name, f"{a1}:abc123:00000003:c0ffee:{qop}:{h(hash_name, a2)}")
    uri = "sip:+15551234567@sip.example.net"
    got = digest_response(
        challenge, creds, "INVITE", uri, cnonce="c0ffee", nonce_count=3, qop=qop, body=body
    )
    assert got == expected
    sent = params(build_authorization(challenge, creds, "INVITE", uri, cnonce="c0ffee", body=body))
    assert (sent["algorithm"], sent["qop"]) == (algorithm, qop)


# --- parsing challenges ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(
            'Digest realm="asterisk", nonce="1730392834/6c1e9f"',
            [DigestChallenge("asterisk", "1730392834/6c1e9f")],
            id="asterisk-minimal",
        ),
        pytest.param(
            'Digest realm="sip.carrier.example", nonce="Zx1+", qop="auth", algorithm=MD5, '
            "stale=FALSE",
            [DigestChallenge("sip.carrier.example", "Zx1+", "MD5", qop=("auth",))],
            id="carrier-407",
        ),
        pytest.param(
            'digest REALM="r", Nonce="n", QOP=auth, STALE=TRUE, Algorithm=sha-256-SESS, Opaque="o"',
            [DigestChallenge("r", "n", "SHA-256-sess", "o", ("auth",), stale=True)],
            id="case-insensitive-names-unquoted-qop",
        ),
        pytest.param(
            r'Digest realm="a \"quoted\" \\ realm", nonce="n,with,commas"',
            [DigestChallenge('a "quoted" \\ realm', "n,with,commas")],
            id="escapes-and-commas-in-quotes",
        ),
        pytest.param(
            'Digest realm="r", nonce="n", domain="sip:a.example sip:b.example", qop="auth-int"',
            [
                DigestChallenge(
                    "r", "n", domain=("sip:a.example", "sip:b.example"), qop=("auth-int",)
                )
            ],
            id="domain-list",
        ),
        pytest.param(
            'Digest realm="r", nonce="1", algorithm=SHA-256, Digest realm="r", nonce="2"',
            [DigestChallenge("r", "1", "SHA-256"), DigestChallenge("r", "2")],
            id="two-challenges-one-value",
        ),
        pytest.param(
            'Basic realm="b", Negotiate YIIGfQ==, Digest realm="d", nonce="n", foo=bar',
            [DigestChallenge("d", "n")],
            id="other-schemes-and-unknown-params-skipped",
        ),
        pytest.param(
            'Digest realm="r", nonce="n", algorithm=AKAv1-MD5, Digest realm="r", nonce="n", '
            "algorithm=SHA-1",
            [],
            id="unsupported-algorithms-skipped",
        ),
        pytest.param('Digest realm="", nonce="n"', [DigestChallenge("", "n")], id="empty-realm"),
        pytest.param("", [], id="empty"),
    ],
)
def test_parse_challenges(header: str, expected: list[DigestChallenge]) -> None:
    assert list(parse_challenges(header)) == expected


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ('Digest realm="r, nonce="n"', "expected ','"),
        ('Digest realm="r", nonce="n', "unterminated quoted string"),
        ('Digest nonce="n"', "without realm"),
        ('Digest realm="r"', "without nonce"),
        ('Digest realm="r", nonce=""', "without nonce"),
        ('Digest realm="r", realm="s", nonce="n"', "duplicate parameter 'realm'"),
        ('realm="r", nonce="n"', "parameter before the authentication scheme"),
        ('Digest realm="r" nonce="n"', "expected ','"),
        ('Digest realm=, nonce="n"', "parameter 'realm' has no value"),
        ('Digest realm="r\r\nInjected: yes", nonce="n"', "control character"),
        ('Digest realm="r", nonce="n\x00"', "control character"),
        ("@@@", "unexpected character"),
    ],
)
def test_malformed_challenges_raise_auth_error(header: str, reason: str) -> None:
    with pytest.raises(AuthError, match=reason):
        parse_challenges(header)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_text_raises_only_auth_error(header: str) -> None:
    try:
        challenges = parse_challenges(header)
    except AuthError:
        return
    assert all(isinstance(c, DigestChallenge) for c in challenges)


CHALLENGE_PIECES = st.sampled_from(
    ["Digest", " ", ",", "=", '"', "\\", "realm", "nonce", "qop", "auth", "auth-int",
     "algorithm", "MD5", "SHA-256", "stale", "true", "opaque", "Basic", "\r\n", "\x00", "é",
     '"r"', '"n"', "domain"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(CHALLENGE_PIECES, max_size=30).map("".join))
def test_challenge_soup_never_breaks_the_client(header: str) -> None:
    client = DigestClient(Credentials("bob", "secret"), "sip.example.net")
    result = client.respond(
        header,
        proxy=True,
        method="INVITE",
        uri="sip:bob@sip.example.net",
        target_host="sip.example.net",
        cnonce="abc",
    )
    assert isinstance(result, Authorize | AuthRefused)
    if isinstance(result, Authorize):
        assert "\r" not in result.header_value and "\n" not in result.header_value
        assert "\x00" not in result.header_value


# --- choosing among challenges ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["MD5", "SHA-256"], "SHA-256"),
        (["SHA-256", "MD5"], "SHA-256"),
        (["MD5", "SHA-512-256", "SHA-256"], "SHA-512-256"),
        (["MD5-sess", "MD5"], "MD5-sess"),  # equal strength: the server's order
        (["MD5"], "MD5"),
    ],
)
def test_choose_the_strongest_algorithm(offered: list[str], chosen: str) -> None:
    challenges = [DigestChallenge("r", f"n{i}", a, qop=("auth",)) for i, a in enumerate(offered)]
    best = choose_challenge(challenges)
    assert best is not None and best.algorithm == chosen


def test_choose_skips_what_cannot_be_answered() -> None:
    no_qop_we_know = DigestChallenge("r", "1", "SHA-256", qop=("auth-conf",))
    sess_without_qop = DigestChallenge("r", "2", "SHA-256-sess")
    plain = DigestChallenge("r", "3", "MD5")
    assert choose_challenge([no_qop_we_know, sess_without_qop, plain]) == plain
    assert choose_challenge([no_qop_we_know, sess_without_qop]) is None
    assert choose_challenge([plain], realm="other") is None


def test_auth_preferred_over_auth_int() -> None:
    (challenge,) = parse_challenges('Digest realm="r", nonce="n", qop="auth-int,auth"')
    sent = params(build_authorization(challenge, Credentials("u", "p"), "BYE", "sip:x", cnonce="c"))
    assert sent["qop"] == "auth"


# --- the client: policy ----------------------------------------------------------------------

HOST = "sip.carrier.example"
CREDS = Credentials("trunk-42", "s3cret-pass", realm="carrier")


def challenge(nonce: str = "n1", *, stale: bool = False, realm: str = "carrier") -> str:
    return (
        f'Digest realm="{realm}", nonce="{nonce}", algorithm=MD5, qop="auth", '
        f'opaque="op"{", stale=true" if stale else ""}'
    )


def respond(client: DigestClient, values, previous=None, *, proxy=True, host=HOST, cnonce="c1"):
    return client.respond(
        values,
        proxy=proxy,
        method="INVITE",
        uri="sip:+15551234567@sip.carrier.example",
        target_host=host,
        cnonce=cnonce,
        previous=previous,
    )


def test_first_challenge_is_answered() -> None:
    client = DigestClient(CREDS, HOST)
    result = respond(client, challenge("n1"))
    assert isinstance(result, Authorize)
    assert result.header_name == "Proxy-Authorization"
    assert result.attempt == AuthAttempt("carrier", "n1")
    sent = params(result.header_value)
    assert (sent["username"], sent["realm"], sent["nc"], sent["opaque"]) == (
        "trunk-42", "carrier", "00000001", "op",
    )  # fmt: skip
    assert sent["uri"] == "sip:+15551234567@sip.carrier.example"
    a1 = h("md5", "trunk-42:carrier:s3cret-pass")
    a2 = h("md5", "INVITE:sip:+15551234567@sip.carrier.example")
    assert sent["response"] == h("md5", f"{a1}:n1:00000001:c1:auth:{a2}")
    www = respond(client, challenge("n2"), proxy=False)
    assert isinstance(www, Authorize) and www.header_name == "Authorization"


@pytest.mark.parametrize(
    ("second", "reason", "detail"),
    [
        (challenge("n1"), AUTH_FAILED, "credentials rejected"),
        (challenge("n2"), AUTH_FAILED, "credentials rejected"),
        (challenge("n1", stale=True), AUTH_FAILED, "repeated stale nonce"),
        (challenge("n9", realm="elsewhere"), AUTH_FAILED, "another realm"),
    ],
)
def test_a_second_challenge_is_not_answered(second: str, reason: str, detail: str) -> None:
    client = DigestClient(Credentials("trunk-42", "s3cret-pass"), HOST)
    first = respond(client, challenge("n1"))
    assert isinstance(first, Authorize)
    result = respond(client, second, first.attempt)
    assert isinstance(result, AuthRefused)
    assert result.reason == reason and detail in result.detail


def test_stale_nonce_is_retried_once() -> None:
    client = DigestClient(CREDS, HOST)
    first = respond(client, challenge("n1"))
    assert isinstance(first, Authorize)
    second = respond(client, challenge("n2", stale=True), first.attempt)
    assert isinstance(second, Authorize)
    assert second.attempt == AuthAttempt("carrier", "n2", stale_retried=True)
    assert params(second.header_value)["nonce"] == "n2"
    third = respond(client, challenge("n3", stale=True), second.attempt)
    assert third == AuthRefused(AUTH_FAILED, "repeated stale nonce from realm 'carrier'")


@pytest.mark.parametrize("stale", [False, True])
def test_a_server_that_always_challenges_gets_at_most_two_answers(stale: bool) -> None:
    client = DigestClient(CREDS, HOST)
    previous = None
    answers = 0
    for round_number in range(20):
        result = respond(client, challenge(f"n{round_number}", stale=stale), previous)
        if isinstance(result, AuthRefused):
            break
        answers += 1
        previous = result.attempt
    assert isinstance(result, AuthRefused) and result.reason == AUTH_FAILED
    assert answers == (2 if stale else 1)


@pytest.mark.parametrize(
    ("target_host", "allowed"),
    [
        ("sip.carrier.example", True),
        ("SIP.Carrier.Example.", True),
        ("evil.example", False),
        ("sip.carrier.example.evil.example", False),
    ],
)
def test_credentials_only_go_to_the_configured_host(target_host: str, allowed: bool) -> None:
    result = respond(DigestClient(CREDS, HOST), challenge(), host=target_host)
    if allowed:
        assert isinstance(result, Authorize)
    else:
        assert isinstance(result, AuthRefused) and result.reason == AUTH_REFUSED


def test_ipv6_hosts_compare_by_address() -> None:
    client = DigestClient(CREDS, "[2001:db8::1]")
    assert isinstance(respond(client, challenge(), host="2001:DB8:0:0::1"), Authorize)
    assert isinstance(respond(client, challenge(), host="2001:db8::2"), AuthRefused)


def test_credentials_only_go_to_the_configured_realm() -> None:
    client = DigestClient(CREDS, HOST)
    result = respond(client, challenge(realm="other"))
    assert result == AuthRefused(AUTH_REFUSED, "challenge realm is not 'carrier'")
    # With several realms offered, the configured one is answered.
    both = respond(client, [challenge("x", realm="other"), challenge("y")])
    assert isinstance(both, Authorize) and both.attempt.realm == "carrier"


@pytest.mark.parametrize(
    ("values", "reason", "detail"),
    [
        ('Basic realm="carrier"', AUTH_UNSUPPORTED, "no Digest challenge"),
        ('Digest realm="carrier", nonce="n", algorithm=SHA-1', AUTH_UNSUPPORTED, "no Digest"),
        ('Digest realm="carrier", nonce="n", qop="auth-conf"', AUTH_UNSUPPORTED, "qop"),
        ('Digest realm="carrier", nonce="n', AUTH_FAILED, "malformed challenge"),
        ([], AUTH_UNSUPPORTED, "no Digest challenge"),
    ],
)
def test_unusable_challenges_are_refused(values, reason: str, detail: str) -> None:
    result = respond(DigestClient(CREDS, HOST), values)
    assert isinstance(result, AuthRefused)
    assert result.reason == reason and detail in result.detail


def test_nonce_counts_per_nonce_across_requests() -> None:
    client = DigestClient(CREDS, HOST)
    first = respond(client, challenge("n1"))
    assert isinstance(first, Authorize)
    counts = []
    for method in ["ACK", "BYE"] + ["INFO"] * 8:
        (header,) = client.preemptive(
            method=method, uri="sip:x@sip.carrier.example", target_host=HOST, cnonce="c2"
        )
        assert header[0] == "Proxy-Authorization"
        counts.append(params(header[1])["nc"])
    assert counts[:2] == ["00000002", "00000003"]
    assert counts[-1] == "0000000b"  # hexadecimal, 8 digits
    other = respond(client, challenge("n2"))
    assert isinstance(other, Authorize) and params(other.header_value)["nc"] == "00000001"
    assert (
        client.preemptive(method="BYE", uri="sip:x", target_host="evil.example", cnonce="c") == []
    )


def test_nonce_memory_is_bounded() -> None:
    client = DigestClient(CREDS, HOST, max_nonces=3)
    for i in range(10):
        assert client.next_nonce_count(f"n{i}") == 1
    assert client.next_nonce_count("n9") == 2
    assert client.next_nonce_count("n0") == 1  # forgotten long ago


def test_nothing_to_reuse_before_a_challenge() -> None:
    client = DigestClient(CREDS, HOST)
    assert client.preemptive(method="BYE", uri="sip:x", target_host=HOST, cnonce="c") == []


# --- secrets and bad local input -------------------------------------------------------------


def test_password_never_shows() -> None:
    client = DigestClient(CREDS, HOST)
    result = respond(client, challenge())
    refused = respond(client, challenge(), host="evil.example")
    for text in (repr(CREDS), str(CREDS), repr(client), repr(result), repr(refused)):
        assert "s3cret-pass" not in text
    assert "password='***'" in repr(CREDS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cnonce": ""},
        {"cnonce": 'a"b'},
        {"cnonce": "a\r\nb"},
        {"nonce_count": 0},
        {"nonce_count": 2**32},
        {"uri": "sip:x\r\nVia: evil"},
        {"method": ""},
    ],
)
def test_build_authorization_rejects_bad_local_input(kwargs: dict) -> None:
    arguments = {"method": "INVITE", "uri": "sip:x", "cnonce": "c", "nonce_count": 1} | kwargs
    with pytest.raises(ValueError):
        build_authorization(DigestChallenge("r", "n", qop=("auth",)), CREDS, **arguments)


@pytest.mark.parametrize("username", ["", "bob\r\n", "bob\x00"])
def test_credentials_reject_bad_usernames(username: str) -> None:
    with pytest.raises(ValueError):
        Credentials(username, "pw")


def test_quotes_in_username_are_escaped() -> None:
    value = build_authorization(
        DigestChallenge("r", "n"), Credentials('a"b\\c', "p"), "OPTIONS", "sip:x", cnonce="c"
    )
    assert value.startswith('Digest username="a\\"b\\\\c", ')
