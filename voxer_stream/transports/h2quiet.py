"""h2's connection without one eager ``repr`` per received frame.

``H2Connection._receive_frame`` (h2 4.4.1) starts with
``self.config.logger.trace("Received frame: %s", repr(frame))``: the frame's ``repr`` is
built for every frame received, whether or not anything logs it. Measured here, that
is 15 us for each DATA frame (every chunk a talker uploads) and 4.5 us for each
WINDOW_UPDATE (what every listener's connection sends back as it reads), for a string
that the default logger throws away. The override below is h2's method with that line
alone removed; ``tests/test_h2server.py`` checks that h2's own method is still the one
it was copied from, so an upgrade of h2 that changes it fails the tests instead of
drifting silently.
"""

from __future__ import annotations

import h2.connection
from h2.errors import ErrorCodes
from h2.events import Event
from h2.exceptions import StreamClosedError, StreamIDTooLowError
from hyperframe.frame import Frame, RstStreamFrame

#: sha256 of ``inspect.getsource(h2.connection.H2Connection._receive_frame)`` (h2 4.4.1).
COPIED_FROM = "39b2e16b4fd74ed014ca144a0c6e388aef3dc51f116d6f0a874b70d92bd92873"


class QuietH2Connection(h2.connection.H2Connection):
    """``H2Connection`` with ``_receive_frame`` minus its eager trace ``repr``."""

    def _receive_frame(self, frame: Frame) -> list[Event]:
        events: list[Event]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            # Closed by RST_STREAM: answer RST_STREAM; otherwise a connection error.
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                # Closed by RST_STREAM is a stream error.
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                # Closed by END_STREAM is a connection error.
                raise StreamClosedError(e.stream_id) from e
            else:
                # Closed implicitly: a connection error of type PROTOCOL_ERROR.
                raise
        else:
            self._prepare_for_sending(frames)
        return events
