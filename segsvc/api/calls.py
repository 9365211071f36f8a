"""What the layers inside a call tell the access log about it: the workspace the caller was
given (AuthInterceptor) and how many items its requests carried (DecodingInterceptor).

The outermost interceptor (segsvc.api.metrics.CallObserver) sees every call's start and end
but neither of those: it opens a `CallNotes` for the call and runs the call in a context
where `current_notes()` finds it. Without that interceptor (metrics and access log both off)
there are no notes and noting costs one context-variable lookup.
"""

from __future__ import annotations

import contextvars


class CallNotes:
    """Filled in while one call runs."""

    __slots__ = ("items_in", "workspace")

    def __init__(self) -> None:
        self.workspace = ""
        self.items_in = 0


_notes: contextvars.ContextVar[CallNotes | None] = contextvars.ContextVar(
    "segsvc_call_notes", default=None
)


def open_notes(notes: CallNotes) -> contextvars.Context:
    """A copy of the current context in which `current_notes()` is `notes`: run the call in
    it (and every step of a streamed response)."""
    context = contextvars.copy_context()
    context.run(_notes.set, notes)
    return context


def note_workspace(name: str) -> None:
    notes = _notes.get()
    if notes is not None:
        notes.workspace = name


def note_items_in(count: int) -> None:
    notes = _notes.get()
    if notes is not None:
        notes.items_in += count
