"""slot_init: the same instances as the dataclass's own __init__, built faster."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field

import pytest

from dialer.sip.headers import CSeq, Via
from dialer.sip.slot_init import slot_init
from dialer.sip.uri import NameAddr, SipUri, parse_name_addr


@dataclass(frozen=True, slots=True)
class Plain:
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    _text: str | None = field(default=None, init=False, compare=False)
    _views: dict[str, object] = field(default_factory=dict, init=False, compare=False)


@slot_init
@dataclass(frozen=True, slots=True)
class Fast:
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    _text: str | None = field(default=None, init=False, compare=False)
    _views: dict[str, object] = field(default_factory=dict, init=False, compare=False)


def _state(obj: object) -> dict[str, object]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("a",), {}),
        (("a", 5060), {}),
        (("a", 5060, (("tag", "x"),)), {}),
        ((), {"host": "a", "params": (("lr", None),)}),
        (("a",), {"port": None}),
    ],
)
def test_same_state_as_the_dataclass_init(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    plain, fast = Plain(*args, **kwargs), Fast(*args, **kwargs)  # type: ignore[arg-type]
    assert _state(plain) == _state(fast)
    assert repr(plain).removeprefix("Plain") == repr(fast).removeprefix("Fast")


def test_each_instance_gets_its_own_factory_value() -> None:
    one, two = Fast("a"), Fast("a")
    assert one._views == {} and one._views is not two._views

    @slot_init
    @dataclass(frozen=True, slots=True)
    class Job:
        call_id: str
        handler: dict[str, object] = field(default_factory=dict)

    first, second = Job("c"), Job("c")
    assert first.handler == {} and first.handler is not second.handler
    given = {"type": "prompt"}
    assert Job("c", given).handler is given and Job("c", handler=given).handler is given


def test_bad_arguments_fail_as_before() -> None:
    for call in (lambda: Fast(), lambda: Fast("a", 1, (), "extra"), lambda: Fast("a", nope=1)):
        with pytest.raises(TypeError):
            call()
    with pytest.raises(TypeError):
        Fast("a", _text="x")  # type: ignore[call-arg]  # init=False stays out of the signature


def test_still_frozen_hashable_replaceable_and_picklable() -> None:
    value = Fast("a", 5060)
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.host = "b"  # type: ignore[misc]
    assert hash(value) == hash(Fast("a", 5060)) and value == Fast("a", 5060)
    assert dataclasses.replace(value, port=5061) == Fast("a", 5061)
    assert pickle.loads(pickle.dumps(SipUri("example.com", "alice", port=5060))) == SipUri(
        "example.com", "alice", port=5060
    )


def test_refuses_what_it_does_not_handle() -> None:
    with pytest.raises(TypeError, match="frozen"):

        @slot_init
        @dataclass(slots=True)
        class Mutable:
            a: int

    with pytest.raises(TypeError, match="frozen"):

        @slot_init
        @dataclass(frozen=True)
        class NoSlots:
            a: int

    with pytest.raises(TypeError, match="__post_init__"):

        @slot_init
        @dataclass(frozen=True, slots=True)
        class Checked:
            a: int

            def __post_init__(self) -> None:
                pass

    with pytest.raises(TypeError, match="keyword-only"):

        @slot_init
        @dataclass(frozen=True, slots=True, kw_only=True)
        class KeywordOnly:
            a: int


def test_the_sip_values_parse_and_serialize_as_before() -> None:
    text = '"Alice" <sip:alice@example.com:5060;transport=tcp>;tag=1928301774'
    value = parse_name_addr(text)
    assert value == NameAddr(
        SipUri("example.com", "alice", None, 5060, (("transport", "tcp"),)),
        "Alice",
        (("tag", "1928301774"),),
    )
    assert value.serialize() == text
    via = Via.parse("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport")
    assert (via.transport, via.host, via.port, via.branch, via.has_rport) == (
        "UDP",
        "192.0.2.1",
        5060,
        "z9hG4bK776asdhds",
        True,
    )
    assert CSeq.parse("0009 INVITE") == CSeq(9, "INVITE")


def test_the_sip_classes_get_it_compiled_or_not() -> None:
    # Called after the class statement (a decorator would make mypyc build a
    # plain Python class): plain slotted classes and mypyc's native ones alike.
    from dialer.sip.actions import Send
    from dialer.sip.call import Ended
    from dialer.sip.message import Request, Response
    from dialer.sip.sdp import SessionDescription
    from dialer.sip.transaction import TransactionKey

    classes = (SipUri, NameAddr, Via, CSeq, Request, Response, Send, Ended)
    for cls in (*classes, SessionDescription, TransactionKey):
        assert "_unset" in cls.__init__.__globals__, cls  # slot_init's, not dataclasses'
        assert ("__mypyc_attrs__" in vars(cls)) != ("__slots__" in vars(cls)), cls
    request = Request("BYE", SipUri("example.com", "bob"), (("Via", "SIP/2.0/UDP h"),))
    assert request._views == {} and request.with_header("Max-Forwards", "70").headers == (
        ("Via", "SIP/2.0/UDP h"),
        ("Max-Forwards", "70"),
    )
