"""The subscriber connection's offer/answer state machine: one offer in flight, changes batched after it."""

import pytest

from switchboard.rtc.negotiation import InvalidTransition, State, SubscriberNegotiation


def offered() -> SubscriberNegotiation:
    negotiation = SubscriberNegotiation()
    assert negotiation.request()
    negotiation.offer_made()
    return negotiation


def test_a_request_when_idle_makes_an_offer_and_waits_for_its_answer() -> None:
    negotiation = SubscriberNegotiation()
    assert not negotiation.busy
    assert negotiation.request()
    assert negotiation.state is State.OFFERING and negotiation.busy
    assert negotiation.offer_made() == 1
    assert negotiation.state is State.AWAITING_ANSWER and negotiation.busy
    assert not negotiation.answered()
    assert negotiation.state is State.IDLE and not negotiation.busy


def test_requests_while_an_offer_is_out_make_one_more_offer_after_the_answer() -> None:
    negotiation = offered()
    assert not negotiation.request()
    assert not negotiation.request()
    assert negotiation.state is State.AWAITING_ANSWER and negotiation.pending
    assert negotiation.answered(), "a change came meanwhile"
    assert negotiation.state is State.IDLE and not negotiation.pending
    assert negotiation.request()  # one more offer, for both changes
    assert negotiation.offer_made() == 2
    assert not negotiation.answered()
    assert negotiation.state is State.IDLE


def test_a_request_while_the_offer_is_being_made_waits_for_the_next_offer() -> None:
    negotiation = SubscriberNegotiation()
    negotiation.request()
    assert not negotiation.request()
    # The offer being made may have read the connection before this change: it is not counted as carried.
    negotiation.offer_made()
    assert negotiation.pending
    assert negotiation.answered()


def test_an_offer_starts_with_nothing_pending() -> None:
    negotiation = offered()
    negotiation.request()
    negotiation.answered()
    negotiation.request()
    assert negotiation.state is State.OFFERING and not negotiation.pending


def test_only_the_answer_to_the_offer_in_flight_is_expected() -> None:
    negotiation = SubscriberNegotiation()
    assert not negotiation.expects(0)
    negotiation.request()
    assert not negotiation.expects(0)  # the offer is not sent yet
    negotiation.offer_made()
    negotiation.answered()
    negotiation.request()
    offer_id = negotiation.offer_made()
    assert negotiation.expects(offer_id) and negotiation.expects(0)  # 0: a client that sends no id
    assert not negotiation.expects(offer_id + 1) and not negotiation.expects(offer_id - 1)


def test_a_failed_offer_leaves_the_connection_idle() -> None:
    negotiation = SubscriberNegotiation()
    negotiation.request()
    negotiation.offer_failed()
    assert negotiation.state is State.IDLE
    assert negotiation.request()


def test_restart_reoffers_instead_of_waiting_for_an_answer_that_cannot_come() -> None:
    negotiation = offered()
    assert negotiation.restart()
    assert negotiation.state is State.OFFERING
    assert negotiation.offer_made() == 2
    assert not negotiation.expects(1), "an answer to the offer sent before the restart is stale"
    assert negotiation.expects(2)


def test_restart_when_idle_offers_and_while_offering_offers_once_more_after() -> None:
    idle = SubscriberNegotiation()
    assert idle.restart() and idle.state is State.OFFERING
    making = SubscriberNegotiation()
    making.request()
    assert not making.restart()
    assert making.pending and making.state is State.OFFERING
    waiting = offered()
    waiting.request()
    assert waiting.restart() and not waiting.pending, "the new offer reads the connection as it is now"


@pytest.mark.parametrize(
    ("setup", "move"),
    [
        ("idle", "offer_made"),
        ("idle", "answered"),
        ("idle", "offer_failed"),
        ("offering", "answered"),
        ("awaiting", "offer_made"),
        ("awaiting", "offer_failed"),
    ],
)
def test_moves_the_state_does_not_allow_are_refused(setup: str, move: str) -> None:
    negotiation = SubscriberNegotiation()
    if setup in ("offering", "awaiting"):
        negotiation.request()
    if setup == "awaiting":
        negotiation.offer_made()
    before = negotiation.state
    with pytest.raises(InvalidTransition):
        getattr(negotiation, move)()
    assert negotiation.state is before
