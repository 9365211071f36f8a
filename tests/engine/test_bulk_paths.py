"""The engine has two ways to apply a change: person by person for small batches and bitmap
algebra for large ones (grouped bit-sliced updates, leaves recomputed from the index for the
touched people, segments evaluated with bitmap operations). The property tests use small
batches; this runs the same brute-force state machine with every threshold at zero, so the
bulk paths are held to the same answers."""

from collections.abc import Iterator

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test
from test_properties import EngineMachine

from segsvc.engine import bsi, state


@pytest.fixture
def bulk_everywhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(state, "BULK_THRESHOLD", 0)
    monkeypatch.setattr(state, "FEW_PEOPLE", 0)
    monkeypatch.setattr(bsi, "SMALL", 0)
    yield


def test_bulk_paths_agree_with_the_brute_force(bulk_everywhere: None) -> None:
    run_state_machine_as_test(
        EngineMachine, settings=settings(EngineMachine.TestCase.settings, max_examples=40)
    )
