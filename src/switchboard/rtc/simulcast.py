"""Simulcast offers answered with one layer: the relay forwards one stream per published video.

The SDKs offer simulcast for cameras by default (RFC 8853: `a=rid:<rid> send` lines and
`a=simulcast:send f;h;q`). aiortc knows nothing of it: its answer would drop the lines, and Chromium then
refuses its own next offer ("negotiates simulcast but does not negotiate the RID RTP header extension"),
so a second published track fails. The answer instead accepts exactly one layer — the highest quality
one the client does not start paused (`f` full, then `h` half, then `q` quarter) — with the RID header
extension: the client sends that layer only, at the size it publishes, and every subscriber receives it
(no layer switching; dynacast and adaptive stream cannot lower it).

Such a layer's RTP stream is announced by its rid only, with no SSRC in the offer, and aiortc routes
packets by SSRC or by a payload type that only one receiver uses: with two videos, the second one's
packets would be dropped. `route_by_mid` teaches the connection's router the SSRC of each new stream from
its MID header extension, as libwebrtc does.
"""

from typing import Any

RID_EXTENSION = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
# LiveKit's rids, best first (livekit-client `videoRids`, rust-sdks `VIDEO_RIDS`).
_PREFERENCE = ("f", "h", "q")


def _sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    """The session lines and each media section's lines (`m=` first)."""
    session: list[str] = []
    sections: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        elif line:
            session.append(line)
    return session, sections


def _value(section: list[str], attribute: str) -> list[str]:
    prefix = f"a={attribute}:"
    return [line[len(prefix) :] for line in section if line.startswith(prefix)]


def chosen_layer(offered: list[str]) -> str | None:
    """The rid to accept from an `a=simulcast:send` value such as `q;~h` or `f;h;q` (`~`: paused)."""
    streams = [alternative for group in offered[0].split(";") for alternative in group.split(",")]
    active = [rid for rid in streams if not rid.startswith("~")]
    candidates = active or [rid.lstrip("~") for rid in streams]
    ranked = sorted(candidates, key=lambda rid: _PREFERENCE.index(rid) if rid in _PREFERENCE else 99)
    return ranked[0] if ranked else None


def accept_one_layer(offer: str, answer: str) -> str:
    """The answer, with one layer of each simulcast video section of the offer accepted."""
    _, offered_sections = _sections(offer)
    layers: dict[str, tuple[str, str]] = {}  # mid: (rid, RID extension line)
    for section in offered_sections:
        send = [
            value.split(" ", 1)[-1] for value in _value(section, "simulcast") if value.startswith("send ")
        ]
        mids = _value(section, "mid")
        extension = next((v for v in _value(section, "extmap") if v.endswith(" " + RID_EXTENSION)), None)
        if not send or not mids or extension is None:
            continue
        rid = chosen_layer(send)
        if rid is not None:
            layers[mids[0]] = (rid, extension.split(" ")[0].split("/")[0])
    if not layers:
        return answer
    session, sections = _sections(answer)
    lines = list(session)
    for section in sections:
        mids = _value(section, "mid")
        lines.extend(section)
        if mids and mids[0] in layers and not section[0].startswith("m=video 0 "):
            rid, extension_id = layers[mids[0]]
            lines += [
                f"a=extmap:{extension_id} {RID_EXTENSION}",
                f"a=rid:{rid} recv",
                f"a=simulcast:recv {rid}",
            ]
    return "\r\n".join(lines) + "\r\n"


def route_by_mid(transport: Any) -> None:
    """Route RTP from SSRCs the description did not name by their MID header extension (once per
    transport; relies on aiortc's private `RtpRouter`)."""
    router = transport._rtp_router
    if getattr(router, "routes_by_mid", False):
        return
    route_rtp = router.route_rtp

    def route(packet: Any) -> Any:
        mid = packet.extensions.mid
        if packet.ssrc not in router.ssrc_table and mid in router.mid_table:
            router.ssrc_table[packet.ssrc] = router.mid_table[mid]
        return route_rtp(packet)

    router.route_rtp = route
    router.routes_by_mid = True
