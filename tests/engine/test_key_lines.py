"""The numpy checks of many emails or phones answer what their regular expressions answer on
every line, for any ASCII values (the bulk path relies on it to accept a column at once);
the email check also refuses control characters (the caller then goes value by value,
through the exact check)."""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st

from segsvc.engine.key_lines import (
    EMAIL_LINES,
    PHONE_LINES,
    ascii_controls,
    plain_emails,
    plain_phones,
)

# Characters that matter to the rules, a few that do not, and ASCII whitespace of each kind.
EMAILISH = st.text(alphabet="ab.@-_+\t\x0b\x0c\r\x1c\x1f \x01\x7f", max_size=12)
PHONEISH = st.text(alphabet="+0123456789a .", max_size=18)


def regex_says(pattern: object, values: list[str]) -> bool:
    joined = "\n".join(values)
    return len(pattern.findall(joined)) == len(values)  # type: ignore[attr-defined]


def lists(values: st.SearchStrategy[str], valid: st.SearchStrategy[str]) -> st.SearchStrategy:
    # Mostly valid values, so that one bad value among good ones is what is tested.
    return st.lists(st.one_of(valid, valid, values), min_size=1, max_size=8)


VALID_EMAIL = st.from_regex(r"\A[ab+_-]{1,4}@[ab-]{1,3}\.[ab.]{1,3}\Z")
VALID_PHONE = st.from_regex(r"\A\+[0-9]{7,15}\Z")


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
@example(["+1234567"])
@example(["+123456"])
@example(["+1234567890123456"])
@example(["+123456789012345"])
@example(["1234567+"])
@example(["+1234567", "++123456"])
@example(["+1234567", "12345678"])
@example(["+1234567 "])
def test_phones_as_the_regular_expression(values: list[str]) -> None:
    joined = "\n".join(values)
    assert plain_phones(joined, len(values)) == regex_says(PHONE_LINES, values)


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_controls_as_the_regular_expression(text: str) -> None:
    assert ascii_controls(text) == (re.search("[\x00-\x1f\x7f]", text) is not None)
