"""`/dashboard`: one page for operators — rooms, workers (drain, undrain) and every dispatch's jobs with
where they are and why — kept current by polling the API.

The page is static and ships in this module (no build step, no package data). It logs in once: the API key
and secret go to `POST /dashboard/login`, which answers with a short-lived token (roomList, and roomAdmin
with no room restriction) that the page keeps in memory only; the secret is never sent back, and the
page never stores it. Every call the page makes is an ordinary authenticated API call with that token.
"""

import hmac
import json
import logging
from collections.abc import Mapping

from aiohttp import web

from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_token

log = logging.getLogger("switchboard.api")

SESSION_TTL = 3600.0
"""How long a dashboard login lasts; the page asks to log in again after it."""
MAX_LOGIN_BODY = 4096


class Dashboard:
    def __init__(self, keys: Mapping[str, str], session_ttl: float = SESSION_TTL) -> None:
        self._keys = keys
        self._session_ttl = session_ttl

    def install(self, app: web.Application) -> None:
        app.router.add_get("/dashboard", self.page)
        app.router.add_post("/dashboard/login", self.login)

    async def page(self, _: web.Request) -> web.Response:
        return web.Response(
            text=PAGE,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                # Everything is inline and same-origin: nothing else may load or be framed.
                "Content-Security-Policy": (
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                    "connect-src 'self'; img-src data:; frame-ancestors 'none'; form-action 'none'"
                ),
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def login(self, request: web.Request) -> web.Response:
        """Exchange an API key and secret for a dashboard session token."""
        if request.content_length is None or request.content_length > MAX_LOGIN_BODY:
            return _refusal(400, "send the API key and secret as a small JSON object")
        try:
            body = json.loads(await request.read())
            api_key, api_secret = body["api_key"], body["api_secret"]
        except (ValueError, KeyError, TypeError):
            return _refusal(400, "send JSON with api_key and api_secret")
        if not isinstance(api_key, str) or not isinstance(api_secret, str):
            return _refusal(400, "api_key and api_secret must be strings")
        known = self._keys.get(api_key)
        # Compared in constant time, and a wrong key costs the same as a wrong secret.
        if not hmac.compare_digest((known or "\0").encode(), api_secret.encode()) or known is None:
            log.info("dashboard login refused peer=%s", request.remote)
            return _refusal(401, "unknown API key or wrong secret")
        video = VideoGrant(room_list=True, room_admin=True)
        token = mint_token(api_key, known, video=video, identity="dashboard", ttl=self._session_ttl)
        log.info("dashboard login peer=%s api_key=%s", request.remote, api_key)
        return web.json_response({"token": token, "expires_in": self._session_ttl})


def _refusal(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Switchboard dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #ddd; vertical-align: top; }
th { background: #f4f4f4; }
.state-pending, .state-failed, .state-none { color: #a40; } .state-running, .state-succeeded { color: #060; }
#error { color: #a00; } #login label { display: block; margin: .4em 0; }
#updated { color: #666; font-size: .9em; }
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
  <h2>Rooms</h2>
  <table><thead><tr><th>Room</th><th>Participants</th><th>Created</th></tr></thead>
  <tbody id="rooms"></tbody></table>
  <h2>Workers</h2>
  <table><thead><tr><th>Worker</th><th>Agent</th><th>Status</th><th>Load</th><th>Jobs</th><th></th></tr></thead>
  <tbody id="workers"></tbody></table>
  <h2>Dispatches and jobs</h2>
  <table><thead><tr><th>Room</th><th>Dispatch</th><th>Agent</th><th>Job</th><th>State</th><th>Why</th></tr></thead>
  <tbody id="jobs"></tbody></table>
</div>
<script>
"use strict";
const POLL_MS = Number(new URLSearchParams(location.search).get("poll_ms")) || 1000;
let token = null;  // the session token, in memory only: a reload asks to log in again
let timer = null;

async function call(path, body) {
  const response = await fetch("/twirp/" + path, {
    method: "POST",
    headers: {"Content-Type": "application/json", "Authorization": "Bearer " + token},
    body: JSON.stringify(body || {}),
  });
  const data = await response.json();
  if (!response.ok) {
    if (response.status === 401) logOut("session ended: log in again");
    throw new Error(data.msg || response.statusText);
  }
  return data;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;  // never HTML: names come from users
  if (className) td.className = className;
  return td;
}

function fill(tbodyId, items, render) {
  const tbody = document.getElementById(tbodyId);
  tbody.replaceChildren();
  for (const item of items) render(tbody.insertRow(), item);
}

function when(seconds) {
  return seconds ? new Date(Number(seconds) * 1000).toLocaleString() : "-";
}

async function steer(method, workerId) {
  try {
    await call("switchboard.WorkerService/" + method, {worker_id: workerId});
    await refresh();
  } catch (error) {
    show(error.message);
  }
}

function show(message) {
  document.getElementById("error").textContent = message;
}

async function refresh() {
  const [rooms, workers] = await Promise.all([
    call("livekit.RoomService/ListRooms"),
    call("switchboard.WorkerService/ListWorkers"),
  ]);
  const explained = await Promise.all(rooms.rooms.map(
    (room) => call("switchboard.DispatchService/ExplainDispatch", {room: room.name}).catch(() => ({jobs: []}))
  ));
  fill("rooms", rooms.rooms, (row, room) => {
    row.dataset.room = room.name;
    cell(row, room.name); cell(row, String(room.num_participants)); cell(row, when(room.creation_time));
  });
  fill("workers", workers.workers, (row, worker) => {
    row.dataset.worker = worker.id;
    const status = worker.status.replace("WS_", "").toLowerCase();
    cell(row, worker.id); cell(row, worker.agent_name || "(automatic)");
    cell(row, worker.draining ? "draining (" + status + ")" : status, "status");
    cell(row, worker.load.toFixed(2));
    cell(row, worker.jobs.map((job) => job.room + ": " + job.state).join(", ") || "-");
    const button = document.createElement("button");
    button.textContent = worker.draining ? "Undrain" : "Drain";
    button.className = "steer";
    button.onclick = () => steer(worker.draining ? "UndrainWorker" : "DrainWorker", worker.id);
    row.insertCell().append(button);
  });
  const jobs = explained.flatMap((answer, i) => answer.jobs.map((job) => ({room: rooms.rooms[i].name, job})));
  fill("jobs", jobs, (row, {room, job}) => {
    row.dataset.job = job.job_id;
    row.dataset.agent = job.agent_name;
    cell(row, room); cell(row, job.dispatch_id); cell(row, job.agent_name || "(automatic)");
    cell(row, job.job_id || "-"); cell(row, job.state, "state-" + job.state);
    cell(row, job.summary, "why");
  });
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  show("");
}

async function poll() {
  try {
    await refresh();
  } catch (error) {
    show(error.message);
  }
  if (token) timer = setTimeout(poll, POLL_MS);
}

function logOut(message) {
  token = null;
  clearTimeout(timer);
  document.getElementById("board").hidden = true;
  document.getElementById("login").hidden = false;
  show(message);
}

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
  setTimeout(() => logOut("session ended: log in again"), data.expires_in * 1000);
  document.getElementById("login").hidden = true;
  document.getElementById("board").hidden = false;
  poll();
});
</script>
</body></html>
"""
