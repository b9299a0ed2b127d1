"""A node's own view of its lease in Redis, without I/O: when it may still act for its rooms.

The node's key is written with a time-to-live of `duration` by a command that *started* at `renewed_at`:
Redis expires it no earlier than `renewed_at + duration`, whatever the command's delay. So a node that
stops acting at `renewed_at + duration - margin` (its own monotonic clock) has stopped before any other
node can see it dead and take its rooms; `margin` covers the two clocks' drift over one lease."""

from dataclasses import dataclass

MARGIN_SHARE = 0.1
"""Of the lease: the drift allowed between this node's clock and Redis's over one lease."""


@dataclass
class Lease:
    duration: float
    renewed_at: float | None = None
    """When the last renewal that Redis acknowledged was sent; None until the first one."""

    @property
    def renew_interval(self) -> float:
        """Renew three times per lease: two renewals in a row may fail (a Redis hiccup) without losing it."""
        return self.duration / 3

    def renewed(self, sent_at: float) -> None:
        """A renewal sent at `sent_at` was acknowledged (acknowledgements may arrive out of order)."""
        if self.renewed_at is None or sent_at > self.renewed_at:
            self.renewed_at = sent_at

    def expires_at(self) -> float | None:
        if self.renewed_at is None:
            return None
        return self.renewed_at + self.duration * (1 - MARGIN_SHARE)

    def held(self, now: float) -> bool:
        expiry = self.expires_at()
        return expiry is not None and now < expiry

    def lost(self) -> None:
        """Given up (Redis unreachable past the lease): held again only after a new acknowledged renewal."""
        self.renewed_at = None
