"""The numpy checks of many emails or phones answer what their one-value checks answer on
every line (the email regular expression, values.is_stored_phone), for any ASCII values:
the bulk path relies on it to accept a column at once. The email check also refuses control
characters (the caller then goes value by value, through the exact check)."""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st

from segsvc.engine.key_lines import EMAIL_LINES, ascii_controls, plain_emails, plain_phones
from segsvc.engine.values import is_stored_phone

# Characters that matter to the rules, a few that do not, and ASCII whitespace of each kind.
EMAILISH = st.text(alphabet="ab.@-_+\t\x0b\x0c\r\x1c\x1f \x01\x7f", max_size=12)
PHONEISH = st.text(alphabet="+0123456789a .", max_size=18)
# Calling codes of each size, some sharing prefixes with others, then any digits.
PHONE_IN_PARTS = st.builds(
    lambda code, rest: f"+{code}{rest}",
    st.sampled_from(["1", "7", "20", "44", "46", "290", "39", "800", "882", "0", "21", "99"]),
    st.from_regex(r"\A[0-9]{0,14}\Z"),
)


def regex_says(pattern: object, values: list[str]) -> bool:
    joined = "\n".join(values)
    return len(pattern.findall(joined)) == len(values)  # type: ignore[attr-defined]


def lists(values: st.SearchStrategy[str], valid: st.SearchStrategy[str]) -> st.SearchStrategy:
    # Mostly valid values, so that one bad value among good ones is what is tested.
    return st.lists(st.one_of(valid, valid, values), min_size=1, max_size=8)


VALID_EMAIL = st.from_regex(r"\A[ab+_-]{1,4}@[ab-]{1,3}\.[ab.]{1,3}\Z")
VALID_PHONE = st.one_of(PHONE_IN_PARTS, st.from_regex(r"\A\+[0-9]{2,15}\Z"))


@given(lists(EMAILISH, VALID_EMAIL))
@example(["a@b.c"])
@example(["a@b.c", "a@bc"])
@example(["a@b.c."])  # a dot with something on both sides need not be the last
@example(["@b.c"])
@example(["a@.c"])
@example(["a@b."])
@example(["a@b.c", "a@b@c.d"])
@example(["a@b.c", ""])
@example(["ab", "a@b.c@d.e"])  # two @ in one line, none in the other
@example(["a@b.c\x1c"])
@example(["a@"])
@example(["a\x01@b.c"])
def test_emails_as_the_regular_expression(values: list[str]) -> None:
    joined = "\n".join(values)
    control = any(ord(c) < 32 for value in values for c in value)
    assert plain_emails(joined, len(values)) == (regex_says(EMAIL_LINES, values) and not control)


@given(lists(PHONEISH, VALID_PHONE))
@example(["+15550100004"])
@example(["+1555010000"])  # nine national digits: too short for +1
@example(["+15550100004", "+442079460958", "+80012345678", "+2901234"])
@example(["+5550100004"])  # +55 (Brazil): as the old rule stored "(555) 010-0004"
@example(["+05550100004"])
@example(["+999123456"])  # no such calling code
@example(["+4912345678901234"])  # 16 digits: beyond E.164
@example(["+1", "+12"])
@example(["1234567+"])
@example(["+15550100004", "++15550100004"])
@example(["+15550100004", "15550100004"])
@example(["+15550100004 "])
def test_phones_as_the_one_value_check(values: list[str]) -> None:
    joined = "\n".join(values)
    assert plain_phones(joined, len(values)) == all(map(is_stored_phone, values))


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_controls_as_the_regular_expression(text: str) -> None:
    assert ascii_controls(text) == (re.search("[\x00-\x1f\x7f]", text) is not None)
