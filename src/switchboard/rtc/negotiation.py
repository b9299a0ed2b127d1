"""The subscriber connection's offer/answer cycle, as a state machine with no I/O.

The server offers on the subscriber connection; the client answers. One offer is in flight at a time:
a change asked for while an offer is being made or answered (a new subscription, an unsubscribe) is
remembered and offered once the answer is in, as LiveKit does.

    IDLE ──request──▶ OFFERING ──offer_made──▶ AWAITING_ANSWER ──answered──▶ IDLE
                         │
                         └──offer_failed──▶ IDLE
    AWAITING_ANSWER, IDLE ──restart (the signal connection was replaced: an answer cannot come)──▶ OFFERING

A `request` in OFFERING or AWAITING_ANSWER only marks a renegotiation pending (`pending`): the offer
being made may already have read the connection, so the change waits for the next one. `answered`
says whether one is pending; the caller then asks again. While `busy`, a new sender must not be added
to the connection: aiortc would give it a transport of its own that the coming answer leaves unused,
and its track would stay silent.
"""

from enum import Enum


class State(Enum):
    IDLE = "idle"
    OFFERING = "offering"
    """Creating the offer and setting it as the local description."""
    AWAITING_ANSWER = "awaiting answer"


class InvalidTransition(Exception):
    """A move the current state does not allow: a bug in the caller, never the client's doing."""


class SubscriberNegotiation:
    def __init__(self) -> None:
        self.state = State.IDLE
        self.pending = False
        """A renegotiation was asked for while an offer was being made or answered."""
        self.offer_id = 0
        """The id of the latest offer (the client echoes it in its answer)."""

    @property
    def busy(self) -> bool:
        return self.state is not State.IDLE

    def request(self) -> bool:
        """Something changed that the client must be offered. True: make the offer now (OFFERING)."""
        if self.state is State.IDLE:
            self._start()
            return True
        self.pending = True
        return False

    def _start(self) -> None:
        self.state = State.OFFERING
        self.pending = False  # the offer about to be made reads the connection as it is now

    def offer_made(self) -> int:
        """The offer is the local description: send it with the returned id and wait for the answer."""
        self._expect(State.OFFERING, "offer_made")
        self.offer_id += 1
        self.state = State.AWAITING_ANSWER
        return self.offer_id

    def offer_failed(self) -> None:
        self._expect(State.OFFERING, "offer_failed")
        self.state = State.IDLE

    def answered(self) -> bool:
        """The client's answer is set (IDLE). True: a change came meanwhile, to be offered next."""
        self._expect(State.AWAITING_ANSWER, "answered")
        self.state = State.IDLE
        pending, self.pending = self.pending, False
        return pending

    def expects(self, answer_id: int) -> bool:
        """Whether an answer with this id answers the offer in flight (0: a client that sends no id).
        An answer to an earlier offer, sent before a resume, must not be set against a newer one."""
        return self.state is State.AWAITING_ANSWER and answer_id in (0, self.offer_id)

    def restart(self) -> bool:
        """The signal connection was replaced (resume): an offer sent on the old one will never be
        answered, and the client expects a new offer anyway. True: make it now (OFFERING)."""
        if self.state is State.OFFERING:
            self.pending = True  # the offer being made goes out on the new connection; then one more
            return False
        self._start()
        return True

    def _expect(self, state: State, move: str) -> None:
        if self.state is not state:
            raise InvalidTransition(f"{move} in state {self.state.value}")
