"""RPC from the server to a participant (RoomService.PerformRpc), over the SDKs' data-channel RPC protocol.

As LiveKit: the request is an `rpc_request` data packet whose sender identity is the request id (the
participant answers to it); the participant's `rpc_ack` and `rpc_response` come back addressed to that id
and are taken here instead of being routed. No ack within `ACK_TIMEOUT` is a connection timeout; no
response within the request's timeout (default 10 s) a response timeout. Errors carry LiveKit's codes
and messages (`RpcError 1502: Response timeout`).
"""

import asyncio
import uuid
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from livekit.protocol import models

ACK_TIMEOUT = 2.0  # LiveKit's DataChannelRpcMaxRoundTripLatency
DEFAULT_RESPONSE_TIMEOUT_MS = 10_000
MAX_PAYLOAD_BYTES = 15_360

APPLICATION_ERROR = 1500
CONNECTION_TIMEOUT = 1501
RESPONSE_TIMEOUT = 1502
RECIPIENT_DISCONNECTED = 1503
REQUEST_PAYLOAD_TOO_LARGE = 1402

_MESSAGES = {
    APPLICATION_ERROR: "Application error in method handler",
    CONNECTION_TIMEOUT: "Connection timeout",
    RESPONSE_TIMEOUT: "Response timeout",
    RECIPIENT_DISCONNECTED: "Recipient disconnected",
    REQUEST_PAYLOAD_TOO_LARGE: "Request payload too large",
}


class RpcError(Exception):
    """An RPC that did not answer with a payload: the participant's own error, or one of LiveKit's."""

    def __init__(self, code: int, message: str = "", data: str = "") -> None:
        self.code = code
        self.message = message or _MESSAGES.get(code, "")
        self.data = data
        text = f"RpcError {code}: {self.message}"
        super().__init__(f"{text}: {data}" if data else text)


@dataclass
class _Call:
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    answer: "asyncio.Future[str]" = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ServerRpcCalls:
    """The server's RPCs in flight to one participant."""

    def __init__(self) -> None:
        self._calls: dict[str, _Call] = {}

    def request(self, method: str, payload: str, timeout_ms: int) -> tuple[str, bytes]:
        """A new call: its id, and the data packet to send reliably to the participant."""
        if len(payload.encode()) > MAX_PAYLOAD_BYTES:
            raise RpcError(REQUEST_PAYLOAD_TOO_LARGE)
        call_id = str(uuid.uuid4())
        request = models.RpcRequest(
            id=call_id, method=method, payload=payload, response_timeout_ms=timeout_ms, version=1
        )
        packet = models.DataPacket(kind=models.DataPacket.RELIABLE, participant_identity=call_id)
        packet.rpc_request.CopyFrom(request)
        self._calls[call_id] = _Call()
        return call_id, packet.SerializeToString()

    async def result(self, call_id: str, timeout_ms: int, ack_timeout: float = ACK_TIMEOUT) -> str:
        """The participant's answer to the call, or RpcError."""
        call = self._calls[call_id]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        try:
            try:
                await asyncio.wait_for(call.acked.wait(), min(ack_timeout, timeout_ms / 1000))
            except TimeoutError:
                if not call.answer.done():
                    raise RpcError(CONNECTION_TIMEOUT) from None
            try:
                return await asyncio.wait_for(asyncio.shield(call.answer), max(deadline - loop.time(), 0))
            except TimeoutError:
                raise RpcError(RESPONSE_TIMEOUT) from None
        finally:
            self._calls.pop(call_id, None)

    def take(self, raw: bytes) -> bool:
        """Whether `raw` is the participant's ack or response to one of the calls (then it is used here)."""
        if not self._calls:
            return False
        packet = models.DataPacket()
        try:
            packet.ParseFromString(raw)
        except DecodeError:
            return False
        value = packet.WhichOneof("value")
        if value == "rpc_ack":
            call = self._calls.get(packet.rpc_ack.request_id)
            if call is not None:
                call.acked.set()
            return call is not None
        if value == "rpc_response":
            response = packet.rpc_response
            call = self._calls.get(response.request_id)
            if call is None:
                return False
            call.acked.set()
            if not call.answer.done():
                if response.WhichOneof("value") == "error":
                    error = response.error
                    call.answer.set_exception(RpcError(error.code, error.message, error.data))
                else:
                    call.answer.set_result(response.payload)
            return True
        return False

    def close(self) -> None:
        """The participant left: every call in flight fails."""
        for call in self._calls.values():
            call.acked.set()
            if not call.answer.done():
                call.answer.set_exception(RpcError(RECIPIENT_DISCONNECTED))
