"""One participant's connection: its signalling WebSocket and its two peer connections (protocol v0).

The client offers on its publisher connection (what it sends); the server offers on the subscriber
connection (what it receives, and the server's data channels). The subscriber connection is primary:
the client's `connect()` returns once it is connected.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, web
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.sdp import SessionDescription, candidate_from_sdp
from livekit.protocol import models, rtc

from switchboard.auth.grants import Claims
from switchboard.core import ids
from switchboard.core.errors import CoreError
from switchboard.core.rooms import Participant, Track
from switchboard.rtc.data import DataSender, route
from switchboard.rtc.negotiation import SubscriberNegotiation
from switchboard.rtc.network import NoIceCandidates, ice_servers, require_candidates
from switchboard.rtc.relay import AudioRelay, OutboundSlot, Publisher, TrackRelay
from switchboard.rtc.room import Room
from switchboard.rtc.rpc import ServerRpcCalls
from switchboard.rtc.simulcast import accept_one_layer, route_by_mid
from switchboard.rtc.video import OutboundVideo, VideoRelay
from switchboard.websocket import ConnectionLost, MalformedMessage, MessageSender, fail, receive
from switchboard.wire import participant_to_proto, room_to_proto, track_to_proto

if TYPE_CHECKING:
    from switchboard.rtc.forward import Forward

log = logging.getLogger("switchboard.rtc")

RELIABLE, LOSSY = "_reliable", "_lossy"
# Reliable packets for a participant whose data channel is not open yet wait here (then are dropped).
_MAX_QUEUED_PACKETS = 256
# A publisher's subscription permission names at most this many subscribers (LiveKit sets no limit).
_MAX_TRACK_PERMISSIONS = 1024
# Tracks announced (add_track) whose media has not arrived yet, per participant.
_MAX_PENDING_TRACKS = 32
# ICE candidates received before the description they belong to, per connection.
_MAX_PENDING_CANDIDATES = 256
_SOURCE_NAMES = {value: name.lower() for name, value in models.TrackSource.items()}
_SOURCES = frozenset(models.TrackSource.keys())
_TRACK_KINDS = {models.AUDIO: "audio", models.VIDEO: "video"}
# Signal connections that ended this way (no leave request, no error) may be resumed.
_RESUMABLE = frozenset({models.SIGNAL_CLOSE, models.CONNECTION_TIMEOUT})


class ParticipantSession:
    def __init__(
        self,
        room: Room,
        ws: web.WebSocketResponse,
        transport: asyncio.BaseTransport | None,
        participant: Participant,
        claims: Claims,
        client_protocol: int,
        auto_subscribe: bool,
        reports_subscriptions: bool = True,
    ) -> None:
        self.ws = ws
        self._transport = transport
        """The signal connection's TCP transport: dropped at once after a flood (see `fail`)."""
        self.room = room
        """The room the participant is in (it changes when RoomService moves the participant)."""
        self.identity = participant.identity
        self.sid = participant.sid
        self._last = participant
        """The engine's record of this participant (the engine changes it in place): what the others
        are told when it leaves, even once the engine has let it go."""
        self.claims = claims
        self.client_protocol = client_protocol
        self.auto_subscribe = auto_subscribe
        self.reports_subscriptions = reports_subscriptions
        """Whether the client understands `track_subscribed` (old Rust SDKs fail to decode it)."""
        self.closed = False
        self.signal = MessageSender(ws)
        self.pub_pc: RTCPeerConnection | None = None
        self.sub_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.relays: dict[str, TrackRelay] = {}
        """Tracks this participant publishes."""
        self.subscriptions: dict[str, RTCRtpTransceiver] = {}
        """Tracks this participant receives, by track sid."""
        self._slots: dict[RTCRtpTransceiver, OutboundSlot] = {}
        """Every media sender of the subscriber connection, with the slot it sends from."""
        self.subscription_overrides: dict[str, bool] = {}
        """Tracks the participant asked for (True) or turned down (False), overriding auto_subscribe."""
        self._pending_tracks: dict[str, Track] = {}
        self._allowed: dict[str, tuple[bool, set[str]]] | None = None
        """Who may subscribe to this participant's tracks (`subscription_permission`), by subscriber
        identity: (all tracks, else these track sids); None while everyone may."""
        self._permitted: dict[str, bool] = {}
        """Whether this participant may receive each track, as it was last told (by track sid)."""
        self._channels: dict[str, RTCDataChannel] = {}
        self.server_rpcs = ServerRpcCalls()
        """RPCs the server made to this participant (RoomService.PerformRpc), waiting for its answer."""
        self._queued: deque[bytes] = deque(maxlen=_MAX_QUEUED_PACKETS)
        self._pending_candidates: dict[int, list[Any]] = {0: [], 1: []}
        self.negotiation = SubscriberNegotiation()
        self._negotiating: asyncio.Task[None] | None = None
        self._resume_window: asyncio.Task[None] | None = None
        """Running while the signal connection is lost and the client may still resume."""
        self._background: set[asyncio.Task[Any]] = set()
        """Work the signal loop must not wait for (see `_in_background`)."""
        self.forwards: list[Forward] = []
        """Where this participant is forwarded to (ForwardParticipant): other rooms show it and its tracks."""
        self._deferred: list[tuple[Publisher, TrackRelay]] = []
        """Subscriptions that waited for an answer or for the connection (see `_add_subscription`)."""
        video = claims.video
        self.can_publish = video.can_publish is not False
        self.can_subscribe = video.can_subscribe is not False
        self.can_publish_data = (
            video.can_publish_data if video.can_publish_data is not None else self.can_publish
        )
        self.hidden = video.hidden
        self.data_sender = DataSender(
            identity=self.identity,
            sid=self.sid,
            is_agent=participant.kind == "agent",
            can_publish_data=self.can_publish_data,
            track_sids=self.relays.keys(),
        )

    # What others see

    def participant(self) -> Participant:
        return self.room.runtime.engine.participant(self.room.name, self.identity)

    def info(self, state: str = "", participant: Participant | None = None) -> models.ParticipantInfo:
        video = self.claims.video
        permission = models.ParticipantPermission(
            can_subscribe=self.can_subscribe,
            can_publish=self.can_publish,
            can_publish_data=self.can_publish_data,
            can_publish_sources=[s.upper() for s in video.can_publish_sources if s.upper() in _SOURCES],
            hidden=self.hidden,
            recorder=video.recorder,
            can_update_metadata=bool(video.can_update_own_metadata),
            agent=video.agent,
        )
        return participant_to_proto(
            participant or self.participant(),
            state=state,
            permission=permission,
            client_protocol=self.client_protocol,
        )

    # Lifecycle

    async def run(self, room_info: models.Room) -> None:
        settings, room = self.room.settings, self.room
        join = rtc.JoinResponse(
            room=room_info,
            participant=self.info(),
            other_participants=room.visible(self),
            subscriber_primary=True,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            server_version=room.server_info.version,
            server_info=room.server_info,
            ice_servers=ice_servers(settings),
        )
        self.signal.send(rtc.SignalResponse(join=join))
        self._announce()
        self._open_subscriber()
        for publisher in room.publishers():
            if publisher is not self:
                for relay in publisher.relays.values():
                    self._add_subscription(publisher, relay)
        self.request_negotiation()  # the first offer: the data channels, and the tracks already here
        await self._serve(self.ws)

    async def _serve(self, ws: web.WebSocketResponse) -> None:
        """Handle the client's requests on this signal connection until it ends. Without a leave request
        the session outlives it, for a resume (see `_await_resume`)."""
        settings, signal = self.room.settings, self.signal
        reason = models.SIGNAL_CLOSE  # the signal connection closed without a leave request
        bad_frames: list[str] = []
        try:
            while not self.closed and ws is self.ws:
                try:
                    request = await asyncio.wait_for(
                        receive(ws, signal, rtc.SignalRequest), settings.ping_timeout
                    )
                except TimeoutError:
                    log.info("participant timed out room=%s identity=%s", self.room.name, self.identity)
                    reason = models.CONNECTION_TIMEOUT
                    break
                except ConnectionLost as exc:
                    log.info(
                        "participant connection lost room=%s identity=%s reason=%s",
                        self.room.name,
                        self.identity,
                        exc,
                    )
                    break  # SIGNAL_CLOSE
                except MalformedMessage as exc:
                    # A bad frame does not end the session (the client may recover); a client that
                    # keeps sending them does. One log line for the first, then one with the count.
                    bad_frames.append(str(exc))
                    if len(bad_frames) == 1:
                        log.info(
                            "bad signal frame room=%s identity=%s error=%s",
                            self.room.name,
                            self.identity,
                            exc,
                        )
                    if len(bad_frames) >= settings.max_bad_frames:
                        reason = models.STATE_MISMATCH
                        self._send_leave(reason)
                        await signal.flushed()
                        await fail(
                            ws, self._transport, WSCloseCode.POLICY_VIOLATION, "too many bad signal frames"
                        )
                        break
                    continue
                if bad_frames:
                    self._log_bad_frames(bad_frames)
                    bad_frames = []
                if request is None:
                    break
                try:
                    await self._handle(request)
                except (
                    Exception
                ):  # e.g. an SDP aiortc cannot use: this participant's session ends, no one else's
                    log.exception("signal request failed room=%s identity=%s", self.room.name, self.identity)
                    reason = models.UNKNOWN_REASON
                    break
        finally:
            if bad_frames:
                self._log_bad_frames(bad_frames)
            if ws is not self.ws:
                pass  # replaced by a resumed connection, which carries on
            elif reason in _RESUMABLE and self.sub_pc.connectionState == "connected" and not self.closed:
                self._await_resume(reason)
            else:
                await self.close(reason)

    def _await_resume(self, reason: int) -> None:
        """The signal connection is gone but the media is not: as LiveKit, the participant stays (sid,
        tracks, subscriptions) for the room's departure timeout, in which the client may resume."""
        window = self.room.runtime.engine.room(self.room.name).departure_timeout
        log.info(
            "participant signal lost room=%s identity=%s reason=%s resume_window=%ss",
            self.room.name,
            self.identity,
            models.DisconnectReason.Name(reason),
            window,
        )

        async def expire() -> None:
            await asyncio.sleep(window)
            log.info("participant did not resume room=%s identity=%s", self.room.name, self.identity)
            await self.close(reason)

        self._resume_window = asyncio.get_running_loop().create_task(expire())
        # A connection that timed out may still be open: closing it waits for the client's close frame.
        self._in_background(self.ws.close())

    async def resume(
        self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None, reconnect_reason: str
    ) -> None:
        """The client reconnected its signal connection (`reconnect=1`): answer as LiveKit does (a
        ReconnectResponse, everyone's current info, the room), offer the subscriber connection again
        (LiveKit's ICE restart) and carry on with this connection."""
        if self._resume_window is not None:
            self._resume_window.cancel()
            self._resume_window = None
        old, self.ws, self.signal, self._transport = self.ws, ws, MessageSender(ws), transport
        # If the server had not noticed that it was gone: its reader stops (`_serve`). Not awaited: a
        # half-open connection never answers the close, and the client waits for its ReconnectResponse.
        self._in_background(old.close())
        log.info(
            "participant resumed room=%s identity=%s sid=%s reason=%s",
            self.room.name,
            self.identity,
            self.sid,
            reconnect_reason,
        )
        reconnect = rtc.ReconnectResponse(
            ice_servers=ice_servers(self.room.settings),
            client_configuration=models.ClientConfiguration(),
            server_info=self.room.server_info,
        )
        self.signal.send(rtc.SignalResponse(reconnect=reconnect))
        everyone = [self.info(), *self.room.visible(self)]
        self.signal.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=everyone)))
        room = room_to_proto(self.room.runtime.engine.room(self.room.name))
        self.signal.send(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=room)))
        if self.negotiation.restart():
            self._start_offer()
        await self._serve(ws)

    def _log_bad_frames(self, errors: list[str]) -> None:
        """One line for a run of malformed signal frames (the first one was logged as it came)."""
        if len(errors) > 1 or errors[-1] != errors[0]:
            log.info(
                "bad signal frames room=%s identity=%s count=%d last_error=%s",
                self.room.name,
                self.identity,
                len(errors),
                errors[-1],
            )

    def _announce(self, state: str = "") -> None:
        if not self.hidden:
            self.room.announce([self.info(state)], exclude=self)

    def _open_subscriber(self) -> None:
        pc = self.sub_pc
        self._channels[RELIABLE] = pc.createDataChannel(RELIABLE, ordered=True)
        self._channels[LOSSY] = pc.createDataChannel(LOSSY, ordered=False, maxRetransmits=0)
        self._channels[RELIABLE].on("open", self._flush_queued)
        # aiortc's SCTP debug lines do not say whose association they belong to; its first TSN does
        # (docs/data-channels.md: following a stalled association in the log).
        log.debug(
            "subscriber data channels room=%s identity=%s first_tsn=%d",
            self.room.name,
            self.identity,
            self._channels[RELIABLE].transport._local_tsn,
        )

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if self.closed:
                return
            if pc.connectionState == "failed":
                await self.close(models.MEDIA_FAILURE)
                return
            participant = self.participant()
            if pc.connectionState == "connected" and not participant.active:
                participant.active = True
                participant.changed()
                self.room.announce([self.info()])
            # Reported first, while the connection counts as up: the offer that a deferred subscription
            # starts makes aiortc count it as connecting again until the answer.
            self._report_subscriptions()
            if pc.connectionState == "connected":
                self._subscribe_deferred()

    async def close(self, reason: int = models.UNKNOWN_REASON) -> None:
        """End the session; the others learn that the participant left, and why (`reason`, a
        DisconnectReason: livekit-agents ends a voice session only for some, e.g. CLIENT_INITIATED)."""
        if self.closed:
            return
        self.closed = True
        last = self.farewell(reason)
        runtime = self.room.runtime
        for relay in self.relays.values():
            self.unpublished(relay)
        engine = runtime.engine
        room = engine.rooms.get(self.room.name)
        current = room.participants.get(self.identity) if room else None
        replaced = current is not None and current.sid != self.sid  # a newer connection took the identity
        if current is not None and not replaced:
            # Without a leave request the connection was lost: for an agent, its job may have crashed.
            lost = reason != models.CLIENT_INITIATED
            runtime.call(
                lambda engine: engine.participant_left(
                    self.room.name, self.identity, runtime.now(), sid=self.sid, lost=lost
                )
            )
        if not self.hidden and not replaced:
            self.room.announce([last], exclude=self)
        self.end_forwards(reason)
        self.room.remove(self)
        self.server_rpcs.close()
        for task in (self._negotiating, self._resume_window, *self._background):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        for pc in (self.pub_pc, self.sub_pc):
            if pc is not None:
                await pc.close()
        await self.signal.flushed()
        await self.ws.close()
        log.info("participant left room=%s identity=%s", self.room.name, self.identity)

    def farewell(self, reason: int) -> models.ParticipantInfo:
        """What the others are told when this participant leaves their room.

        As LiveKit: its last full info (name, metadata, attributes, kind) with state DISCONNECTED and
        why, so the SDKs' "participant disconnected" events still show them. Its tracks are closed first
        there, so the info lists none.
        """
        last = self.info("DISCONNECTED", self._last)
        del last.tracks[:]
        last.version = 1 << 30  # after every earlier update of this participant
        last.disconnect_reason = reason  # type: ignore[assignment]
        return last

    def appearances(self) -> list[tuple[Room, "ParticipantSession | Forward"]]:
        """The rooms this participant's tracks are in, and as whom: its own, and those it is forwarded to."""
        return [(self.room, self), *((f.room, f) for f in self.forwards if not f.ended)]

    def unpublished(self, relay: TrackRelay) -> None:
        for room, _ in self.appearances():
            room.track_unpublished(relay)
        relay.close()

    def end_forwards(self, reason: int) -> None:
        """This participant left (or moved): its forwards leave their rooms too."""
        forwards, self.forwards = self.forwards, []
        for forward in forwards:
            forward.room.end_forward(forward, reason, in_engine=True)

    def _sub_connecting(self) -> bool:
        """Whether the subscriber connection is being set up after its first answer. aiortc connects an
        answer in a task of its own: until that task runs, the state is still "new"."""
        state = self.sub_pc.connectionState
        return state == "connecting" or (state == "new" and self.sub_pc.remoteDescription is not None)

    def _subscribe_deferred(self) -> None:
        """The subscriptions that waited for an answer or for the connection: made now, if they may."""
        deferred, self._deferred = self._deferred, []
        self.subscribe_to((p, relay) for p, relay in deferred if not p.closed and relay.track_sid in p.relays)

    def drop_deferred(self) -> None:
        self._deferred = []

    def disconnect(self, reason: int) -> None:
        """Server-side end of the session: tell the client why, then close."""
        self._send_leave(reason)
        asyncio.get_running_loop().create_task(self.close(reason))

    def _no_candidates(self, exc: NoIceCandidates) -> None:
        """No port left for this participant's media: it is told at once, not after its ICE timeout."""
        log.warning("participant refused room=%s identity=%s: %s", self.room.name, self.identity, exc)
        self.disconnect(models.JOIN_FAILURE)

    def _send_leave(self, reason: int) -> None:
        self.signal.send(
            rtc.SignalResponse(
                leave=rtc.LeaveRequest(reason=models.DisconnectReason.Name(reason), action="DISCONNECT")
            )
        )

    # Signalling

    async def _handle(self, request: rtc.SignalRequest) -> None:
        kind = request.WhichOneof("message")
        if kind == "offer":
            try:
                await self._on_publisher_offer(request.offer)
            except NoIceCandidates as exc:
                self._no_candidates(exc)
        elif kind == "answer":
            await self._on_subscriber_answer(request.answer)
        elif kind == "trickle":
            await self._on_trickle(request.trickle)
        elif kind == "add_track":
            self._on_add_track(request.add_track)
        elif kind == "mute":
            self._on_mute(request.mute)
        elif kind == "subscription":
            self.apply_subscription(request.subscription)
        elif kind == "track_setting":
            self._on_track_setting(request.track_setting)
        elif kind == "subscription_permission":
            self._on_subscription_permission(request.subscription_permission)
        elif kind == "update_metadata":
            self._on_update_metadata(request.update_metadata)
        elif kind == "ping_req":
            pong = rtc.Pong(last_ping_timestamp=request.ping_req.timestamp, timestamp=int(time.time() * 1000))
            self.signal.send(rtc.SignalResponse(pong_resp=pong))
        elif kind == "ping":
            self.signal.send(rtc.SignalResponse(pong=int(time.time() * 1000)))
        elif kind == "leave":
            await self.close(models.CLIENT_INITIATED)
        else:
            # update_layers (simulcast layers: one is relayed), sync_state …: accepted and ignored.
            log.debug(
                "ignored signal request room=%s identity=%s kind=%s", self.room.name, self.identity, kind
            )

    async def _on_publisher_offer(self, offer: rtc.SessionDescription) -> None:
        if self.pub_pc is None:
            self.pub_pc = pc = RTCPeerConnection(_publisher_config())
            pc.on("track", lambda track: self._on_published_media(pc, track))
            pc.on("datachannel", self._on_client_channel)
        await self.pub_pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        for transceiver in self.pub_pc.getTransceivers():
            route_by_mid(transceiver.receiver.transport)
        _follow_ice_restart(self.pub_pc, offer.sdp)
        self._withdraw_unsent_tracks(offer.sdp)
        self._apply_candidates(rtc.PUBLISHER)
        answer = await self.pub_pc.createAnswer()
        await self.pub_pc.setLocalDescription(answer)
        require_candidates(self.pub_pc.localDescription.sdp, self.room.ports)
        sdp = accept_one_layer(offer.sdp, self.pub_pc.localDescription.sdp)
        description = rtc.SessionDescription(type="answer", sdp=sdp, id=offer.id)
        self.signal.send(rtc.SignalResponse(answer=description))

    async def _on_subscriber_answer(self, answer: rtc.SessionDescription) -> None:
        if not self.negotiation.expects(answer.id):
            log.info(
                "unexpected subscriber answer room=%s identity=%s id=%d",
                self.room.name,
                self.identity,
                answer.id,
            )
            return
        await self.sub_pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
        changed_meanwhile = self.negotiation.answered()
        self._apply_candidates(rtc.SUBSCRIBER)
        self._report_subscriptions()
        self._subscribe_deferred()
        if changed_meanwhile and not self.negotiation.busy:  # else the offer just started carries it
            self.request_negotiation()

    async def _on_trickle(self, trickle: rtc.TrickleRequest) -> None:
        try:
            init = json.loads(trickle.candidateInit)
            text = init.get("candidate", "")
            if not text:
                return  # end of candidates
            candidate = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:") else text)
            candidate.sdpMid = init.get("sdpMid")
            candidate.sdpMLineIndex = init.get("sdpMLineIndex")
        except (ValueError, AssertionError, AttributeError, IndexError):
            log.info("bad trickle candidate room=%s identity=%s", self.room.name, self.identity)
            return
        target = rtc.SUBSCRIBER if trickle.target == rtc.SUBSCRIBER else rtc.PUBLISHER
        pending = self._pending_candidates[target]
        if len(pending) >= _MAX_PENDING_CANDIDATES:
            return  # kept until its description is set; a client cannot grow it without bound
        pending.append(candidate)
        self._apply_candidates(target)

    def _apply_candidates(self, target: int) -> None:
        pc = self.sub_pc if target == rtc.SUBSCRIBER else self.pub_pc
        if pc is None or pc.remoteDescription is None:
            return  # kept until the description they belong to is set
        pending, self._pending_candidates[target] = self._pending_candidates[target], []
        if pending:
            # Not awaited here: aioice resolves an mDNS candidate (`….local`, which libwebrtc sends
            # e.g. after an ICE restart) for seconds, and the signal requests behind it (pings
            # among them) would wait as long; the client would give up on the connection.
            self._in_background(_add_candidates(pc, pending))

    def _in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def request_negotiation(self) -> None:
        """Offer the subscriber connection again; one offer in flight at a time."""
        if self.negotiation.request():
            self._start_offer()

    def _start_offer(self) -> None:
        self._negotiating = asyncio.get_running_loop().create_task(self._offer())

    async def _offer(self) -> None:
        if self.closed:
            return
        try:
            offer = await self.sub_pc.createOffer()
            await self.sub_pc.setLocalDescription(offer)
            require_candidates(self.sub_pc.localDescription.sdp, self.room.ports)
        except NoIceCandidates as exc:
            self.negotiation.offer_failed()
            self._no_candidates(exc)
            return
        except BaseException:
            self.negotiation.offer_failed()
            raise
        offer_id = self.negotiation.offer_made()
        description = rtc.SessionDescription(type="offer", sdp=self.sub_pc.localDescription.sdp, id=offer_id)
        self.signal.send(rtc.SignalResponse(offer=description))

    # Tracks

    def _on_add_track(self, request: rtc.AddTrackRequest) -> None:
        source = _SOURCE_NAMES.get(request.source, "unknown")
        allowed = self.claims.video.can_publish_sources
        refusal, reason = "", rtc.RequestResponse.NOT_ALLOWED
        if not self.can_publish:
            refusal = "the token does not allow publishing"
        elif allowed and source not in allowed:
            refusal = f"the token does not allow publishing from {source}"
        elif request.type not in _TRACK_KINDS:
            refusal, reason = (
                "only audio and video tracks are relayed by this server",
                rtc.RequestResponse.UNSUPPORTED_TYPE,
            )
        elif len(self._pending_tracks) >= _MAX_PENDING_TRACKS:
            # Announced tracks whose media never came: a client cannot grow this without bound.
            refusal, reason = (
                f"more than {_MAX_PENDING_TRACKS} tracks announced and not sent",
                rtc.RequestResponse.LIMIT_EXCEEDED,
            )
        if refusal:
            log.info("publish refused room=%s identity=%s reason=%r", self.room.name, self.identity, refusal)
            response = rtc.RequestResponse(reason=reason, message=refusal, add_track=request)
            self.signal.send(rtc.SignalResponse(request_response=response))
            return
        track = Track(
            sid=ids.new_id(ids.TRACK),
            kind=_TRACK_KINDS[request.type],
            name=request.name,
            source=source,
            muted=request.muted,
            encryption=request.encryption,
            # What the SDKs announce (the source's size; the Rust SDKs and livekit-client send it), as
            # LiveKit keeps it: subscribers size their video elements and adaptive stream from it.
            width=request.width,
            height=request.height,
        )
        self._pending_tracks[request.cid] = track
        info = track_to_proto(track)
        self.signal.send(
            rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=request.cid, track=info))
        )

    def _on_published_media(self, pc: RTCPeerConnection, media: Any) -> None:
        transceiver = next((t for t in pc.getTransceivers() if t.receiver.track is media), None)
        track = self._pending_tracks.pop(media.id, None)
        if track is None:  # the msid did not carry the cid: the first pending track of that kind
            cid = next((c for c, t in self._pending_tracks.items() if t.kind == media.kind), None)
            track = self._pending_tracks.pop(cid) if cid is not None else None
        if transceiver is None or track is None or track.kind != media.kind:
            log.info(
                "unannounced media ignored room=%s identity=%s kind=%s",
                self.room.name,
                self.identity,
                media.kind,
            )
            return
        track.mid = transceiver.mid or ""
        relay: TrackRelay
        if track.kind == "video":
            relay = VideoRelay(track.sid, transceiver)
            track.mime_type = relay.mime_type
        else:
            relay = AudioRelay(track.sid, transceiver, self.room.speakers.track_level(track.source))
            track.mime_type = "audio/opus"
        self.relays[track.sid] = relay
        runtime = self.room.runtime
        runtime.call(
            lambda engine: engine.track_published(self.room.name, self.identity, track, runtime.now())
        )
        for room, as_seen in self.appearances():
            room.track_published(as_seen, relay, as_seen.info())

    def _withdraw_unsent_tracks(self, sdp: str) -> None:
        """A re-offer whose m-line for a published track no longer sends means the client unpublished it."""
        sending = {
            media.rtp.muxId
            for media in SessionDescription.parse(sdp).media
            if media.port != 0 and media.direction in ("sendonly", "sendrecv")
        }
        runtime = self.room.runtime

        def unpublish(track_sid: str) -> None:
            runtime.call(lambda engine: engine.track_unpublished(self.room.name, self.identity, track_sid))

        for track_sid, relay in list(self.relays.items()):
            track = self.participant().tracks.get(track_sid)
            if track is not None and track.mid and track.mid not in sending:
                del self.relays[track_sid]
                unpublish(track_sid)
                self.unpublished(relay)

    def apply_subscription(self, update: rtc.UpdateSubscription) -> None:
        """The client subscribes or unsubscribes by hand (how `autoSubscribe: false` clients receive)."""
        # livekit-client names each track twice (in track_sids and in participant_tracks).
        named = [*update.track_sids, *(sid for pt in update.participant_tracks for sid in pt.track_sids)]
        wanted = []
        for track_sid in dict.fromkeys(named):
            found = self.room.published_track(track_sid)
            if found is not None and found[0] is self:
                continue  # one's own track is never sent back
            if found is not None:  # kept for tracks that exist only: a client cannot grow it at will
                self.subscription_overrides[track_sid] = update.subscribe
            if found is None:
                if update.subscribe:  # an unsubscribe from a track already gone needs no answer
                    error = rtc.SubscriptionResponse(track_sid=track_sid, err=models.SE_TRACK_NOTFOUND)
                    self.signal.send(rtc.SignalResponse(subscription_response=error))
            elif update.subscribe:
                wanted.append(found)
            else:
                self.unsubscribe(found[1])
        self.subscribe_to(wanted)

    def wants(self, track_sid: str) -> bool:
        return self.can_subscribe and self.subscription_overrides.get(track_sid, self.auto_subscribe)

    def subscribe(self, publisher: Publisher, relay: TrackRelay) -> None:
        self.subscribe_to([(publisher, relay)])

    def subscribe_to(self, tracks: Iterable[tuple[Publisher, TrackRelay]]) -> None:
        """Subscribe to these tracks (those this participant wants and may have) in one offer: added one
        by one, each would make the offer that the next one waits for."""
        added = [self._add_subscription(publisher, relay) for publisher, relay in tracks]
        if any(added):
            self.request_negotiation()

    def _add_subscription(self, publisher: Publisher, relay: TrackRelay) -> bool:
        """Add the track's sender to the subscriber connection, or defer it; whether it was added (an offer
        is then to be made)."""
        if not self.wants(relay.track_sid) or relay.track_sid in self.subscriptions:
            return False
        allowed = publisher.allows(self, relay.track_sid)
        self._tell_permission(publisher, relay.track_sid, allowed)
        if not allowed:
            return False
        if any(relay is waiting for _, waiting in self._deferred):
            return False
        if self.negotiation.busy or self._sub_connecting():
            # A transceiver added while an offer is out gets a transport of its own in aiortc, which the
            # answer then leaves unused: the track would stay silent. Add it once the answer is in.
            # Nor while the connection is still being set up after the first answer: aiortc would
            # connect the next answer while the first connect is under way, see the shared transport
            # not yet connected, and never start the new sender (silent until the next offer).
            log.debug(
                "subscription deferred room=%s identity=%s track=%s",
                self.room.name,
                self.identity,
                relay.track_sid,
            )
            self._deferred.append((publisher, relay))
            return False
        # A free slot (its track unpublished or unsubscribed) is used again, as LiveKit reuses its
        # transceivers: the offer does not grow with every track the room ever had.
        in_use = set(map(id, self.subscriptions.values()))
        free = (t for t, slot in self._slots.items() if id(t) not in in_use and relay.fits(slot))
        transceiver = next(free, None)
        if transceiver is None:
            transceiver, slot = relay.open_slot(self.sub_pc)
            self._slots[transceiver] = slot
        else:
            transceiver.direction = "sendonly"
        relay.subscribe(self.sid, self._slots[transceiver])
        # The client reads the publisher and track sids from the msid: "<PA_…>|<TR_…> <TR_…>".
        transceiver.sender._stream_id = f"{publisher.sid}|{relay.track_sid}"
        transceiver.sender._track_id = relay.track_sid
        self.subscriptions[relay.track_sid] = transceiver
        return True

    # Subscription permissions

    def _on_subscription_permission(self, request: rtc.SubscriptionPermission) -> None:
        """Who may receive this participant's tracks (the SDKs' `set_track_subscription_permissions`)."""
        if len(request.track_permissions) > _MAX_TRACK_PERMISSIONS:
            log.info(
                "subscription permission refused room=%s identity=%s entries=%d",
                self.room.name,
                self.identity,
                len(request.track_permissions),
            )
            return
        if request.all_participants:
            self._allowed = None
        else:
            by_sid = {session.sid: session.identity for session in self.room.sessions.values()}
            self._allowed = {}
            for permission in request.track_permissions:
                # As LiveKit: the identity names the subscriber, else its sid (of someone here now).
                identity = permission.participant_identity or by_sid.get(permission.participant_sid, "")
                if identity:
                    self._allowed[identity] = (permission.all_tracks, set(permission.track_sids))
        for room, as_seen in self.appearances():
            room.recheck_permissions(as_seen, self)

    def allows(self, subscriber: "ParticipantSession", track_sid: str) -> bool:
        if self._allowed is None:
            return True
        all_tracks, track_sids = self._allowed.get(subscriber.identity, (False, set()))
        return all_tracks or track_sid in track_sids

    def recheck_permission(self, publisher: Publisher, relay: TrackRelay) -> None:
        """The publisher changed who may subscribe: subscribe, or unsubscribe and say why."""
        if publisher.allows(self, relay.track_sid):
            self.subscribe(publisher, relay)
            return
        if not self.wants(relay.track_sid):
            return
        self._tell_permission(publisher, relay.track_sid, False)
        self._deferred = [(p, r) for p, r in self._deferred if r is not relay]
        if relay.track_sid in self.subscriptions:
            self.unsubscribe(relay)

    def _tell_permission(self, publisher: Publisher, track_sid: str, allowed: bool) -> None:
        """As LiveKit: the first time a wanted track is checked, and each time the answer changes."""
        if self._permitted.get(track_sid) == allowed or self.closed:
            return
        self._permitted[track_sid] = allowed
        update = rtc.SubscriptionPermissionUpdate(
            participant_sid=publisher.sid, track_sid=track_sid, allowed=allowed
        )
        self.signal.send(rtc.SignalResponse(subscription_permission_update=update))

    def forget_track(self, track_sid: str) -> None:
        """A track was unpublished: what this participant chose or was told about it goes too."""
        self.subscription_overrides.pop(track_sid, None)
        self._permitted.pop(track_sid, None)

    def _report_subscriptions(self) -> None:
        """Tell each publisher whose track now reaches this participant, the first time it reaches anyone.

        As LiveKit: a track counts as subscribed once a subscriber that is not hidden has it negotiated
        (its answer took the track) on a connected transport. The SDKs' `wait_for_subscription()` waits
        for this; livekit-agents holds every frame its voice output would speak until then.
        """
        if self.hidden or self.closed or self.sub_pc.connectionState != "connected":
            return
        for track_sid, transceiver in self.subscriptions.items():
            if transceiver.currentDirection not in ("sendonly", "sendrecv"):
                continue  # added since the last offer: not negotiated yet
            found = self.room.published_track(track_sid)
            if found is not None:
                found[0].track_subscribed(found[1])

    def track_subscribed(self, relay: TrackRelay) -> None:
        """One of this participant's tracks reached a subscriber: say so once per track, as LiveKit does."""
        if relay.ever_subscribed or self.closed:
            return
        relay.ever_subscribed = True
        if self.reports_subscriptions:
            subscribed = rtc.TrackSubscribed(track_sid=relay.track_sid)
            self.signal.send(rtc.SignalResponse(track_subscribed=subscribed))

    def unsubscribe(self, relay: TrackRelay) -> None:
        transceiver = self.subscriptions.pop(relay.track_sid, None)
        relay.unsubscribe(self.sid)  # the slot stays on its sender, silent until it is used again
        if transceiver is not None and not self.closed:
            transceiver.direction = "inactive"
            self.request_negotiation()

    def _on_mute(self, request: rtc.MuteTrackRequest) -> None:
        runtime = self.room.runtime
        with contextlib.suppress(CoreError):
            runtime.call(
                lambda engine: engine.mute_track(self.room.name, self.identity, request.sid, request.muted)
            )
        relay = self.relays.get(request.sid)
        if isinstance(relay, VideoRelay) and not request.muted:
            # The Rust-based SDKs send black frames while muted, livekit-client stops its camera:
            # either way subscribers start again from a fresh picture.
            relay.request_keyframe()

    def _on_track_setting(self, request: rtc.UpdateTrackSettings) -> None:
        """Adaptive stream: a subscriber hides a video (`disabled`) or shows it again.

        A disabled video is not sent to that subscriber; once enabled it resumes from a keyframe.
        The asked size, quality and frame rate are ignored: one layer is relayed (see README, Video).
        """
        for track_sid in request.track_sids:
            transceiver = self.subscriptions.get(track_sid)
            slot = self._slots.get(transceiver) if transceiver is not None else None
            if isinstance(slot, OutboundVideo):
                slot.pause(request.disabled)

    def _on_update_metadata(self, request: rtc.UpdateParticipantMetadata) -> None:
        reason, message = rtc.RequestResponse.OK, ""
        if not self.claims.video.can_update_own_metadata:
            reason, message = rtc.RequestResponse.NOT_ALLOWED, "the token does not allow updating metadata"
        else:
            runtime = self.room.runtime
            try:
                runtime.call(
                    lambda engine: engine.update_participant(
                        self.room.name,
                        self.identity,
                        name=request.name or None,
                        metadata=request.metadata or None,
                        attributes=dict(request.attributes),
                    )
                )
            except CoreError as exc:
                reason, message = rtc.RequestResponse.LIMIT_EXCEEDED, str(exc)
        response = rtc.RequestResponse(
            request_id=request.request_id, reason=reason, message=message, update_metadata=request
        )
        self.signal.send(rtc.SignalResponse(request_response=response))

    # Data

    def _on_client_channel(self, channel: RTCDataChannel) -> None:
        if channel.label not in (RELIABLE, LOSSY):
            return  # `_data_track` and others: accepted, their packets not used

        @channel.on("message")
        def on_message(message: bytes | str) -> None:
            if isinstance(message, str) or self.server_rpcs.take(message):
                return  # an answer to the server's own RPC (RoomService.PerformRpc) goes no further
            delivery = route(self.data_sender, message, reliable=channel.label == RELIABLE)
            if isinstance(delivery, str):
                log.debug(
                    "data dropped room=%s identity=%s reason=%s", self.room.name, self.identity, delivery
                )
                return
            self.room.deliver(delivery.payload, delivery.reliable, delivery.destinations, self)

    async def call(self, method: str, payload: str, timeout_ms: int) -> str:
        """Call an RPC method the participant registered (`register_rpc_method`); RpcError if it fails."""
        call_id, packet = self.server_rpcs.request(method, payload, timeout_ms)
        self.send_data(packet, reliable=True)
        return await self.server_rpcs.result(call_id, timeout_ms)

    def send_data(self, payload: bytes, reliable: bool) -> None:
        channel = self._channels[RELIABLE if reliable else LOSSY]
        if channel.readyState == "open":
            if reliable and self._queued:
                self._flush_queued()
            channel.send(payload)
        elif reliable and not self.closed:
            self._queued.append(payload)

    def _flush_queued(self) -> None:
        channel = self._channels[RELIABLE]
        while self._queued and channel.readyState == "open":
            channel.send(self._queued.popleft())


