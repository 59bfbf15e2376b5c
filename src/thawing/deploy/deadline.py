"""A deadline for reading each request. uvicorn closes a keep-alive connection that stays idle between requests, but
not one that sends its request a byte at a time, or never sends one (slowloris: 1,000 such connections were all still
open after 40 s, each holding a socket). Here a request's head and body must arrive within `timeout` seconds of the
connection opening, or of the previous response; a connection that is slower is closed. A request the app is
answering is never cut: the clock stops once the whole request has arrived.

uvicorn takes the protocol class as its `http` setting; headers are also bounded in size by h11 (16 KiB).
"""

from __future__ import annotations

import asyncio
from typing import Any


def deadline_protocol(timeout: float) -> type:
    """uvicorn's h11 protocol with a per-request read deadline of `timeout` seconds."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is h11.DONE:  # all of the request is in: the app's time is not the client's
                self._disarm()
            elif self.conn.their_state is h11.IDLE and self._deadline is None:  # waiting for the next request
                self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.conn.their_state is not h11.DONE and not self.transport.is_closing():
                self.transport.close()

    return DeadlineProtocol
