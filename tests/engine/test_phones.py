"""Phones in E.164: numbers without a country code are placed in the server's default region
(phonenumbers), numbers that cannot be placed are refused with the reason, and whatever is
stored reads back as itself, so the bulk path's stored-form check and the one-by-one path
agree. The engine honours the region everywhere a phone is read: upserts, bulk loads, lookups
and condition operands, and its log does not depend on it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from bruteforce import normalize_phone as brute_normalize_phone
from engine_harness import harness, key, members
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import BAD_PHONES, PHONES

from segsvc.engine.bulk import PeopleColumns
from segsvc.engine.conditions import AttributeCondition
from segsvc.engine.errors import InvalidArgument
from segsvc.engine.people import PersonUpsert
from segsvc.engine.values import check_region, is_stored_phone, normalize_phone, plain_phone


def refusal(raw: str, region: str | None) -> tuple[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        normalize_phone(raw, "people[0].phone", region)
    (violation,) = caught.value.violations
    return violation.field, violation.description


def test_a_number_without_country_code_is_one_of_the_default_region() -> None:
    # The number: the old rule stored +5550100004, which never matched.
    assert normalize_phone("(555) 010-0004", "phone", "US") == "+15550100004"
    assert normalize_phone("+1 555 010 0004", "phone", "US") == "+15550100004"
    assert normalize_phone("020 7946 0958", "phone", "GB") == "+442079460958"
    # With a country code (+ or 00) the region does not matter.
    assert normalize_phone("0044 20 7946 0958", "phone", "US") == "+442079460958"
    assert normalize_phone("+44 (0) 20 7946 0958", "phone", None) == "+442079460958"
    assert normalize_phone("+800 1234 5678", "phone", "US") == "+80012345678"


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("(555) 010-0004", None, "has no country code and this server has no default region"),
        (
            "12",
            "US",
            "is too short for +1 (US). Without a country code it is read as a number of US",
        ),
        ("020 7946 0958", "US", "is too long for +1 (US)"),
        ("5550100", "US", "is too short for +1 (US): a local number, add its area code"),
        ("+1234567890123456", "US", "is too long for +1 (US)"),
        ("+999 123 4567", "US", "does not start with a known country code"),
        ("phone", "US", "is not a phone number"),
        ("555-010-0004 x12", "US", "has an extension (12)"),
        ("+44 20 7946", "US", "for +44 (GB)"),
    ],
)
def test_a_number_that_cannot_be_placed_is_refused_with_the_reason(
    raw: str, region: str | None, reason: str
) -> None:
    field, description = refusal(raw, region)
    assert field == "people[0].phone"
    assert description.startswith(repr(raw))
    assert reason in description


PHONE_TEXT = st.one_of(
    st.sampled_from(PHONES + BAD_PHONES),
    st.text(alphabet="+0123456789 ()-.x", max_size=18),
    st.from_regex(r"\A\+?[1-9][0-9]{6,14}\Z"),
)
REGIONS = st.sampled_from(["US", "GB", "DE", "IT", "BR", "IN", None])


@given(PHONE_TEXT, REGIONS)
@example("+3758834006", None)  # phonenumbers would strip the 8 (a national prefix); kept
@example("+39 06 1234 5678", "US")  # Italy's leading zero belongs to the number
def test_stored_phones_read_back_as_themselves(raw: str, region: str | None) -> None:
    """What the engine stores is in stored form and normalises to itself (the bulk path takes
    such values without a second look), and the brute-force model agrees on every value."""
    try:
        stored: str | None = normalize_phone(raw, "phone", region)
    except InvalidArgument:
        stored = None
    assert stored == brute_normalize_phone(raw, region)
    if stored is not None:
        assert is_stored_phone(stored)
        assert normalize_phone(stored, "phone", None) == stored


def test_regions_are_checked_as_phonenumbers_knows_them() -> None:
    assert check_region(" gb ") == "GB"
    with pytest.raises(ValueError, match="'XX' is not a region phonenumbers knows"):
        check_region("XX")


def test_operands_saved_before_default_regions_keep_their_meaning() -> None:
    # How a definition's phone operand compiles: E.164 operands (all saved since) stay as they
    # are; an older operand reads as the old rule read it, as the people stored then were.
    assert plain_phone("+15550100004") == "+15550100004"
    assert plain_phone("(555) 010-0004") == "+5550100004"


def test_the_engine_places_phones_in_its_default_region_everywhere() -> None:
    with harness(default_region="GB") as h:
        results = h.ws.upsert_people(
            [PersonUpsert("ann", phone="020 7946 0958"), PersonUpsert("bob", phone="12")]
        )
        assert [r.outcome for r in results] == ["created", "invalid"]
        assert results[1].field == "people[1].phone"
        assert "for +44 (GB)" in (results[1].error or "")
        bulk = h.ws.upsert_columns(
            PeopleColumns.from_upserts([PersonUpsert("cy", phone="020 7946 0959")])
        )
        assert bulk.counts()["created"] == 1
        assert h.ws.get_person(key("id", "cy")).record.phone == "+442079460959"
        assert h.ws.get_person(key("phone", "(020) 7946-0958")).record.id == "ann"
        assert h.ws.get_person(key("phone", "+44 20 7946 0958")).record.id == "ann"
        condition = AttributeCondition("equals", field="phone", value="020 7946 0958")
        segment = h.ws.create_segment("Ann's phone", "", True, condition)
        assert members(h.ws, segment.id) == {"ann"}
        # The definition keeps the operand as placed when it was saved ...
        assert h.ws.get_segment(segment.id).definition == AttributeCondition(
            "equals", field="phone", value="+442079460958"
        )
        # ... so a restart under another default region replays the log to the same state.
        h.config = replace(h.config, default_region="US")
        h.reopen(checkpoint=False)
        assert members(h.ws, segment.id) == {"ann"}
        assert h.ws.get_person(key("phone", "+442079460958")).record.id == "ann"
