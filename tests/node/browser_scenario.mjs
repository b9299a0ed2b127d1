// The official browser SDK `livekit-client` (unmodified UMD build) in headless Debian Chromium, driven by
// playwright-core, against a Switchboard server. Run by tests/integration/test_browser.py:
//
//   node browser_scenario.mjs <room|watch|listen|rpc|e2ee|guard|captions|bad-token|speakers|relay|reconnect|camera|view>
//
// Environment: PAGE_URL (a page that loads livekit-client.umd.js, served by the test), SWITCHBOARD_WS_URL,
// BROWSER_TOKEN, PEER_IDENTITY (the Python participant, room scenario), CHROMIUM (default /usr/bin/chromium).
// The room scenario waits for a line `leave` on stdin before disconnecting, so that the test decides when
// the browser leaves; so does the watch scenario (a listener that records track permissions, subscriptions
// and departures, then waits for PEER_IDENTITY to have left), the listen scenario and the rpc scenario
// (RPC both ways with PEER_IDENTITY: see tests/rpc_methods.py for the methods), and the e2ee scenario
// (media and data encrypted with the shared key E2EE_KEY, to and from PEER_IDENTITY); the guard scenario
// publishes for PEER_IDENTITY only, and on a line `swap` for SECOND_PEER_IDENTITY only, then waits for
// `leave`. The captions scenario listens on lk.transcription until PEER_IDENTITY's first final
// caption (at most 45 s). The speakers scenario records ActiveSpeakersChanged and publishes a microphone
// that plays a tone between the stdin lines `tone` and `quiet`, until `leave`.
// The relay scenario connects with `rtcConfig.iceTransportPolicy` ICE_POLICY (e.g. relay: only through the
// TURN servers of the JoinResponse), publishes a tone, waits to hear PEER_IDENTITY's, then on `leave`
// reports each peer connection's ICE servers, the server's candidates and the selected candidate pair.
// The reconnect scenario joins as the room scenario does, then reconnects by each
// `simulateScenario` named on stdin (e.g. `signal-reconnect`, `full-reconnect`) until `leave`.
// The camera scenario publishes Chromium's fake camera (CAMERA_WIDTH x CAMERA_HEIGHT) and its fake screen
// (a screen share), mutes the camera on `mute`, unmutes it on `unmute`, and on `leave` reports what each
// video sender encoded and sent.
// The view scenario joins with adaptive stream on, shows PEER_IDENTITY's camera in a <video> element until
// 30 frames are decoded, removes the element (the SDK then asks for no video), and shows it again.
// Prints exactly one JSON line of observations on stdout; diagnostics go to stderr.

import readline from 'node:readline';
import { chromium } from 'playwright-core';

const scenario = process.argv[2];
const env = process.env;
const STEP_TIMEOUT_MS = 20_000;

const CHROMIUM_ARGS = [
  // What works as root on this Debian image (see the machine notes); playwright adds --headless,
  // --no-sandbox (chromiumSandbox is off by default) and a fresh --user-data-dir.
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-proxy-server',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
  '--auto-accept-this-tab-capture',
];

function lines() {
  const rl = readline.createInterface({ input: process.stdin });
  const queue = [];
  const waiters = [];
  let closed = false;
  rl.on('line', (line) => (waiters.length ? waiters.shift()(line) : queue.push(line)));
  rl.on('close', () => {
    closed = true;
    while (waiters.length) waiters.shift()(null);
  });
  return {
    next(timeoutMs) {
      if (queue.length) return Promise.resolve(queue.shift());
      if (closed) return Promise.resolve(null);
      return new Promise((resolve) => {
        const timer = setTimeout(() => resolve('timeout'), timeoutMs);
        waiters.push((line) => {
          clearTimeout(timer);
          resolve(line);
        });
      });
    },
    close: () => rl.close(),
  };
}

// ---- In the page (serialised by playwright: no closures over this module) ----

