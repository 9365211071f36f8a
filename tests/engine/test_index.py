"""The bit-sliced index that answers number and time ranges: against sorted Python lists."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from segsvc.engine.bsi import (
    NUMBER_BITS,
    SMALL,
    TIMESTAMP_BITS,
    BitSlicedIndex,
    encode_number,
    encode_timestamp,
)

finite = st.floats(allow_nan=False, allow_infinity=False)
MIN_TS, MAX_TS = -62_135_596_800, 253_402_300_799
calendar = st.integers(MIN_TS, MAX_TS)


@given(finite, finite)
def test_number_codes_sort_like_the_numbers(a: float, b: float) -> None:
    ca, cb = encode_number(a), encode_number(b)
    assert 0 <= ca < 2**NUMBER_BITS
    assert (ca < cb) == (a < b) and (ca == cb) == (a == b)


@given(calendar, calendar)
def test_timestamp_codes_sort_like_the_times(a: int, b: int) -> None:
    ca, cb = encode_timestamp(a), encode_timestamp(b)
    assert 0 <= ca < 2**TIMESTAMP_BITS
    assert (ca < cb) == (a < b)


def test_signed_zero_is_one_number() -> None:
    assert encode_number(-0.0) == encode_number(0.0)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(finite, max_size=40),
    removed=st.sets(st.integers(0, 39)),
    low=st.one_of(st.none(), finite),
    high=st.one_of(st.none(), finite),
    low_inclusive=st.booleans(),
    high_inclusive=st.booleans(),
    bulk=st.booleans(),
)
def test_ranges_match_a_scan(
    values: list[float],
    removed: set[int],
    low: float | None,
    high: float | None,
    low_inclusive: bool,
    high_inclusive: bool,
    bulk: bool,
) -> None:
    bsi = BitSlicedIndex(NUMBER_BITS)
    codes = [encode_number(v) for v in values]
    if bulk:
        bsi.add_many(list(range(len(values))), codes)
    else:
        for ordinal, code in enumerate(codes):
            bsi.add(ordinal, code)
    gone = sorted(o for o in removed if o < len(values))
    if bulk:
        bsi.remove_many(gone, [codes[o] for o in gone])
    else:
        for o in gone:
            bsi.remove(o, codes[o])
    live = {o: v for o, v in enumerate(values) if o not in removed}

    def inside(v: float) -> bool:
        if low is not None and (v < low or (v == low and not low_inclusive)):
            return False
        return not (high is not None and (v > high or (v == high and not high_inclusive)))

    got = bsi.range(
        None if low is None else encode_number(low),
        low_inclusive,
        None if high is None else encode_number(high),
        high_inclusive,
    )
    assert set(got) == {o for o, v in live.items() if inside(v)}
    if low is not None:
        assert set(bsi.equal(encode_number(low))) == {o for o, v in live.items() if v == low}
    restored = BitSlicedIndex.deserialize(NUMBER_BITS, bsi.serialize())
    assert restored.range(None, False, None, False) == bsi.range(None, False, None, False)


@settings(max_examples=100, deadline=None)
@given(
    start=calendar,
    spread=st.sampled_from([0, 1, 60, 86_400, 90 * 86_400]),
    offsets=st.lists(st.integers(0, 90 * 86_400), min_size=SMALL, max_size=80),
)
def test_bulk_insert_of_close_times_matches_one_by_one(
    start: int, spread: int, offsets: list[int]
) -> None:
    # A bulk group's times often share their high bits (or are all equal): the bulk path
    # skips the bits nobody has and gives everyone the bits all have.
    times = [min(start + o % (spread + 1), MAX_TS) for o in offsets]
    codes = [encode_timestamp(t) for t in times]
    bulk, single = BitSlicedIndex(TIMESTAMP_BITS), BitSlicedIndex(TIMESTAMP_BITS)
    bulk.add_many(list(range(len(codes))), codes)
    for ordinal, code in enumerate(codes):
        single.add(ordinal, code)
    assert _contents(bulk) == _contents(single)
    bulk.remove_many(list(range(0, len(codes), 2)), codes[::2])
    for ordinal in range(0, len(codes), 2):
        single.remove(ordinal, codes[ordinal])
    assert _contents(bulk) == _contents(single)


def _contents(index: BitSlicedIndex) -> list[list[int]]:
    # By content: the two paths may choose different roaring containers for the same set.
    return [list(index.exists), *(list(s) for s in index.slices)]
