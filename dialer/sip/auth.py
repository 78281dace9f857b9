"""Digest authentication, client side (RFC 3261 §22, RFC 7616, RFC 8760).

Pure: header values in, header values out. No networking, no clock, no randomness:
the cnonce is handed in by the caller (which owns the random source).

Rules of this file:

1. ``parse_challenges`` either returns the Digest challenges it can use or raises
   ``AuthError``; no other exception escapes it, whatever the header text. Challenges
   with an algorithm we do not implement are skipped, as RFC 7616 §3.7 asks.
2. Never a loop. A request chain gets one answer per challenge; a second challenge from
   the realm we answered means the credentials were refused, unless it says
   ``stale=true`` (RFC 7616 §3.3), and that excuse is accepted once.
3. Credentials go only where they were configured: the trunk's host, and its realm when
   one is set. Anything else is refused before a digest is computed.
4. Secrets never appear in a repr, an error or a refusal detail.
"""

from __future__ import annotations

import hashlib
import ipaddress
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "ALGORITHMS",
    "AUTH_FAILED",
    "AUTH_REFUSED",
    "AUTH_UNSUPPORTED",
    "AuthAttempt",
    "AuthError",
    "AuthRefused",
    "Authorize",
    "Credentials",
    "DigestAlgorithm",
    "DigestChallenge",
    "DigestClient",
    "build_authorization",
    "choose_challenge",
    "digest_response",
    "parse_challenges",
]


class AuthError(ValueError):
    """A challenge header is malformed, or cannot be answered as asked."""


# Refusal reasons, usable as call dispositions.
AUTH_FAILED = "auth_failed"  # the server refused our credentials, or its challenge is broken
AUTH_REFUSED = "auth_refused"  # we will not send these credentials to this host or realm
AUTH_UNSUPPORTED = "auth_unsupported"  # no challenge we know how to answer


@dataclass(slots=True, frozen=True)
class DigestAlgorithm:
    """A Digest algorithm we can compute."""

    name: str  # as RFC 7616 §6.1 spells it, echoed in our answer
    hash_name: str  # for hashlib.new
    session: bool  # the "-sess" variant: A1 includes nonce and cnonce (RFC 7616 §3.4.2)
    strength: int  # preference when several challenges are offered (RFC 7616 §3.7)


def _algorithms() -> dict[str, DigestAlgorithm]:
    table = {}
    for name, hash_name, strength in (
        ("MD5", "md5", 1),
        ("SHA-256", "sha256", 2),
        ("SHA-512-256", "sha512_256", 3),
    ):
        try:
            hashlib.new(hash_name)
        except ValueError:
            continue  # this OpenSSL lacks it: such challenges are skipped as unsupported
        for session, suffix in ((False, ""), (True, "-sess")):
            algorithm = DigestAlgorithm(name + suffix, hash_name, session, strength)
            table[algorithm.name.upper()] = algorithm
    return table


# Upper-cased algorithm name to its definition; names compare case-insensitively.
ALGORITHMS: dict[str, DigestAlgorithm] = _algorithms()

_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)
# Outside quoted strings a header value may still hold its folding (CRLF + WSP).
_SPACE = " \t\r\n"
_MAX_NONCE_COUNT = 0xFFFFFFFF  # nc is 8 hex digits (RFC 7616 §3.4)


def _has_control(text: str) -> bool:
    return any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in text)


@dataclass(slots=True, frozen=True, repr=False)
class Credentials:
    """A trunk's username and password; ``realm`` restricts them to one realm.

    The repr masks the password, so a Credentials can be logged safely.
    """

    username: str
    password: str
    realm: str | None = None

    def __post_init__(self) -> None:
        if not self.username or _has_control(self.username):
            raise ValueError("username must be non-empty and free of control characters")

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***', realm={self.realm!r})"


@dataclass(slots=True, frozen=True)
class DigestChallenge:
    """One Digest challenge from a ``WWW-Authenticate`` or ``Proxy-Authenticate`` value."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    opaque: str | None = None
    qop: tuple[str, ...] = ()
    stale: bool = False
    domain: tuple[str, ...] = ()

    @property
    def strength(self) -> int:
        """How strong the algorithm is; the higher, the more preferred."""
        return ALGORITHMS[self.algorithm.upper()].strength


# --- parsing -------------------------------------------------------------------------------


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _token(text: str, pos: int) -> tuple[str, int]:
    start = pos
    while pos < len(text) and text[pos] in _TOKEN_CHARS:
        pos += 1
    return text[start:pos], pos


def _quoted_string(text: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string starting at its opening quote (RFC 3261 §25.1)."""
    chars: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return "".join(chars), pos + 1
        if char == "\\":
            pos += 1
            if pos == len(text):
                break
            char = text[pos]
        if (ord(char) < 0x20 and char != "\t") or char == "\x7f":
            # Never let a CR or LF from a peer through: it would split our header.
            raise AuthError("control character in a quoted string")
        chars.append(char)
        pos += 1
    raise AuthError("unterminated quoted string")