def _publisher_config() -> RTCConfiguration:
    """Every media section of the client's offers on one transport, as the SDKs bundle them.

    aiortc's default (balanced) policy gives the first video section of an offer a transport of its
    own and the next video sections that same one; BUNDLE then moves the first onto the shared
    transport and closes its own, leaving the others on a closed transport: their media never arrives.
    The Rust SDKs offer three receive-only video sections before the first published camera.
    """
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


async def _add_candidates(pc: RTCPeerConnection, candidates: list[Any]) -> None:
    for candidate in candidates:
        with contextlib.suppress(Exception):  # aioice ignores what it cannot use (e.g. TCP)
            await pc.addIceCandidate(candidate)


def _follow_ice_restart(pc: RTCPeerConnection, sdp: str) -> None:
    """A re-offer with new ICE credentials is the client restarting ICE (as the SDKs do on resume).

    aiortc ignores the new credentials once its ICE transport has started, so the client's checks
    under the new ones would be refused and its connection would fail. aioice cannot renew its own
    credentials either: the connection takes the client's new ones and keeps its own, which the
    client accepts (an answerer that does not restart its side).
    """
    ice = next((m.ice for m in SessionDescription.parse(sdp).media if m.ice and m.ice.usernameFragment), None)
    if ice is None:
        return
    transports = {t.receiver.transport.transport for t in pc.getTransceivers()}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport.transport)
    for transport in transports:
        connection = transport._connection  # aiortc keeps the aioice connection private
        if connection.remote_username not in (None, ice.usernameFragment):
            connection.remote_username = ice.usernameFragment
            connection.remote_password = ice.password