async function joinAndSend({ url, token, timeoutMs }) {
  const LK = window.LivekitClient;
  const t0 = performance.now();
  const ms = () => Math.round(performance.now() - t0);
  const obs = {
    sdkVersion: LK.version,
    events: [],
    dataReceived: [],
    textReceived: [],
    remoteAudioTracks: [],
  };
  window.__obs = obs;
  const room = new LK.Room();
  window.__room = room;
  const E = LK.RoomEvent;
  room.on(E.ParticipantConnected, (p) => obs.events.push({ event: 'participantConnected', identity: p.identity, at: ms() }));
  room.on(E.ParticipantDisconnected, (p) => obs.events.push({ event: 'participantDisconnected', identity: p.identity, at: ms() }));
  room.on(E.Disconnected, (reason) =>
    obs.events.push({ event: 'disconnected', reason: LK.DisconnectReason[reason] ?? reason ?? null, at: ms() }),
  );
  room.on(E.Reconnecting, () => obs.events.push({ event: 'reconnecting', at: ms() }));
  room.on(E.SignalReconnecting, () => obs.events.push({ event: 'signalReconnecting', at: ms() }));
  room.on(E.TrackSubscribed, (track, pub, p) => obs.remoteAudioTracks.push({ identity: p.identity, sid: pub.trackSid, kind: track.kind }));
  room.on(E.DataReceived, (payload, participant, kind, topic) => {
    obs.dataReceived.push({
      text: new TextDecoder().decode(payload),
      from: participant ? participant.identity : null,
      kind,
      topic: topic ?? null,
      at: ms(),
    });
  });
  room.registerTextStreamHandler('lk.transcription', async (reader, participantInfo) => {
    const text = await reader.readAll();
    obs.textReceived.push({
      text,
      from: participantInfo.identity,
      topic: reader.info.topic,
      attributes: reader.info.attributes ?? {},
      at: ms(),
    });
  });

  await room.connect(url, token, { autoSubscribe: true });
  obs.connectMs = ms();
  obs.state = room.state;
  obs.localIdentity = room.localParticipant.identity;
  obs.localSid = room.localParticipant.sid;
  obs.roomName = room.name;
  obs.serverVersion = room.serverInfo ? room.serverInfo.version : null;
  obs.remoteAtConnect = [...room.remoteParticipants.values()].map((p) => ({ identity: p.identity, sid: p.sid }));
  // The peer is in the JoinResponse; wait a little anyway in case it arrives as an update.
  while (!room.remoteParticipants.size && ms() < timeoutMs) await new Promise((r) => setTimeout(r, 20));
  obs.remote = [...room.remoteParticipants.values()].map((p) => ({ identity: p.identity, sid: p.sid, kind: p.kind }));

  const { publication, audioContextState } = await window.__publishOscillator(room);
  obs.audioContextState = audioContextState;
  obs.published = { sid: publication.trackSid, source: publication.source, kind: publication.kind, at: ms() };

  await room.localParticipant.publishData(new TextEncoder().encode('hello from the browser'), {
    reliable: true,
    topic: 'greeting',
  });
  obs.dataSentAt = ms();
  const sent = await room.localParticipant.sendText('hi', { topic: 'lk.chat' });
  obs.textSent = { id: sent.id, topic: sent.topic, at: ms() };
  return obs;
}

async function waitAndLeave({ timeoutMs, peer }) {
  const room = window.__room;
  const obs = window.__obs;
  const start = performance.now();
  const has = () => obs.dataReceived.some((d) => d.from === peer) && obs.textReceived.some((t) => t.from === peer);
  while (!has() && performance.now() - start < timeoutMs) await new Promise((r) => setTimeout(r, 20));
  obs.stateBeforeLeave = room.state;
  const before = performance.now();
  await room.disconnect();
  obs.disconnectMs = Math.round(performance.now() - before);
  obs.finalState = room.state;
  return obs;
}

async function badConnect({ url, token }) {
  const LK = window.LivekitClient;
  const room = new LK.Room();
  const t0 = performance.now();
  try {
    await room.connect(url, token);
    return { connected: true, elapsedMs: Math.round(performance.now() - t0), state: room.state };
  } catch (e) {
    return {
      connected: false,
      elapsedMs: Math.round(performance.now() - t0),
      state: room.state,
      error: {
        name: e?.name ?? null,
        message: String(e?.message ?? e),
        reason: e?.reason ?? null,
        reasonName: e?.reasonName ?? null,
        // Room.connect re-wraps the engine's error, copying `reason` and `status` but not `reasonName`.
        reasonByEnum: e?.reason != null ? (LK.ConnectionErrorReason[e.reason] ?? null) : null,
        status: e?.status ?? null,
        isConnectionError: e instanceof LK.ConnectionError,
      },
    };
  }
}

async function readCaptions({ url, token, peer, timeoutMs }) {
  // A viewer, as a captions UI is: it only listens for lk.transcription until the peer's first final one.
  const LK = window.LivekitClient;
  const t0 = performance.now();
  const obs = { captions: [] };
  const room = new LK.Room();
  room.registerTextStreamHandler('lk.transcription', async (reader, participantInfo) => {
    const text = await reader.readAll();
    obs.captions.push({
      text,
      from: participantInfo.identity,
      attributes: reader.info.attributes ?? {},
      at: Math.round(performance.now() - t0),
    });
  });
  await room.connect(url, token, { autoSubscribe: true });
  obs.localIdentity = room.localParticipant.identity;
  const finalFromPeer = () =>
    obs.captions.some((c) => c.from === peer && c.attributes['lk.transcription_final'] === 'true');
  while (!finalFromPeer() && performance.now() - t0 < timeoutMs) await new Promise((r) => setTimeout(r, 50));
  obs.agents = [...room.remoteParticipants.values()].filter((p) => p.isAgent).map((p) => p.identity);
  await room.disconnect();
  return obs;
}

