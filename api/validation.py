"""Validation of ingested records: pure, fast, and precise about what is wrong.

The reference API takes a US number as exactly ten digits with no ``+1``;
under ``/v1`` a number may also be E.164 (``+44...``). Every error names
the field and the reason, so that a CRM integrator can fix the payload
without reading our code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import phonenumbers

__all__ = [
    "FieldError",
    "ValidRecord",
    "normalise_phone",
    "validate_record",
]

_US_TEN_DIGITS = re.compile(r"[0-9]{10}")
# NANP: area code and exchange both start with 2-9 (ATIS-0300051).
_NANP = re.compile(r"[2-9][0-9]{2}[2-9][0-9]{6}")
_ZIP = re.compile(r"[0-9]{5}(?:-[0-9]{4})?")
MAX_NAME = 100
MAX_CASE_ID = 128

RECORD_FIELDS = frozenset(
    {
        "record_phone_number",
        "record_first_name",
        "record_last_name",
        "record_zip_code",
        "placeholders",
        "meta",
        "case_id",
    }
)

_REF_FIELDS = RECORD_FIELDS - {"case_id"}
# A single record's body also carries these; they are not record fields.
_ENVELOPE_FIELDS = frozenset({"api_key", "workflow_key"})


class FieldError(ValueError):
    """One field of one record is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class ValidRecord:
    phone_e164: str
    first_name: str
    last_name: str
    zip_code: str | None
    case_id: str | None
    placeholders: dict[str, Any]
    meta: dict[str, Any]


def normalise_phone(raw: Any, *, allow_e164: bool, field: str = "record_phone_number") -> str:
    """Return the number in E.164, or raise :class:`FieldError` saying why not."""
    if not isinstance(raw, str):
        raise FieldError(field, f"must be a string, not {_json_type(raw)}")
    if _US_TEN_DIGITS.fullmatch(raw):
        if not _NANP.fullmatch(raw):
            raise FieldError(
                field, "is not a valid US number: area code and exchange cannot start with 0 or 1"
            )
        return "+1" + raw
    if allow_e164 and raw.startswith("+"):
        if not raw[1:].isdigit() or not 8 <= len(raw) <= 16:
            raise FieldError(field, "an E.164 number is '+' then 7 to 15 digits")
        try:
            parsed = phonenumbers.parse(raw, None)
        except phonenumbers.NumberParseException:
            raise FieldError(field, "is not a valid E.164 number") from None
        if not phonenumbers.is_valid_number(parsed):
            raise FieldError(field, "is not a valid phone number for its country")
        return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    digits = sum(ch.isdigit() for ch in raw)
    if any(not ch.isdigit() for ch in raw):
        hint = " or E.164 such as +442071838750" if allow_e164 else " (no +1, spaces or dashes)"
        raise FieldError(field, f"must be exactly 10 digits{hint}; got non-digit characters")
    raise FieldError(field, f"must be exactly 10 digits; got {digits}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _name(item: dict[str, Any], field: str, *, required: bool) -> str:
    value = item.get(field)
    if value is None:
        if required:
            raise FieldError(field, "is required")
        return ""
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, not {_json_type(value)}")
    value = value.strip()
    if required and not value:
        raise FieldError(field, "must not be empty")
    if len(value) > MAX_NAME:
        raise FieldError(field, f"must be at most {MAX_NAME} characters")
    if "\x00" in value:
        raise FieldError(field, "must not contain NUL characters")
    return value


# Deeper documents break encoders down the line (a dial job, a jsonb column) and
# no CRM needs them.
MAX_DEPTH = 32


def _object(item: dict[str, Any], field: str) -> dict[str, Any]:
    value = item.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FieldError(field, f"must be an object, not {_json_type(value)}")
    _check_depth(value, field)
    return value


def _check_depth(value: dict[str, Any], field: str) -> None:
    # Iterative, so that the check itself cannot exhaust the stack.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        children = current.values() if isinstance(current, dict) else current
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= MAX_DEPTH:
                    raise FieldError(field, f"is nested deeper than {MAX_DEPTH} levels")
                stack.append((child, depth + 1))


def validate_record(item: Any, *, allow_e164: bool, allow_case_id: bool) -> ValidRecord:
    """Validate one record of the ingestion API; raise :class:`FieldError`."""
    if not isinstance(item, dict):
        raise FieldError("record", f"must be an object, not {_json_type(item)}")
    allowed = RECORD_FIELDS if allow_case_id else _REF_FIELDS
    extra = item.keys() - allowed - _ENVELOPE_FIELDS
    if extra:
        key = sorted(extra)[0]
        raise FieldError(key, f"is not a known field (known: {', '.join(sorted(allowed))})")
    if "record_phone_number" not in item:
        raise FieldError("record_phone_number", "is required")
    phone = normalise_phone(item["record_phone_number"], allow_e164=allow_e164)
    first = _name(item, "record_first_name", required=True)
    last = _name(item, "record_last_name", required=False)
    zip_code = item.get("record_zip_code")
    if zip_code is not None:
        if not isinstance(zip_code, str):
            raise FieldError("record_zip_code", f"must be a string, not {_json_type(zip_code)}")
        if not _ZIP.fullmatch(zip_code):
            raise FieldError("record_zip_code", "must be a US ZIP code: 5 digits or ZIP+4")
    case_id = item.get("case_id")
    if case_id is not None:
        if not isinstance(case_id, str) or not case_id or len(case_id) > MAX_CASE_ID:
            raise FieldError("case_id", f"must be a string of 1 to {MAX_CASE_ID} characters")
        if "\x00" in case_id:
            raise FieldError("case_id", "must not contain NUL characters")
    return ValidRecord(
        phone_e164=phone,
        first_name=first,
        last_name=last,
        zip_code=zip_code,
        case_id=case_id,
        placeholders=_object(item, "placeholders"),
        meta=_object(item, "meta"),
    )