def _split_challenges(value: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Scheme and parameters of each challenge in one header value (RFC 7235 §4.1).

    Syntax errors inside a challenge of another scheme (Basic, Negotiate with a
    token68) skip to its next comma; inside a Digest challenge they raise.
    """
    challenges: list[tuple[str, list[tuple[str, str]]]] = []
    pos = 0
    while True:
        pos = _skip(value, pos, _SPACE + ",")
        if pos >= len(value):
            return challenges
        name, end = _token(value, pos)
        if not name:
            raise AuthError(f"unexpected character {value[pos]!r} in challenge")
        after = _skip(value, end, _SPACE)
        if after >= len(value) or value[after] != "=":
            challenges.append((name, []))  # a new scheme
            pos = after
            continue
        if not challenges:
            raise AuthError("parameter before the authentication scheme")
        scheme, params = challenges[-1]
        is_digest = scheme.lower() == "digest"
        pos = _skip(value, after + 1, _SPACE)
        if pos < len(value) and value[pos] == '"':
            param_value, pos = _quoted_string(value, pos)
        else:
            param_value, pos = _token(value, pos)
            if not param_value and is_digest:
                raise AuthError(f"parameter {name!r} has no value")
        params.append((name.lower(), param_value))
        pos = _skip(value, pos, _SPACE)
        if pos < len(value) and value[pos] != ",":
            if is_digest:
                raise AuthError(f"expected ',' after parameter {name!r}")
            comma = value.find(",", pos)
            pos = len(value) if comma < 0 else comma


def _digest_challenge(params: list[tuple[str, str]]) -> DigestChallenge | None:
    values: dict[str, str] = {}
    for name, value in params:
        if name in values:
            # Two realms or two nonces: no way to tell which one the server means.
            raise AuthError(f"duplicate parameter {name!r} in Digest challenge")
        values[name] = value
    if "realm" not in values:
        raise AuthError("Digest challenge without realm")
    if not values.get("nonce"):
        raise AuthError("Digest challenge without nonce")
    # RFC 7616 §3.3: no algorithm means MD5; an unknown one means skip this challenge.
    algorithm = ALGORITHMS.get(values.get("algorithm", "MD5").upper())
    if algorithm is None:
        return None
    qop = tuple(q.strip().lower() for q in values.get("qop", "").split(",") if q.strip())
    return DigestChallenge(
        realm=values["realm"],
        nonce=values["nonce"],
        algorithm=algorithm.name,
        opaque=values.get("opaque"),
        qop=qop,
        stale=values.get("stale", "").lower() == "true",
        domain=tuple(values.get("domain", "").split()),
    )


def parse_challenges(value: str) -> tuple[DigestChallenge, ...]:
    """The Digest challenges of one ``WWW-Authenticate``/``Proxy-Authenticate`` value.

    Parameter names are case-insensitive; values may be tokens or quoted strings with
    backslash escapes. Other schemes and unsupported algorithms are left out; a
    malformed Digest challenge raises ``AuthError``.
    """
    if not isinstance(value, str):
        raise AuthError("challenge must be text")
    result = []
    for scheme, params in _split_challenges(value):
        if scheme.lower() == "digest":
            challenge = _digest_challenge(params)
            if challenge is not None:
                result.append(challenge)
    return tuple(result)


def _usable(challenge: DigestChallenge) -> bool:
    if not challenge.qop:
        # RFC 2069 form: no cnonce may be sent, so a -sess algorithm cannot be computed.
        return not ALGORITHMS[challenge.algorithm.upper()].session
    return "auth" in challenge.qop or "auth-int" in challenge.qop


def choose_challenge(
    challenges: Iterable[DigestChallenge], realm: str | None = None
) -> DigestChallenge | None:
    """The challenge to answer: the strongest algorithm we can compute (RFC 8760 §2).

    SHA-512-256 over SHA-256 over MD5; among equals, the server's order. With ``realm``,
    only challenges of that realm are considered.
    """
    best: DigestChallenge | None = None
    for challenge in challenges:
        if realm is not None and challenge.realm != realm:
            continue
        if _usable(challenge) and (best is None or challenge.strength > best.strength):
            best = challenge
    return best


# --- computing the answer ------------------------------------------------------------------


def _hex(hash_name: str, data: bytes) -> str:
    return hashlib.new(hash_name, data).hexdigest()


def _choose_qop(challenge: DigestChallenge) -> str | None:
    if not challenge.qop:
        return None
    if "auth" in challenge.qop:
        return "auth"
    if "auth-int" in challenge.qop:
        return "auth-int"
    raise AuthError(f"no supported qop in {list(challenge.qop)}")


def digest_response(
    challenge: DigestChallenge,
    credentials: Credentials,
    method: str,
    uri: str,
    *,
    cnonce: str,
    nonce_count: int,
    qop: str | None,
    body: bytes = b"",
) -> str:
    """The ``response`` value: hex digest per RFC 7616 §3.4.1 (RFC 2069 form without qop)."""
    algorithm = ALGORITHMS.get(challenge.algorithm.upper())
    if algorithm is None:
        raise AuthError(f"unsupported algorithm {challenge.algorithm!r}")

    def h(text: str) -> str:
        return _hex(algorithm.hash_name, text.encode("utf-8"))

    ha1 = h(f"{credentials.username}:{challenge.realm}:{credentials.password}")
    if algorithm.session:
        ha1 = h(f"{ha1}:{challenge.nonce}:{cnonce}")
    if qop == "auth-int":
        ha2 = h(f"{method}:{uri}:{_hex(algorithm.hash_name, body)}")
    else:
        ha2 = h(f"{method}:{uri}")
    if qop is None:
        return h(f"{ha1}:{challenge.nonce}:{ha2}")
    return h(f"{ha1}:{challenge.nonce}:{nonce_count:08x}:{cnonce}:{qop}:{ha2}")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_authorization(
    challenge: DigestChallenge,
    credentials: Credentials,
    method: str,
    uri: str,
    *,
    cnonce: str,
    nonce_count: int = 1,
    body: bytes = b"",
) -> str:
    """An ``Authorization``/``Proxy-Authorization`` value answering ``challenge``.

    ``uri`` is the Request-URI exactly as sent (RFC 3261 §22.4). With a qop the answer
    carries ``qop``, ``nc`` (8 hex digits) and ``cnonce``; without one it takes the RFC
    2069 form. auth is preferred over auth-int, which hashes ``body``.
    """
    if not method or _has_control(method) or _has_control(uri):
        raise ValueError("method and uri must be free of control characters")
    if not 0 < nonce_count <= _MAX_NONCE_COUNT:
        raise ValueError(f"nonce count {nonce_count} out of range")
    qop = _choose_qop(challenge)
    if qop is not None and (not cnonce or _has_control(cnonce) or '"' in cnonce):
        raise ValueError("cnonce must be non-empty, without quotes or control characters")
    if qop is None and ALGORITHMS[challenge.algorithm.upper()].session:
        raise AuthError(f"{challenge.algorithm} needs a qop to carry the cnonce")
    response = digest_response(
        challenge, credentials, method, uri, cnonce=cnonce, nonce_count=nonce_count, qop=qop,
        body=body,
    )  # fmt: skip
    parts = [
        f"username={_quote(credentials.username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
        f"algorithm={challenge.algorithm}",
    ]
    if qop is not None:
        parts.append(f"cnonce={_quote(cnonce)}")
    if challenge.opaque is not None:
        # RFC 7616 §3.4: opaque MUST be returned unchanged.
        parts.append(f"opaque={_quote(challenge.opaque)}")
    if qop is not None:
        parts.append(f"qop={qop}")
        parts.append(f"nc={nonce_count:08x}")
    return "Digest " + ", ".join(parts)


# --- policy: one trunk's client --------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class AuthAttempt:
    """What we answered in one request chain; hand it back if challenged again."""

    realm: str
    nonce: str
    stale_retried: bool = False


@dataclass(slots=True, frozen=True)
class Authorize:
    """Resend the request with this header (``Authorization`` or ``Proxy-Authorization``)."""

    header_name: str
    header_value: str
    attempt: AuthAttempt


@dataclass(slots=True, frozen=True)
class AuthRefused:
    """Give up: ``reason`` is one of the AUTH_* constants, ``detail`` says why."""

    reason: str
    detail: str


def _normalise_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


@dataclass(slots=True)
class DigestClient:
    """Digest authentication for one trunk: its credentials and the one host they serve.

    Keeps, per nonce, the last nonce count used (so one nonce can serve several
    requests of a dialog, RFC 7616 §3.4) and the last challenge of each kind, for
    ``preemptive``. Both are bounded: the oldest nonces are forgotten first.
    """

    credentials: Credentials
    host: str
    max_nonces: int = 64
    _nonce_counts: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _last: dict[bool, DigestChallenge] = field(default_factory=dict, init=False, repr=False)

    def next_nonce_count(self, nonce: str) -> int:
        """Count one more use of ``nonce`` and return the count to send."""
        count = self._nonce_counts.pop(nonce, 0) + 1
        if count > _MAX_NONCE_COUNT:
            count = 1  # wrapped: the server will call the nonce stale and send a new one
        self._nonce_counts[nonce] = count  # re-inserted last: most recently used
        while len(self._nonce_counts) > self.max_nonces:
            del self._nonce_counts[next(iter(self._nonce_counts))]
        return count

    def respond(
        self,
        challenge_values: Sequence[str] | str,
        *,
        proxy: bool,
        method: str,
        uri: str,
        target_host: str,
        cnonce: str,
        body: bytes = b"",
        previous: AuthAttempt | None = None,
    ) -> Authorize | AuthRefused:
        """Answer a 401 (``proxy=False``) or 407 (``proxy=True``) to a request.

        ``challenge_values`` are the response's ``WWW-Authenticate`` (401) or
        ``Proxy-Authenticate`` (407) values. ``previous`` is the ``attempt`` of our last
        answer in this same request chain, None the first time (and after a
        ``preemptive`` header, which was a guess). Returns the header to add to the
        resent request, or a refusal: then the request fails with ``reason``.
        """
        if _normalise_host(target_host) != _normalise_host(self.host):
            return AuthRefused(AUTH_REFUSED, f"credentials are for {self.host}, not {target_host}")
        values = [challenge_values] if isinstance(challenge_values, str) else challenge_values
        challenges: list[DigestChallenge] = []
        try:
            for value in values:
                challenges.extend(parse_challenges(value))
        except AuthError as error:
            return AuthRefused(AUTH_FAILED, f"malformed challenge: {error}")
        if not challenges:
            return AuthRefused(AUTH_UNSUPPORTED, "no Digest challenge with a known algorithm")
        wanted = self.credentials.realm
        if wanted is not None and all(c.realm != wanted for c in challenges):
            return AuthRefused(AUTH_REFUSED, f"challenge realm is not {wanted!r}")
        realm = wanted if previous is None else previous.realm
        if previous is not None and all(c.realm != previous.realm for c in challenges):
            # Only one realm per request chain: answering a fresh realm with the same
            # credentials after the first one refused them would be a loop in disguise.
            return AuthRefused(AUTH_FAILED, f"challenged by another realm after {realm!r}")
        chosen = choose_challenge(challenges, realm)
        if chosen is None:
            return AuthRefused(AUTH_UNSUPPORTED, "no challenge with a qop we support")
        stale_retried = False
        if previous is not None:
            # RFC 7616 §3.3: without stale=true, a new challenge means the credentials
            # are wrong; retrying would loop. stale=true is believed once, and only
            # with a nonce other than the one it calls stale.
            if not chosen.stale:
                return AuthRefused(AUTH_FAILED, f"credentials rejected by realm {realm!r}")
            if previous.stale_retried or chosen.nonce == previous.nonce:
                return AuthRefused(AUTH_FAILED, f"repeated stale nonce from realm {realm!r}")
            stale_retried = True
        header_value = self._build(chosen, method, uri, cnonce, body)
        if isinstance(header_value, AuthRefused):
            return header_value
        self._last[proxy] = chosen
        return Authorize(
            _header_name(proxy),
            header_value,
            AuthAttempt(chosen.realm, chosen.nonce, stale_retried),
        )

    def preemptive(
        self, *, method: str, uri: str, target_host: str, cnonce: str, body: bytes = b""
    ) -> list[tuple[str, str]]:
        """Headers for a new request in the dialog, reusing the last challenges' nonces.

        Saves a round trip (RFC 3261 §22.3 lets a UAC reuse credentials). Empty when
        nothing was challenged yet or ``target_host`` is not the trunk's.
        """
        if _normalise_host(target_host) != _normalise_host(self.host):
            return []
        headers = []
        for proxy, challenge in self._last.items():
            value = self._build(challenge, method, uri, cnonce, body)
            if isinstance(value, str):
                headers.append((_header_name(proxy), value))
        return headers

    def _build(
        self, challenge: DigestChallenge, method: str, uri: str, cnonce: str, body: bytes
    ) -> str | AuthRefused:
        count = self.next_nonce_count(challenge.nonce) if challenge.qop else 1
        try:
            return build_authorization(
                challenge, self.credentials, method, uri, cnonce=cnonce, nonce_count=count,
                body=body,
            )  # fmt: skip
        except AuthError as error:
            return AuthRefused(AUTH_UNSUPPORTED, str(error))


def _header_name(proxy: bool) -> str:
    return "Proxy-Authorization" if proxy else "Authorization"
