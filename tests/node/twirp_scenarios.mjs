// Drives a running Switchboard server with the official, unmodified `livekit-server-sdk` Twirp clients.
//
// Usage: node twirp_scenarios.mjs <scenario>
// Environment: SWITCHBOARD_URL (http://127.0.0.1:PORT), LIVEKIT_API_KEY, LIVEKIT_API_SECRET.
//
// Each scenario prints ONE JSON object on stdout describing what the SDK observed: return values as
// protobuf-es JSON with defaults emitted (camelCase, int64 as strings, enums by name), and errors as
// {name, message, status, code, metadata}. The exit code is 0 unless the script itself breaks; whether
// the observations are right is for the Python tests to judge.

import {
  AgentDispatchClient,
  DataPacket_Kind,
  RoomAgentDispatch,
  RoomServiceClient,
  ServerError,
} from 'livekit-server-sdk';

const url = process.env.SWITCHBOARD_URL;
const apiKey = process.env.LIVEKIT_API_KEY;
const apiSecret = process.env.LIVEKIT_API_SECRET;

const json = (message) => (message === undefined ? null : message.toJson({ emitDefaultValues: true }));

function describeError(e) {
  return {
    name: e?.name ?? null,
    message: e?.message ?? String(e),
    status: e?.status ?? null,
    code: e?.code ?? null,
    metadata: e?.metadata ?? null,
    isServerError: e instanceof ServerError,
  };
}

/** Runs `fn`; returns {ok: true, value} or {ok: false, error} without letting an SDK error escape. */
async function attempt(fn) {
  const started = performance.now();
  try {
    const value = await fn();
    return { ok: true, value, elapsedMs: performance.now() - started };
  } catch (e) {
    return { ok: false, error: describeError(e), elapsedMs: performance.now() - started };
  }
}

