"""Limits on what one HTTP connection may cost the server: header and body sizes, and how long it may take.

aiohttp enforces the header limits and the idle timeout itself (given as its handler's keyword arguments);
the Twirp transport enforces the body size and the body deadline while it reads, after authentication.
"""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HttpLimits:
    max_body_size: int = 10 * 1024 * 1024
    """Bytes of one request body (`limit.max_api_request_body_size`); larger ones get 413 unread."""
    max_header_size: int = 8190
    """Bytes of the request line and of each header line (`limit.max_request_header_size`)."""
    max_headers: int = 100
    """Header lines in one request (`limit.max_request_headers`)."""
    idle_timeout: float = 30.0
    """Seconds a connection may go without a complete request head (`limit.idle_timeout`): an idle
    keep-alive connection, or one whose headers never finish (slowloris), is closed after it."""
    body_timeout: float = 30.0
    """Seconds a request's whole body may take to arrive once its headers are in (`limit.body_timeout`)."""

    def handler_options(self) -> dict[str, Any]:
        """aiohttp's request handler keyword arguments (web.AppRunner passes them on)."""
        return {
            "max_line_size": self.max_header_size,
            "max_field_size": self.max_header_size,
            "max_headers": self.max_headers,
            "keepalive_timeout": self.idle_timeout,
            # A request answered before its body was read (refused) closes its connection once the answer
            # is written: aiohttp would otherwise read and discard the rest ("lingering"), which is the
            # very cost a refusal before the body avoids. The client reads the answer before the reset.
            "lingering_time": 0,
        }