async function watch({ url, token }) {
  // A listener: what it is told about the others' tracks (permissions, subscriptions) and departures.
  const LK = window.LivekitClient;
  const t0 = performance.now();
  const ms = () => Math.round(performance.now() - t0);
  const obs = { permissions: [], subscribed: [], unsubscribed: [], left: [] };
  window.__obs = obs;
  const room = new LK.Room();
  window.__room = room;
  const E = LK.RoomEvent;
  room.on(E.TrackSubscriptionPermissionChanged, (pub, status, p) =>
    obs.permissions.push({ identity: p.identity, sid: pub.trackSid, status, at: ms() }),
  );
  room.on(E.TrackSubscribed, (track, pub, p) => obs.subscribed.push({ identity: p.identity, sid: pub.trackSid, at: ms() }));
  room.on(E.TrackUnsubscribed, (track, pub, p) => {
    obs.unsubscribed.push({ identity: p.identity, sid: pub.trackSid, at: ms() });
    // Tell the publisher, which waits for it before it does anything else.
    room.localParticipant.publishData(new TextEncoder().encode(`unsubscribed:${pub.trackSid}`), { reliable: true });
  });
  room.on(E.ParticipantDisconnected, (p) =>
    obs.left.push({ identity: p.identity, name: p.name, metadata: p.metadata, attributes: { ...p.attributes }, at: ms() }),
  );
  await room.connect(url, token, { autoSubscribe: true });
  obs.localIdentity = room.localParticipant.identity;
  // The room drops its events while it connects (emitWhenConnected), so what it was told about the
  // others' tracks then is read from the publications themselves.
  const start = performance.now();
  const statuses = () =>
    [...room.remoteParticipants.values()].flatMap((p) =>
      [...p.trackPublications.values()].map((pub) => ({ identity: p.identity, sid: pub.trackSid, status: pub.permissionStatus })),
    );
  while (!statuses().some((s) => s.status === 'not_allowed') && performance.now() - start < 3000) {
    await new Promise((r) => setTimeout(r, 20));
  }
  obs.permissionsAfterConnect = statuses();
  // Tell the others it is connected (and has read that), so that they change permissions only now.
  await room.localParticipant.publishData(new TextEncoder().encode('watching'), { reliable: true });
  return obs;
}

async function stopWatching({ timeoutMs, peer }) {
  const room = window.__room;
  const obs = window.__obs;
  const start = performance.now();
  while (!obs.left.some((p) => p.identity === peer) && performance.now() - start < timeoutMs) {
    await new Promise((r) => setTimeout(r, 20));
  }
  await room.disconnect();
  return obs;
}

function installPageHelpers() {
  // Shared by the page functions (each is serialised on its own, so they cannot share closures).
  window.__publishOscillator = async (room) => {
    // A 440 Hz tone at gain 0.25 from WebAudio, published as the microphone: content known to the test.
    const ctx = new AudioContext({ sampleRate: 48000 });
    await ctx.resume();
    const osc = new OscillatorNode(ctx, { type: 'sine', frequency: 440 });
    const dest = ctx.createMediaStreamDestination();
    osc.connect(new GainNode(ctx, { gain: 0.25 })).connect(dest);
    osc.start();
    const publication = await room.localParticipant.publishTrack(dest.stream.getAudioTracks()[0], {
      source: window.LivekitClient.Track.Source.Microphone,
      name: 'oscillator',
      dtx: false,
    });
    return { publication, audioContextState: ctx.state };
  };
  window.__heard = async (track, pub, timeoutMs) => {
    // What the receiver of `track` got from now on: RTP packets, and the decoded audio's loudest level
    // (inbound-rtp audioLevel, 0..1 of full scale, read only once packets have been arriving for a while).
    // A reused transceiver keeps its counters, hence counting from now.
    const element = track.attach();
    element.muted = false;
    document.body.appendChild(element);
    const inbound = async () => {
      let found = null;
      (await track.receiver.getStats()).forEach((r) => {
        if (r.type === 'inbound-rtp') found = r;
      });
      return found;
    };
    const start = performance.now();
    const before = (await inbound())?.packetsReceived ?? 0;
    let packets = 0;
    let loudest = 0;
    while (!(packets >= 100 && loudest > 0.1) && performance.now() - start < timeoutMs) {
      await new Promise((r) => setTimeout(r, 50));
      const stats = await inbound();
      packets = (stats?.packetsReceived ?? 0) - before;
      if (packets >= 50) loudest = Math.max(loudest, stats?.audioLevel ?? 0);
    }
    return { sid: pub.trackSid, packetsReceived: packets, loudestAudioLevel: loudest, ms: Math.round(performance.now() - start) };
  };
}