const uniqueRoom = (scenario) => `${scenario}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;

const dispatchClient = () => new AgentDispatchClient(url, apiKey, apiSecret);
const roomClient = () => new RoomServiceClient(url, apiKey, apiSecret);

const scenarios = {
  /**
   * The methods that act on connected participants, in SCENARIO_ROOM where SCENARIO_IDENTITY publishes
   * SCENARIO_TRACK and SCENARIO_LISTENER listens: list, get, update, mute, send data to the listener only,
   * get someone who is not there, and remove SCENARIO_IDENTITY.
   */
  async 'live-participants'() {
    const { SCENARIO_ROOM: room, SCENARIO_IDENTITY: identity, SCENARIO_TRACK: track } = process.env;
    const rooms = roomClient();
    const listed = (await rooms.listParticipants(room)).map(json);
    const got = json(await rooms.getParticipant(room, identity));
    const update = { name: 'Renamed', metadata: 'by-node', attributes: { role: 'host' } };
    const updated = json(await rooms.updateParticipant(room, identity, update));
    const muted = json(await rooms.mutePublishedTrack(room, identity, track, true));
    const data = new TextEncoder().encode('from node');
    const options = { destinationIdentities: [process.env.SCENARIO_LISTENER], topic: 'node' };
    await rooms.sendData(room, data, DataPacket_Kind.RELIABLE, options);
    const missing = await attempt(() => rooms.getParticipant(room, 'nobody'));
    await rooms.removeParticipant(room, identity);
    const listedAfter = (await rooms.listParticipants(room)).map(json);
    return { listed, got, updated, muted, missing, listedAfter };
  },

  /** moveParticipant SCENARIO_IDENTITY from SCENARIO_ROOM to SCENARIO_DESTINATION. */
  async 'move-participant'() {
    const env = process.env;
    const result = await attempt(() =>
      roomClient().moveParticipant(env.SCENARIO_ROOM, env.SCENARIO_IDENTITY, env.SCENARIO_DESTINATION),
    );
    return { result: { ...result, value: result.value ?? null } };
  },

  /** forwardParticipant SCENARIO_IDENTITY from SCENARIO_ROOM to SCENARIO_DESTINATION. */
  async 'forward-participant'() {
    const env = process.env;
    const result = await attempt(() =>
      roomClient().forwardParticipant(env.SCENARIO_ROOM, env.SCENARIO_IDENTITY, env.SCENARIO_DESTINATION),
    );
    return { result: { ...result, value: result.value ?? null } };
  },

  /**
   * updateSubscriptions for SCENARIO_ROOM / SCENARIO_IDENTITY / SCENARIO_TRACK (SCENARIO_SUBSCRIBE "1" or
   * "0"), then the same for an identity that is not in the room.
   */
  async 'update-subscriptions'() {
    const env = process.env;
    const subscribe = env.SCENARIO_SUBSCRIBE === '1';
    const rooms = roomClient();
    const result = await attempt(() =>
      rooms.updateSubscriptions(env.SCENARIO_ROOM, env.SCENARIO_IDENTITY, [env.SCENARIO_TRACK], subscribe),
    );
    const missing = await attempt(() =>
      rooms.updateSubscriptions(env.SCENARIO_ROOM, 'nobody', [env.SCENARIO_TRACK], subscribe),
    );
    return { result: { ...result, value: result.value ?? null }, missing };
  },

  /** createDispatch for SCENARIO_ROOM / SCENARIO_AGENT / SCENARIO_METADATA, as an application would. */
  async 'create-dispatch'() {
    const env = process.env;
    const created = await dispatchClient().createDispatch(env.SCENARIO_ROOM, env.SCENARIO_AGENT, {
      metadata: env.SCENARIO_METADATA ?? '',
    });
    return { created: json(created) };
  },

  /** createDispatch → listDispatch → getDispatch → deleteDispatch → listDispatch → getDispatch. */
  async 'dispatch-lifecycle'() {
    const room = uniqueRoom('dispatch-lifecycle');
    const agents = dispatchClient();
    const rooms = roomClient();
    const created = await agents.createDispatch(room, 'agent-x', { metadata: 'm1' });
    const listed = await agents.listDispatch(room);
    const got = await agents.getDispatch(created.id, room);
    const roomsAfterCreate = await rooms.listRooms([room]);
    const deleted = await agents.deleteDispatch(created.id, room);
    const listedAfterDelete = await agents.listDispatch(room);
    const gotAfterDelete = await agents.getDispatch(created.id, room);
    return {
      room,
      created: json(created),
      listed: listed.map(json),
      got: json(got),
      roomsAfterCreate: roomsAfterCreate.map(json),
      deleteReturned: deleted === undefined ? null : deleted,
      listedAfterDelete: listedAfterDelete.map(json),
      gotAfterDeleteIsUndefined: gotAfterDelete === undefined,
    };
  },

  /** createRoom with agents → list/update/participants/dispatches → deleteRoom → listRooms. */
  async 'room-lifecycle'() {
    const name = uniqueRoom('room-lifecycle');
    const rooms = roomClient();
    const agents = dispatchClient();
    const created = await rooms.createRoom({
      name,
      emptyTimeout: 10,
      departureTimeout: 5,
      maxParticipants: 5,
      metadata: 'rm',
      agents: [new RoomAgentDispatch({ agentName: 'a1', metadata: 'am' })],
    });
    const listedAll = await rooms.listRooms();
    const listedByName = await rooms.listRooms([name]);
    const updated = await rooms.updateRoomMetadata(name, 'new');
    const listedAfterUpdate = await rooms.listRooms([name]);
    const participants = await rooms.listParticipants(name);
    const dispatches = await agents.listDispatch(name);
    const deleted = await rooms.deleteRoom(name);
    const listedAfterDelete = await rooms.listRooms([name]);
    const dispatchesAfterDelete = await agents.listDispatch(name);
    return {
      room: name,
      created: json(created),
      listedAllNames: listedAll.map((r) => r.name),
      listedByName: listedByName.map(json),
      updated: json(updated),
      listedAfterUpdate: listedAfterUpdate.map(json),
      participants: participants.map(json),
      dispatches: dispatches.map(json),
      deleteReturned: deleted === undefined ? null : deleted,
      listedAfterDelete: listedAfterDelete.map(json),
      dispatchesAfterDelete: dispatchesAfterDelete.map(json),
    };
  },

  /** deleteDispatch with an id that does not exist, in a room that does. */
  async 'error-delete-unknown-dispatch'() {
    const room = uniqueRoom('error-delete-unknown-dispatch');
    const agents = dispatchClient();
    const existing = await agents.createDispatch(room, 'agent-y');
    const result = await attempt(() => agents.deleteDispatch('AD_doesnotexist', room));
    const listedAfter = await agents.listDispatch(room);
    return { room, existingId: existing.id, result, listedAfterIds: listedAfter.map((d) => d.id) };
  },

  /** deleteRoom for a room that does not exist. */
  async 'error-delete-unknown-room'() {
    const room = `no-such-room-${Date.now()}`;
    return { room, result: await attempt(() => roomClient().deleteRoom(room)) };
  },

  /** createDispatch with 600 KiB of metadata (the limit is 512 KiB). */
  async 'error-metadata-too-large'() {
    const room = uniqueRoom('error-metadata-too-large');
    const agents = dispatchClient();
    const result = await attempt(() => agents.createDispatch(room, 'agent-z', { metadata: 'x'.repeat(600 * 1024) }));
    const listedAfter = await agents.listDispatch(room);
    return { room, result, listedAfter: listedAfter.map(json) };
  },

  /** A client whose API secret is wrong: the server must refuse to authenticate it. */
  async 'error-wrong-secret'() {
    const room = uniqueRoom('error-wrong-secret');
    const wrongSecret = `${apiSecret}-but-wrong`;
    const agents = new AgentDispatchClient(url, apiKey, wrongSecret);
    const rooms = new RoomServiceClient(url, apiKey, wrongSecret);
    return {
      room,
      createDispatch: await attempt(() => agents.createDispatch(room, 'agent-w')),
      listRooms: await attempt(() => rooms.listRooms()),
      // Nothing may have been created by the refused call.
      roomsAfter: (await roomClient().listRooms([room])).map(json),
    };
  },

  /** listDispatch for a room that was never created: an empty list, answered at once. */
  async 'list-dispatch-missing-room'() {
    const room = uniqueRoom('list-dispatch-missing-room');
    const result = await attempt(() => dispatchClient().listDispatch(room));
    if (result.ok) result.value = result.value.map(json);
    const getResult = await attempt(() => dispatchClient().getDispatch('AD_doesnotexist', room));
    if (getResult.ok) getResult.value = getResult.value === undefined ? null : json(getResult.value);
    // Listing must not have created the room.
    const roomsAfter = (await roomClient().listRooms([room])).map(json);
    return { room, result, getResult, roomsAfter };
  },
};

async function main() {
  const name = process.argv[2];
  const scenario = scenarios[name];
  if (!scenario) {
    console.error(`unknown scenario ${JSON.stringify(name)}; known: ${Object.keys(scenarios).join(', ')}`);
    process.exit(2);
  }
  for (const [key, value] of Object.entries({ SWITCHBOARD_URL: url, LIVEKIT_API_KEY: apiKey, LIVEKIT_API_SECRET: apiSecret })) {
    if (!value) {
      console.error(`environment variable ${key} is not set`);
      process.exit(2);
    }
  }
  const observed = await scenario();
  process.stdout.write(`${JSON.stringify({ scenario: name, ...observed })}\n`);
}

main().catch((e) => {
  // An SDK error a scenario did not expect: report it as an observation so the test shows what happened.
  process.stdout.write(`${JSON.stringify({ scenario: process.argv[2], unexpectedError: describeError(e), stack: e?.stack ?? null })}\n`);
});
