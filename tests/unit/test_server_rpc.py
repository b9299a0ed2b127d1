"""RoomService.PerformRpc's side of the SDKs' RPC protocol: the request, and how its answer is read."""

import asyncio

import pytest
from livekit.protocol import models

from switchboard.rtc.rpc import RpcError, ServerRpcCalls


def answer(call_id: str, *, ack: bool = False, payload: str | None = None, error: int = 0) -> bytes:
    packet = models.DataPacket(destination_identities=[call_id])
    if ack:
        packet.rpc_ack.request_id = call_id
    elif error:
        packet.rpc_response.request_id = call_id
        packet.rpc_response.error.CopyFrom(models.RpcError(code=error, message="refused", data="d"))
    else:
        packet.rpc_response.request_id = call_id
        packet.rpc_response.payload = payload or ""
    return packet.SerializeToString()


async def test_the_request_names_its_id_as_the_caller_and_the_answer_is_taken() -> None:
    calls = ServerRpcCalls()
    call_id, raw = calls.request("greet", "hi", 5000)
    request = models.DataPacket.FromString(raw)
    assert request.participant_identity == call_id and request.kind == models.DataPacket.RELIABLE
    assert (request.rpc_request.id, request.rpc_request.method, request.rpc_request.payload) == (
        call_id,
        "greet",
        "hi",
    )
    assert request.rpc_request.version == 1 and request.rpc_request.response_timeout_ms == 5000
    result = asyncio.ensure_future(calls.result(call_id, 5000))
    assert calls.take(answer(call_id, ack=True)) and calls.take(answer(call_id, payload="hello"))
    assert await result == "hello"
    assert not calls.take(answer(call_id, payload="again")), "a finished call takes nothing more"
    assert not calls.take(models.DataPacket(user=models.UserPacket(payload=b"x")).SerializeToString())


async def test_errors_and_timeouts_are_livekits() -> None:
    calls = ServerRpcCalls()
    call_id, _ = calls.request("m", "", 5000)
    result = asyncio.ensure_future(calls.result(call_id, 5000))
    calls.take(answer(call_id, error=1400))
    with pytest.raises(RpcError) as refused:
        await result
    assert str(refused.value) == "RpcError 1400: refused: d"

    call_id, _ = calls.request("m", "", 5000)
    with pytest.raises(RpcError, match=r"^RpcError 1501: Connection timeout$"):
        await calls.result(call_id, 5000, ack_timeout=0.01)  # never acknowledged

    call_id, _ = calls.request("m", "", 50)
    result = asyncio.ensure_future(calls.result(call_id, 50))
    calls.take(answer(call_id, ack=True))
    with pytest.raises(RpcError, match=r"^RpcError 1502: Response timeout$"):
        await result

    call_id, _ = calls.request("m", "", 5000)
    result = asyncio.ensure_future(calls.result(call_id, 5000))
    await asyncio.sleep(0)
    calls.close()  # the participant left
    with pytest.raises(RpcError, match=r"^RpcError 1503: Recipient disconnected$"):
        await result

    with pytest.raises(RpcError, match=r"^RpcError 1402: Request payload too large$"):
        calls.request("m", "x" * 15_361, 5000)