async function listen({ url, token, peer, timeoutMs }) {
  // A listener that plays each track the peer publishes and reports, per track, what its receiver got,
  // then tells the peer with a data packet `heard:<track sid>`.
  const LK = window.LivekitClient;
  const obs = { heard: [] };
  window.__obs = obs;
  const room = new LK.Room();
  window.__room = room;
  room.on(LK.RoomEvent.TrackSubscribed, async (track, pub, p) => {
    if (p.identity !== peer || track.kind !== 'audio') return;
    obs.heard.push(await window.__heard(track, pub, timeoutMs));
    await room.localParticipant.publishData(new TextEncoder().encode(`heard:${pub.trackSid}`), { reliable: true });
  });
  await room.connect(url, token, { autoSubscribe: true });
  return obs;
}

async function e2ee({ url, token, peer, key, timeoutMs }) {
  // livekit-client's shared-key end-to-end encryption (ExternalE2EEKeyProvider and the SDK's e2ee worker,
  // served beside the page): it publishes a 440 Hz oscillator and a data packet, both encrypted, and
  // reports the peer's encrypted track (decrypted and decoded) and data packets.
  const LK = window.LivekitClient;
  const obs = { supported: LK.isE2EESupported(), dataReceived: [], heard: null, errors: [] };
  window.__obs = obs;
  const keyProvider = new LK.ExternalE2EEKeyProvider();
  await keyProvider.setKey(key);
  const worker = new Worker('/livekit-client.e2ee.worker.js');
  const room = new LK.Room({ encryption: { keyProvider, worker } });
  window.__room = room;
  room.on(LK.RoomEvent.EncryptionError, (e) => obs.errors.push(String(e?.message ?? e)));
  room.on(LK.RoomEvent.DataReceived, (payload, participant, kind, topic) =>
    obs.dataReceived.push({ text: new TextDecoder().decode(payload), from: participant?.identity ?? null, topic: topic ?? null }),
  );
  room.on(LK.RoomEvent.TrackSubscribed, async (track, pub, p) => {
    if (p.identity !== peer || track.kind !== 'audio') return;
    obs.heard = { ...(await window.__heard(track, pub, timeoutMs)), encrypted: pub.isEncrypted };
  });
  await room.setE2EEEnabled(true);
  await room.connect(url, token, { autoSubscribe: true });
  // (Room.isE2EEEnabled follows the worker's answer, later; the participant's setting is set at once.)
  obs.e2eeEnabled = room.localParticipant.isE2EEEnabled;
  const { publication } = await window.__publishOscillator(room);
  obs.published = { sid: publication.trackSid, encrypted: publication.isEncrypted };
  await room.localParticipant.publishData(new TextEncoder().encode('secret from the browser'), {
    reliable: true,
    topic: 'secret',
  });
  obs.dataSent = true;
  const start = performance.now();
  while (!(obs.heard && obs.dataReceived.length) && performance.now() - start < timeoutMs) {
    await new Promise((r) => setTimeout(r, 50));
  }
  return obs;
}

async function rpc({ url, token, peer, responseTimeout, slowMs }) {
  // The same three methods as tests/rpc_methods.py, registered before connecting; once connected it
  // tells the peer (a data packet `rpc-ready`) and calls the peer's: greet, refuse, missing, slow.
  const LK = window.LivekitClient;
  const obs = { calls: [] };
  window.__obs = obs;
  const room = new LK.Room();
  window.__room = room;
  room.registerRpcMethod('greet', async (data) => `hello ${data.callerIdentity}, you sent ${data.payload}`);
  room.registerRpcMethod('refuse', async () => {
    throw new LK.RpcError(2001, 'refused', 'on purpose');
  });
  room.registerRpcMethod('slow', async () => {
    await new Promise((r) => setTimeout(r, slowMs));
    return 'too late';
  });
  await room.connect(url, token, { autoSubscribe: true });
  obs.serverVersion = room.serverInfo?.version ?? null;
  await room.localParticipant.publishData(new TextEncoder().encode('rpc-ready'), { reliable: true });
  for (const [method, timeout] of [['greet'], ['refuse'], ['missing'], ['slow', responseTimeout]]) {
    const params = { destinationIdentity: peer, method, payload: '42' };
    if (timeout !== undefined) params.responseTimeout = timeout;
    try {
      obs.calls.push({ method, payload: await room.localParticipant.performRpc(params) });
    } catch (e) {
      obs.calls.push({ method, error: { code: e?.code ?? null, message: e?.message ?? String(e), data: e?.data ?? null } });
    }
  }
  return obs;
}

async function guard({ url, token, allowed }) {
  // A publisher that chooses who may receive its oscillator (setTrackSubscriptionPermissions): only
  // `allowed`, from before it publishes.
  const LK = window.LivekitClient;
  const room = new LK.Room();
  window.__room = room;
  window.__obs = {};
  await room.connect(url, token, { autoSubscribe: true });
  room.localParticipant.setTrackSubscriptionPermissions(false, [{ participantIdentity: allowed, allowAll: true }]);
  const { publication } = await window.__publishOscillator(room);
  return { sid: publication.trackSid };
}

