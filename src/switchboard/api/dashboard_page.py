"""The dashboard's one page (HTML, CSS and script inline): shipped as a Python string, so it is in the
wheel without package data and needs no build step. Names shown come from users: always set as text."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Switchboard dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #ddd; vertical-align: top; }
th { background: #f4f4f4; }
ul.participants, ol.timeline { margin: 0; padding-left: 1.2em; } ol.timeline { color: #444; }
li.speaking { font-weight: bold; color: #060; }
.state-pending, .state-failed, .state-none { color: #a40; } .state-running, .state-succeeded { color: #060; }
#error { color: #a00; } #login label { display: block; margin: .4em 0; }
#updated { color: #666; font-size: .9em; }
form.inline { display: inline; } form.inline input { width: 12em; }
#charts { display: flex; gap: 2em; flex-wrap: wrap; } #charts figure { margin: 0; }
#charts rect { fill: #4a7; } #charts rect.failures { fill: #c54; } #charts figcaption { color: #444; }
</style></head>
<body>
<h1>Switchboard</h1>
<form id="login">
  <label>API key <input id="api-key" autocomplete="username" required></label>
  <label>API secret <input id="api-secret" type="password" autocomplete="current-password" required></label>
  <button id="login-button" type="submit">Log in</button>
</form>
<p id="error"></p>
<div id="board" hidden>
  <p id="updated"></p>
  <h2>Last hour</h2>
  <div id="charts"></div>
  <h2>Nodes</h2>
  <table><thead><tr><th>Node</th><th>Address</th><th>State</th><th>Rooms</th><th>Participants</th><th>Workers</th>
  <th>CPU load</th></tr></thead>
  <tbody id="nodes"></tbody></table>
  <h2>Rooms</h2>
  <table><thead><tr><th>Room</th><th>Participants and tracks</th><th>Created</th><th></th></tr></thead>
  <tbody id="rooms"></tbody></table>
  <h2>Workers</h2>
  <table><thead><tr><th>Worker</th><th>Node</th><th>Agent</th><th>Status</th><th>Load</th><th>Jobs</th><th></th></tr></thead>
  <tbody id="workers"></tbody></table>
  <h2>Dispatches and jobs</h2>
  <form id="dispatch" class="inline">
    <input id="dispatch-room" placeholder="room" required>
    <input id="dispatch-agent" placeholder="agent name" required>
    <button type="submit">Dispatch</button>
  </form>
  <table><thead><tr><th>Room</th><th>Dispatch</th><th>Agent</th><th>Job</th><th>State</th><th>Why</th><th>Timeline</th><th></th>
  </tr></thead>
  <tbody id="jobs"></tbody></table>
</div>
<script>
"use strict";
const options = new URLSearchParams(location.search);
// Worker loads change without an engine event: they are read again this often besides the live events.
const WORKERS_MS = Number(options.get("workers_ms")) || 10000;
const RECONNECT_MS = 1000;
let token = null;  // the session token, in memory only: a reload asks to log in again
let nodeId = "";  // the node serving this page (ListNodes lists the others too, with a cluster)
let stream = null;  // aborts the event stream at log out
let timers = [];
const roomTokens = new Map();  // room -> {token, expires}: LiveKit's per-room calls need the room's name
// Event-to-screen latency, in ms, of the first event of each kind and room ("room_started:demo").
window.eventToScreen = {};

async function post(path, body, bearer) {
  return send(path, bearer, {
    method: "POST",
    headers: {"Content-Type": "application/json", "Authorization": "Bearer " + bearer},
    body: JSON.stringify(body || {}),
  });
}

async function send(path, bearer, init) {
  const response = await fetch(path, init);
  const data = await response.json();
  if (!response.ok) {
    if (response.status === 401 && bearer === token) logOut("session ended: log in again");
    throw new Error(data.msg || data.error || response.statusText);
  }
  return data;
}

function call(method, body) {
  return post("/twirp/" + method, body, token);
}

// A worker's call on another node: its drain, and the jobs of that node's rooms, are that node's.
function nodeCall(node, method, body) {
  return post("/dashboard/node/" + encodeURIComponent(node) + "/twirp/switchboard.WorkerService/" + method,
    body, token);
}

// Every node lists every worker of the cluster, each with the jobs of that node's rooms: a worker's jobs
// are all of them, and whether it is drained is what its own node says.
function mergeWorkers(lists, listedBy) {
  const merged = new Map();
  lists.forEach((workers, i) => {
    for (const worker of workers) {
      const seen = merged.get(worker.id);
      const jobs = [...(seen ? seen.jobs : []), ...(worker.jobs || [])];
      const own = !seen || worker.node_id === listedBy[i];
      merged.set(worker.id, Object.assign({}, own ? worker : seen, {jobs}));
    }
  });
  return [...merged.values()];
}

async function readNodesAndWorkers() {
  const nodes = (await call("switchboard.NodeService/ListNodes")).nodes || [];
  const others = nodes.filter((node) => node.id !== nodeId).map((node) => node.id);
  const lists = await Promise.all([
    call("switchboard.WorkerService/ListWorkers"),
    ...others.map((node) => nodeCall(node, "ListWorkers", {}).catch(() => ({workers: []}))),
  ]);
  return {nodes, workers: mergeWorkers(lists.map((list) => list.workers || []), [nodeId, ...others])};
}

async function roomCall(room, method, body) {
  let entry = roomTokens.get(room);
  if (!entry || entry.expires < Date.now() + 10000) {
    const answer = await post("/dashboard/room-token", {room}, token);
    entry = {token: answer.token, expires: Date.now() + answer.expires_in * 1000};
    roomTokens.set(room, entry);
  }
  return post("/twirp/" + method, Object.assign({room}, body), entry.token);
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;  // never HTML: names come from users
  if (className) td.className = className;
  return td;
}

function button(parent, label, className, action) {
  const element = document.createElement("button");
  element.textContent = label;
  element.className = className;
  element.onclick = () => act(action);
  parent.append(element);
}

function fill(tbodyId, items, render) {
  const tbody = document.getElementById(tbodyId);
  tbody.replaceChildren();
  for (const item of items) render(tbody.insertRow(), item);
}

function when(seconds) {
  return seconds ? new Date(Number(seconds) * 1000).toLocaleString() : "-";
}

async function act(action) {
  try {
    await action();
    await refresh();
  } catch (error) {
    show(error.message);
  }
}

function show(message) {
  document.getElementById("error").textContent = message;
}

function trackText(track) {
  const kind = (track.type || "AUDIO").toLowerCase() + (track.muted ? " (muted)" : "");
  return kind + " " + (track.name || track.sid);
}

const SVG = "http://www.w3.org/2000/svg";

// One bar per minute, oldest on the left, scaled to the hour's peak; the caption gives total and peak.
function chart(name, minutes, value, caption) {
  const width = 4, height = 50, peak = Math.max(...minutes.map(value), 0);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("width", String(width * minutes.length));
  svg.setAttribute("height", String(height));
  minutes.forEach((minute, i) => {
    const bar = document.createElementNS(SVG, "rect");
    const size = peak ? Math.max(1, Math.round(height * value(minute) / peak)) : 0;
    bar.setAttribute("x", String(i * width));
    bar.setAttribute("y", String(height - size));
    bar.setAttribute("width", String(width - 1));
    bar.setAttribute("height", String(size));
    bar.setAttribute("class", name);
    const title = document.createElementNS(SVG, "title");
    title.textContent = new Date(minute.start * 1000).toLocaleTimeString() + ": " + value(minute).toFixed(2);
    bar.append(title);
    svg.append(bar);
  });
  const figure = document.createElement("figure");
  figure.id = "chart-" + name;
  const label = document.createElement("figcaption");
  label.textContent = caption(peak);
  figure.append(svg, label);
  return figure;
}

function renderCharts(minutes) {
  const sum = (key) => minutes.reduce((total, minute) => total + minute[key], 0);
  const charts = document.getElementById("charts");
  charts.dataset.dispatches = String(sum("dispatches"));
  charts.dataset.failures = String(sum("failures"));
  charts.replaceChildren(
    chart("dispatches", minutes, (m) => m.dispatches,
      (peak) => "dispatches: " + sum("dispatches") + " (peak " + peak + "/min)"),
    chart("waits", minutes, (m) => m.wait_avg,
      (peak) => "wait to running, average per minute: peak " + peak.toFixed(2) + " s, longest " +
        Math.max(...minutes.map((m) => m.wait_max)).toFixed(2) + " s"),
    chart("failures", minutes, (m) => m.failures,
      (peak) => "failed jobs: " + sum("failures") + " (peak " + peak + "/min)"),
  );
}

function renderParticipants(td, room, participants, speaking) {
  const list = document.createElement("ul");
  list.className = "participants";
  for (const participant of participants) {
    const item = document.createElement("li");
    item.dataset.identity = participant.identity;
    if (participant.sid in speaking) item.className = "speaking";
    const tracks = (participant.tracks || []).map(trackText).join(", ");
    item.append(participant.identity + (participant.kind === "AGENT" ? " (agent)" : "") +
      (tracks ? ": " + tracks : "") + (participant.sid in speaking ? " — speaking" : "") + " ");
    button(item, "Remove", "remove", () =>
      roomCall(room, "livekit.RoomService/RemoveParticipant", {identity: participant.identity}));
    list.append(item);
  }
  td.append(list);
}

// What was last read of each room (explanation, timelines and speakers, participants): an event that
// names a room has only that room read again, so a reading costs the same with 1 or 100 rooms.
const roomReadings = new Map();

async function readRoom(room, authorized) {
  const [explained, detail, participants] = await Promise.all([
    call("switchboard.DispatchService/ExplainDispatch", {room}).catch(() => ({jobs: []})),
    send("/dashboard/room?room=" + encodeURIComponent(room), token, authorized)
      .catch(() => ({jobs: [], speaking: {}})),
    roomCall(room, "livekit.RoomService/ListParticipants").catch(() => ({participants: []})),
  ]);
  return {explained, detail, participants: participants.participants || []};
}

// `rooms`: the names of the rooms to read again (besides those never read), or null for all of them.
async function refresh(rooms = null) {
  const authorized = {headers: {"Authorization": "Bearer " + token}};
  const [listed, {nodes, workers}, activity] = await Promise.all([
    call("livekit.RoomService/ListRooms"),
    readNodesAndWorkers(),
    send("/dashboard/activity", token, authorized),
  ]);
  renderCharts(activity.minutes);
  const names = listed.rooms.map((room) => room.name);
  for (const room of roomReadings.keys()) if (!names.includes(room)) roomReadings.delete(room);
  const stale = names.filter((room) => rooms === null || rooms.has(room) || !roomReadings.has(room));
  const read = await Promise.all(stale.map((room) => readRoom(room, authorized)));
  stale.forEach((room, i) => roomReadings.set(room, read[i]));
  const readings = names.map((room) => roomReadings.get(room));
  const timeline = new Map(
    readings.flatMap(({detail}) => detail.jobs.map((job) => [job.job_id, job.events])));
  fill("rooms", listed.rooms, (row, room) => {
    row.dataset.room = room.name;
    cell(row, room.name);
    const {participants, detail} = roomReadings.get(room.name);
    renderParticipants(row.insertCell(), room.name, participants, detail.speaking);
    cell(row, when(room.creation_time));
    button(row.insertCell(), "Close", "close", () => roomCall(room.name, "livekit.RoomService/DeleteRoom"));
  });
  fill("nodes", nodes, (row, node) => {
    row.dataset.node = node.id;
    cell(row, node.id + (node.id === nodeId ? " (this page)" : ""));
    cell(row, node.address); cell(row, node.state, "state");
    cell(row, String(node.rooms || 0), "rooms"); cell(row, String(node.participants || 0), "participants");
    cell(row, String(node.workers || 0), "workers");
    cell(row, ((node.cpu_load || 0) * 100).toFixed(0) + " %");
  });
  fill("workers", workers, (row, worker) => {
    row.dataset.worker = worker.id;
    const status = worker.status.replace("WS_", "").toLowerCase();
    cell(row, worker.id); cell(row, worker.node_id, "node"); cell(row, worker.agent_name || "(automatic)");
    cell(row, worker.draining ? "draining (" + status + ")" : status, "status");
    cell(row, worker.load.toFixed(2));
    cell(row, worker.jobs.map((job) => job.room + ": " + job.state).join(", ") || "-", "jobs");
    const method = worker.draining ? "UndrainWorker" : "DrainWorker";
    button(row.insertCell(), worker.draining ? "Undrain" : "Drain", "steer", () => worker.node_id === nodeId
      ? call("switchboard.WorkerService/" + method, {worker_id: worker.id})
      : nodeCall(worker.node_id, method, {worker_id: worker.id}));
  });
  const jobs = readings.flatMap(({explained}, i) => explained.jobs.map((job) => ({room: names[i], job})));
  fill("jobs", jobs, (row, {room, job}) => {
    row.dataset.job = job.job_id;
    row.dataset.dispatch = job.dispatch_id;
    row.dataset.agent = job.agent_name;
    cell(row, room); cell(row, job.dispatch_id); cell(row, job.agent_name || "(automatic)");
    cell(row, job.job_id || "-"); cell(row, job.state, "state-" + job.state);
    cell(row, job.summary, "why");
    const steps = document.createElement("ol");
    steps.className = "timeline";
    for (const step of timeline.get(job.job_id) || []) {
      const item = document.createElement("li");
      item.textContent = new Date(step.at * 1000).toLocaleTimeString() + " " + step.what;
      steps.append(item);
    }
    row.insertCell().append(steps);
    button(row.insertCell(), "Delete dispatch", "delete",
      () => roomCall(room, "livekit.AgentDispatchService/DeleteDispatch", {dispatch_id: job.dispatch_id}));
  });
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  show("");
}

// Events only say that something changed: the page reads the state again, once for all the events that
// arrived while it was reading.
let reading = false;
let arrived = [];
async function changed(event) {
  arrived.push(event);
  if (reading) return;
  reading = true;
  while (arrived.length) {
    const events = arrived;
    arrived = [];
    // A new stream may have missed events: everything is read again then.
    const rooms = events.some((e) => e.kind === "connected") ? null : new Set(events.map((e) => e.room));
    try {
      await refresh(rooms);
    } catch (error) {
      show(error.message);
    }
    const shown = Date.now();
    for (const e of events) {
      const key = e.kind + ":" + e.room;
      if (!(key in window.eventToScreen)) window.eventToScreen[key] = shown - e.at * 1000;
    }
  }
  reading = false;
}

async function listen(signal) {
  const response = await fetch("/dashboard/events", {headers: {"Authorization": "Bearer " + token}, signal});
  if (response.status === 401) {
    logOut("session ended: log in again");
    return;
  }
  if (!response.ok) throw new Error((await response.json()).error);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\\n\\n")) >= 0) {
      const data = buffer.slice(0, end).split("\\n").filter((line) => line.startsWith("data: "));
      buffer = buffer.slice(end + 2);
      if (data.length) changed(JSON.parse(data.map((line) => line.slice(6)).join("\\n")));
    }
  }
}

async function stayLive() {
  const controller = stream = new AbortController();
  while (token && !controller.signal.aborted) {
    try {
      await listen(controller.signal);
    } catch (error) {
      if (controller.signal.aborted) return;
      show("live updates interrupted: " + error.message);
    }
    await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
  }
}

function logOut(message) {
  token = null;
  roomTokens.clear();
  if (stream) stream.abort();
  timers.forEach(clearTimeout);
  timers = [];
  document.getElementById("board").hidden = true;
  document.getElementById("login").hidden = false;
  show(message);
}

document.getElementById("dispatch").addEventListener("submit", (event) => {
  event.preventDefault();
  const room = document.getElementById("dispatch-room").value;
  const agent = document.getElementById("dispatch-agent").value;
  act(() => roomCall(room, "livekit.AgentDispatchService/CreateDispatch", {agent_name: agent}));
});

document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const secret = document.getElementById("api-secret");
  const response = await fetch("/dashboard/login", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({api_key: document.getElementById("api-key").value, api_secret: secret.value}),
  });
  secret.value = "";  // not kept on the page
  const data = await response.json();
  if (!response.ok) {
    show(data.error);
    return;
  }
  token = data.token;
  nodeId = data.node_id;
  timers.push(setTimeout(() => logOut("session ended: log in again"), data.expires_in * 1000));
  timers.push(setInterval(() => changed({kind: "workers", room: "", at: Date.now() / 1000}), WORKERS_MS));
  document.getElementById("login").hidden = true;
  document.getElementById("board").hidden = false;
  stayLive();
});
</script>
</body></html>
"""
