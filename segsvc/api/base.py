"""What every servicer shares: the engine, and the workspace of the call being served."""

from __future__ import annotations

from segsvc.api.auth import current_caller
from segsvc.api.tokens import TokenSealer
from segsvc.engine.engine import Engine
from segsvc.engine.workspace import Workspace


class EngineServicer:
    """Base of the segsvc servicers: dependencies come in through the constructor."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._tokens = TokenSealer(engine.secret("page-tokens"))

    def _workspace(self) -> Workspace:
        """The workspace this call works in: the caller's, decided by AuthInterceptor. A
        write creates it on first use; a read of a workspace nobody wrote to sees an empty
        one and leaves nothing behind (so a typo'd name cannot fill the store)."""
        caller = current_caller()
        if caller.writes:
            return self._engine.workspace(caller.workspace)
        return self._engine.workspace_to_read(caller.workspace)

    def _seal(self, kind: str, position: str) -> str:
        """An opaque token for the engine's `position` in this call's workspace ("" stays "")."""
        return self._tokens.seal(current_caller().workspace, kind, position)

    def _open(self, kind: str, token: str, field: str) -> str:
        """The engine's position in a token `_seal` made for `kind` in this call's workspace
        ("" stays ""); any other token is INVALID_ARGUMENT at `field`."""
        if not token:
            return ""
        return self._tokens.open(token, current_caller().workspace, kind, field)