async function allowOnly({ allowed }) {
  window.__room.localParticipant.setTrackSubscriptionPermissions(false, [{ participantIdentity: allowed, allowAll: true }]);
}

async function disconnectRoom() {
  await window.__room.disconnect();
  return window.__obs;
}

async function speakers({ url, token }) {
  // Who the room says is speaking, and a microphone (a WebAudio tone, silent until `window.__tone(true)`).
  const LK = window.LivekitClient;
  const t0 = performance.now();
  const obs = { told: [] };
  window.__obs = obs;
  const room = new LK.Room();
  window.__room = room;
  room.on(LK.RoomEvent.ActiveSpeakersChanged, (speakers) =>
    obs.told.push({
      speakers: speakers.map((p) => p.identity),
      speaking: speakers.map((p) => p.isSpeaking),
      levels: speakers.map((p) => p.audioLevel),
      at: Math.round(performance.now() - t0),
    }),
  );
  await room.connect(url, token, { autoSubscribe: true });
  obs.localIdentity = room.localParticipant.identity;
  const ctx = new AudioContext({ sampleRate: 48000 });
  await ctx.resume();
  const osc = new OscillatorNode(ctx, { type: 'sine', frequency: 440 });
  const gain = new GainNode(ctx, { gain: 0 });
  const dest = ctx.createMediaStreamDestination();
  osc.connect(gain).connect(dest);
  osc.start();
  window.__tone = (on) => gain.gain.setValueAtTime(on ? 0.25 : 0, ctx.currentTime);
  // The SDK's defaults (DTX on): its silence is a packet every 400 ms, as a real microphone's.
  const publication = await room.localParticipant.publishTrack(dest.stream.getAudioTracks()[0], {
    source: LK.Track.Source.Microphone,
  });
  obs.published = publication.trackSid;
  return obs;
}

function recordPeerConnections() {
  // Runs in the page before the SDK: every RTCPeerConnection it creates is kept for relayReport.
  window.__pcs = [];
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      window.__pcs.push(this);
    }
  };
}

async function relayJoin({ url, token, peer, policy, timeoutMs }) {
  const LK = window.LivekitClient;
  const obs = {};
  const room = new LK.Room();
  window.__room = room;
  const subscribed = new Promise((resolve) =>
    room.on(LK.RoomEvent.TrackSubscribed, (track, pub, p) => p.identity === peer && resolve({ track, pub })),
  );
  await room.connect(url, token, { autoSubscribe: true, rtcConfig: { iceTransportPolicy: policy } });
  obs.state = room.state;
  const { publication } = await window.__publishOscillator(room);
  obs.published = publication.trackSid;
  const got = await Promise.race([subscribed, new Promise((r) => setTimeout(() => r(null), timeoutMs))]);
  if (got) obs.heard = await window.__heard(got.track, got.pub, timeoutMs);
  return obs;
}

async function relayReport() {
  const connections = [];
  // Only those that negotiated with the server: the SDK also makes short-lived ones to probe codecs.
  for (const pc of window.__pcs.filter((pc) => pc.remoteDescription)) {
    const stats = await pc.getStats();
    let selected = null;
    stats.forEach((r) => {
      if (r.type !== 'transport' || !r.selectedCandidatePairId) return;
      const pair = stats.get(r.selectedCandidatePairId);
      const end = (id) => {
        const c = stats.get(id);
        return { type: c.candidateType, protocol: c.protocol, relayProtocol: c.relayProtocol ?? null, address: c.address, port: c.port };
      };
      selected = { state: pair.state, local: end(pair.localCandidateId), remote: end(pair.remoteCandidateId) };
    });
    const config = pc.getConfiguration();
    connections.push({
      state: pc.connectionState,
      iceTransportPolicy: config.iceTransportPolicy,
      iceServers: config.iceServers.map((s) => ({ urls: [].concat(s.urls), username: s.username ?? null, credential: s.credential ?? null })),
      serverCandidates: (pc.remoteDescription?.sdp ?? '').split('\r\n').filter((l) => l.startsWith('a=candidate:')),
      selected,
    });
  }
  await window.__room.disconnect();
  return connections;
}

