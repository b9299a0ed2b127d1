"""The RPC methods every RPC test registers on a participant, whatever the SDK at the other end.

`tests/node/rtc_scenarios.mjs` and `tests/node/browser_scenario.mjs` register the same three in rtc-node
and livekit-client: `greet` answers, `refuse` fails with the handler's own error, `slow` answers after
the caller has given up.
"""

import asyncio

from livekit import rtc

SLOW_SECONDS = 3.0
RESPONSE_TIMEOUT = 1.0  # what the tests' callers give `slow`
REFUSAL = (2001, "refused", "on purpose")


def greeting(caller: str, payload: str) -> str:
    return f"hello {caller}, you sent {payload}"


def register_rpc_methods(participant: rtc.LocalParticipant) -> list[str]:
    """Register greet, refuse and slow on `participant`; returns the list of methods invoked so far."""
    invoked: list[str] = []

    @participant.register_rpc_method("greet")
    async def greet(data: rtc.RpcInvocationData) -> str:
        invoked.append("greet")
        return greeting(data.caller_identity, data.payload)

    @participant.register_rpc_method("refuse")
    async def refuse(data: rtc.RpcInvocationData) -> str:
        invoked.append("refuse")
        raise rtc.RpcError(*REFUSAL)

    @participant.register_rpc_method("slow")
    async def slow(data: rtc.RpcInvocationData) -> str:
        invoked.append("slow")
        await asyncio.sleep(SLOW_SECONDS)
        return "too late"

    return invoked
