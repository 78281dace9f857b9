"""Pure record validation: phone numbers, names, ZIP codes, case ids."""

from __future__ import annotations

import pytest

from api.validation import FieldError, normalise_phone, validate_record


@pytest.mark.parametrize(
    ("raw", "allow_e164", "expected"),
    [
        ("2125550123", False, "+12125550123"),
        ("2125550123", True, "+12125550123"),
        ("+442071838750", True, "+442071838750"),
        ("+61291234567", True, "+61291234567"),
    ],
)
def test_phone_accepted(raw: str, allow_e164: bool, expected: str) -> None:
    assert normalise_phone(raw, allow_e164=allow_e164) == expected


@pytest.mark.parametrize(
    ("raw", "allow_e164", "reason"),
    [
        ("212555012", False, "got 9"),
        ("21255501234", False, "got 11"),
        ("+12125550123", False, "non-digit"),
        ("212-555-0123", False, "non-digit"),
        ("212555012a", False, "non-digit"),
        ("0125550123", False, "area code"),
        ("2120550123", False, "area code"),
        ("+4420", True, "E.164"),
        ("+99912345678", True, "not a valid"),
        ("+1 212 555 0123", True, "E.164"),
        (2125550123, False, "string"),
        (None, True, "string"),
        ("", False, "got 0"),
    ],
)
def test_phone_refused_with_reason(raw: object, allow_e164: bool, reason: str) -> None:
    with pytest.raises(FieldError) as info:
        normalise_phone(raw, allow_e164=allow_e164)
    assert info.value.field == "record_phone_number"
    assert reason in info.value.message


def test_record_keeps_objects_exactly() -> None:
    meta = {"b": 1, "a": {"x": [1, "2", None]}}
    record = validate_record(
        {"record_phone_number": "2125550123", "record_first_name": " Ann ", "meta": meta},
        allow_e164=False,
        allow_case_id=False,
    )
    assert record.meta is meta
    assert record.first_name == "Ann"
    assert record.placeholders == {}


def test_case_id_only_where_allowed() -> None:
    item = {"record_phone_number": "2125550123", "record_first_name": "A", "case_id": "c"}
    with pytest.raises(FieldError) as info:
        validate_record(item, allow_e164=False, allow_case_id=False)
    assert info.value.field == "case_id"
    assert validate_record(item, allow_e164=True, allow_case_id=True).case_id == "c"