async function reconnectAndReport({ how, peer, timeoutMs }) {
  // The SDK's own reconnection (`simulateScenario`), then: who it is now, and whether the peer's audio
  // plays again. The peer is told with a data packet `reconnected:<how>`, to check its side.
  const LK = window.LivekitClient;
  const room = window.__room;
  const t0 = performance.now();
  const ms = () => Math.round(performance.now() - t0);
  const identity = () => ({ sid: room.localParticipant.sid, tracks: [...room.localParticipant.trackPublications.keys()] });
  const report = { how, before: identity(), events: [] };
  const E = LK.RoomEvent;
  const record = (event) => () => report.events.push({ event, at: ms() });
  for (const event of ['SignalReconnecting', 'Reconnecting', 'Reconnected', 'Disconnected']) room.on(E[event], record(event));
  const reconnected = new Promise((resolve) => room.once(E.Reconnected, resolve));
  await room.simulateScenario(how);
  await Promise.race([reconnected, new Promise((r) => setTimeout(r, timeoutMs))]);
  report.reconnectedMs = ms();
  report.state = room.state;
  report.after = identity();
  const peerTrack = () =>
    [...(room.remoteParticipants.get(peer)?.trackPublications.values() ?? [])].find((p) => p.track?.kind === 'audio');
  while (!peerTrack() && ms() < timeoutMs) await new Promise((r) => setTimeout(r, 20));
  const pub = peerTrack();
  if (pub) report.heard = await window.__heard(pub.track, pub, timeoutMs);
  await room.localParticipant.publishData(new TextEncoder().encode(`reconnected:${how}`), { reliable: true });
  return report;
}

async function publishCamera({ url, token, width, height }) {
  const LK = window.LivekitClient;
  const room = new LK.Room();
  window.__room = room;
  await room.connect(url, token);
  const camera = await room.localParticipant.setCameraEnabled(true, { resolution: { width, height } });
  const published = { camera: { sid: camera.trackSid, source: camera.source } };
  try {
    // Headless Chromium has no screen to pick: it shares this very tab (--auto-accept-this-tab-capture).
    const screen = await room.localParticipant.setScreenShareEnabled(true, {
      audio: false,
      preferCurrentTab: true,
      selfBrowserSurface: 'include',
    });
    published.screen = { sid: screen.trackSid, source: screen.source };
  } catch (e) {
    published.screenError = String(e?.message ?? e);
  }
  return published;
}

async function muteCamera(muted) {
  const publication = window.__room.localParticipant.getTrackPublication(window.LivekitClient.Track.Source.Camera);
  await (muted ? publication.mute() : publication.unmute());
  return publication.isMuted;
}

async function videoSenderReport() {
  // What the browser's encoder made of each video track: the layers (rids) it sent, their size and frames.
  const room = window.__room;
  const report = {};
  for (const publication of room.localParticipant.videoTrackPublications.values()) {
    const layers = [];
    (await publication.track.sender.getStats()).forEach((r) => {
      if (r.type === 'outbound-rtp') {
        layers.push({
          rid: r.rid ?? null,
          width: r.frameWidth ?? 0,
          height: r.frameHeight ?? 0,
          framesSent: r.framesSent ?? 0,
          keyFrames: r.keyFramesEncoded ?? 0,
          pli: r.pliCount ?? 0,
          limitation: r.qualityLimitationReason ?? null,
        });
      }
    });
    report[publication.source] = layers;
  }
  await room.disconnect();
  return report;
}

async function viewWithAdaptiveStream({ url, token, peer, timeoutMs }) {
  const LK = window.LivekitClient;
  const room = new LK.Room({ adaptiveStream: true });
  window.__room = room;
  const t0 = performance.now();
  let subscribedAt = null;
  let firstFrameAt = null;
  const subscribed = new Promise((resolve) =>
    room.on(LK.RoomEvent.TrackSubscribed, (track, _pub, p) => {
      if (p.identity === peer && track.kind === 'video') {
        subscribedAt = performance.now();
        resolve(track);
      }
    }),
  );
  await room.connect(url, token);
  const track = await Promise.race([subscribed, new Promise((r) => setTimeout(() => r(null), timeoutMs))]);
  if (!track) return { subscribed: false };
  const inbound = async () => {
    let found = null;
    (await track.receiver.getStats()).forEach((r) => r.type === 'inbound-rtp' && (found = r));
    return { frames: found?.framesDecoded ?? 0, received: found?.packetsReceived ?? 0, width: found?.frameWidth ?? 0, height: found?.frameHeight ?? 0 };
  };
  const until = async (condition) => {
    const start = performance.now();
    for (let now = await inbound(); performance.now() - start < timeoutMs; now = await inbound()) {
      if (await condition(now)) return now;
      await new Promise((r) => setTimeout(r, 100));
    }
    return null;
  };
  const show = () => {
    const element = track.attach();
    element.style.width = '640px';
    element.style.height = '360px';
    document.body.appendChild(element);
    return element;
  };
  // A late joiner (the camera runs already): its first decoded frame, as the <video> element presents it.
  show().requestVideoFrameCallback(() => (firstFrameAt = performance.now()));
  const shown = await until((s) => s.frames >= 30);
  const firstFrameMs = firstFrameAt === null ? null : Math.round(firstFrameAt - subscribedAt);
  const firstShownMs = Math.round(performance.now() - t0);
  track.detach().forEach((element) => element.remove());
  // Hidden: packets stop coming once the server has the SDK's `disabled` setting (no packet for 1 s).
  const hidden = await until(async (s) => {
    await new Promise((r) => setTimeout(r, 1000));
    return (await inbound()).received === s.received;
  });
  show();
  const before = (await inbound()).frames;
  const shownAgain = await until((s) => s.frames >= before + 30);
  await room.disconnect();
  return { subscribed: true, shown, firstShownMs, firstFrameMs, hidden, shownAgain };
}

// ---- Driver ----

async function main() {
  const result = { scenario };
  const network = [];
  const consoleErrors = [];
  const started = Date.now();
  const browser = await chromium.launch({
    executablePath: env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: STEP_TIMEOUT_MS,
  });
  result.launchMs = Date.now() - started;
  result.browserVersion = browser.version();
  const input = ['room', 'watch', 'listen', 'rpc', 'e2ee', 'guard', 'speakers', 'relay', 'reconnect', 'camera'].includes(scenario) ? lines() : null;
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(STEP_TIMEOUT_MS);
    const rtcPath = (u) => {
      const parsed = new URL(u);
      return parsed.pathname;
    };
    page.on('websocket', (ws) => network.push({ type: 'websocket', path: rtcPath(ws.url()) }));
    page.on('response', (r) => {
      if (r.url().startsWith(env.SWITCHBOARD_HTTP_URL)) {
        network.push({ type: 'http', path: rtcPath(r.url()), status: r.status(), cors: r.headers()['access-control-allow-origin'] ?? null });
      }
    });
    page.on('requestfailed', (r) => {
      if (r.url().startsWith(env.SWITCHBOARD_HTTP_URL)) {
        network.push({ type: 'http', path: rtcPath(r.url()), status: null, failure: r.failure()?.errorText ?? null });
      }
    });
    const note = (line) => {
      consoleErrors.push(line);
      process.stderr.write(`${line}\n`); // also live, for a test that gives up before the JSON line
    };
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') {
        note(`${m.type()}: ${m.text().replace(/\?[^\s']*/g, '?…')}`.slice(0, 400));
      }
    });
    page.on('pageerror', (e) => note(`pageerror: ${e.message}`));
    if (scenario === 'relay') await page.addInitScript(recordPeerConnections);
    const loading = Date.now();
    await page.goto(env.PAGE_URL);
    result.pageLoadMs = Date.now() - loading;
    result.sdkLoaded = await page.evaluate(() => typeof window.LivekitClient?.Room === 'function');
    if (!result.sdkLoaded) throw new Error('livekit-client UMD build did not define window.LivekitClient');
    await page.evaluate(installPageHelpers);

    if (scenario === 'room') {
      result.joined = await page.evaluate(joinAndSend, {
        url: env.SWITCHBOARD_WS_URL,
        token: env.BROWSER_TOKEN,
        timeoutMs: 5000,
      });
      process.stderr.write('browser joined and sent; waiting for `leave` on stdin\n');
      result.leaveSignal = await input.next(45_000);
      result.left = await page.evaluate(waitAndLeave, { timeoutMs: 5000, peer: env.PEER_IDENTITY });
    } else if (scenario === 'watch') {
      result.joined = await page.evaluate(watch, { url: env.SWITCHBOARD_WS_URL, token: env.BROWSER_TOKEN });
      process.stderr.write('browser watching; waiting for `leave` on stdin\n');
      result.leaveSignal = await input.next(45_000);
      result.watched = await page.evaluate(stopWatching, { timeoutMs: 5000, peer: env.PEER_IDENTITY });
    } else if (scenario === 'listen') {
      result.joined = await page.evaluate(listen, {
        url: env.SWITCHBOARD_WS_URL,
        token: env.BROWSER_TOKEN,
        peer: env.PEER_IDENTITY,
        timeoutMs: 10_000,
      });
      process.stderr.write('browser listening; waiting for `leave` on stdin\n');
      result.leaveSignal = await input.next(60_000);
      result.listened = await page.evaluate(disconnectRoom);
    } else if (scenario === 'rpc') {
      result.called = await page.evaluate(rpc, {
        url: env.SWITCHBOARD_WS_URL,
        token: env.BROWSER_TOKEN,
        peer: env.PEER_IDENTITY,
        responseTimeout: Number(env.RPC_RESPONSE_TIMEOUT_MS),
        slowMs: Number(env.RPC_SLOW_MS),
      });
      process.stderr.write('browser made its calls; waiting for `leave` on stdin\n');
      result.leaveSignal = await input.next(45_000);
      await page.evaluate(disconnectRoom);
    } else if (scenario === 'e2ee') {
      result.joined = await page.evaluate(e2ee, {
        url: env.SWITCHBOARD_WS_URL,
        token: env.BROWSER_TOKEN,
        peer: env.PEER_IDENTITY,
        key: env.E2EE_KEY,
        timeoutMs: 15_000,
      });
      process.stderr.write('browser sent and received encrypted media and data; waiting for `leave` on stdin\n');
      result.leaveSignal = await input.next(45_000);
      await page.evaluate(disconnectRoom);
    } else if (scenario === 'guard') {
      result.published = await page.evaluate(guard, {
        url: env.SWITCHBOARD_WS_URL,
        token: env.BROWSER_TOKEN,
        allowed: env.PEER_IDENTITY,
      });
      process.stderr.write('browser publishing for PEER_IDENTITY only; waiting for `swap` on stdin\n');
      result.swapSignal = await input.next(45_000);
      await page.evaluate(allowOnly, { allowed: env.SECOND_PEER_IDENTITY });
      result.leaveSignal = await input.next(45_000);
      await page.evaluate(disconnectRoom);
    } else if (scenario === 'captions') {
      result.read = await page.evaluate(readCaptions, {
        url: env.SWITCHBOARD_WS_URL,
        token: env.BROWSER_TOKEN,
        peer: env.PEER_IDENTITY,
        timeoutMs: 45_000,
      });
    } else if (scenario === 'speakers') {
      result.joined = await page.evaluate(speakers, { url: env.SWITCHBOARD_WS_URL, token: env.BROWSER_TOKEN });
      process.stderr.write('browser in the room; `tone`, `quiet` or `leave` on stdin\n');
      for (let line = await input.next(60_000); ['tone', 'quiet'].includes(line); line = await input.next(60_000)) {
        await page.evaluate((on) => window.__tone(on), line === 'tone');
      }
      result.told = await page.evaluate(async () => {
        await window.__room.disconnect();
        return window.__obs.told;
      });
    } else if (scenario === 'relay') {
      const where = { url: env.SWITCHBOARD_WS_URL, token: env.BROWSER_TOKEN, peer: env.PEER_IDENTITY };
      result.joined = await page.evaluate(relayJoin, { ...where, policy: env.ICE_POLICY, timeoutMs: 15_000 });
      process.stderr.write(`browser joined (ICE policy ${env.ICE_POLICY}); waiting for \`leave\` on stdin\n`);
      result.leaveSignal = await input.next(60_000);
      result.connections = await page.evaluate(relayReport);
    } else if (scenario === 'reconnect') {
      result.joined = await page.evaluate(joinAndSend, {
        url: env.SWITCHBOARD_WS_URL,
        token: env.BROWSER_TOKEN,
        timeoutMs: 5000,
      });
      result.reconnects = [];
      for (;;) {
        process.stderr.write('browser joined; waiting for a simulateScenario name or `leave` on stdin\n');
        const how = await input.next(45_000);
        if (how === 'leave' || how === null || how === 'timeout') break;
        result.reconnects.push(await page.evaluate(reconnectAndReport, { how, peer: env.PEER_IDENTITY, timeoutMs: 20_000 }));
      }
      result.left = await page.evaluate(disconnectRoom);
    } else if (scenario === 'camera') {
      result.published = await page.evaluate(publishCamera, {
        url: env.SWITCHBOARD_WS_URL,
        token: env.BROWSER_TOKEN,
        width: Number(env.CAMERA_WIDTH),
        height: Number(env.CAMERA_HEIGHT),
      });
      process.stderr.write(`published ${JSON.stringify(result.published)}\n`);
      result.muted = [];
      for (;;) {
        process.stderr.write('browser publishing video; `mute`, `unmute` or `leave` on stdin\n');
        const line = await input.next(60_000);
        if (line !== 'mute' && line !== 'unmute') break;
        result.muted.push(await page.evaluate(muteCamera, line === 'mute'));
      }
      result.sent = await page.evaluate(videoSenderReport);
    } else if (scenario === 'view') {
      const where = { url: env.SWITCHBOARD_WS_URL, token: env.BROWSER_TOKEN, peer: env.PEER_IDENTITY };
      result.viewed = await page.evaluate(viewWithAdaptiveStream, { ...where, timeoutMs: 15_000 });
    } else if (scenario === 'bad-token') {
      result.attempt = await page.evaluate(badConnect, { url: env.SWITCHBOARD_WS_URL, token: env.BROWSER_TOKEN });
    } else {
      throw new Error(`unknown scenario ${scenario}`);
    }
  } catch (e) {
    result.unexpectedError = String(e?.message ?? e);
    result.stack = e?.stack ?? null;
  } finally {
    result.network = network;
    result.consoleErrors = consoleErrors;
    result.totalMs = Date.now() - started;
    input?.close();
    await browser.close();
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ scenario, unexpectedError: String(e?.message ?? e), stack: e?.stack ?? null }) + '\n');
  process.exit(1);
});
