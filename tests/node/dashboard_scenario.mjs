// The dashboard (/dashboard) in headless Debian Chromium or firefox-esr (dashboard_browsers.mjs). Run by
// tests/integration/test_dashboard.py:
//
//   node dashboard_scenario.mjs dashboard    (the whole scenario below)
//   node dashboard_scenario.mjs many-rooms   (log in, then only the latency of ROOM appearing)
//   node dashboard_scenario.mjs cluster      (a page served by one of NODES nodes: the nodes listed, ROOM of
//                                             another node with AGENT from WORKER_ID, its dispatch deleted)
//
// Environment: DASHBOARD_URL, API_KEY, API_SECRET, ROOM (created by the test after the login),
// AGENT (the agent that runs there), FAILED_AGENT (an agent nobody serves, whose job fails),
// WORKER_ID (the worker to drain from the page), SCREENSHOT (where to save the page), BROWSER (chromium
// or firefox) and BROWSER_EXECUTABLE.
// SPEAKER: a participant the test has publishing a tone in ROOM, removed from the page once shown speaking.
// It drains the worker and undrains it, creates a dispatch of FORM_AGENT (nobody serves it) with the page's
// form, then deletes the running agent's dispatch and closes the room from the page.
// Prints "shown" once the page shows its first state after logging in, then exactly one JSON line of
// observations on stdout; diagnostics go to stderr.

import { openPage } from './dashboard_browsers.mjs';

const env = process.env;
const STEP_TIMEOUT_MS = 20_000;

// Predicates run in the page (both browsers' own DOM, so both are asked the same questions).
const present = (selector) => document.querySelector(selector) !== null;
const absent = (selector) => document.querySelector(selector) === null;
const agentListed = (selector) => [...document.querySelectorAll(`${selector} li`)].some((li) => li.textContent.includes('(agent)'));
const agentGone = (selector) => ![...document.querySelectorAll(`${selector} li`)].some((li) => li.textContent.includes('(agent)'));
const shownText = (selector) => document.querySelector(selector)?.innerText ?? null;
const charted = () => ({
  dispatches: Number(document.getElementById('charts').dataset.dispatches),
  failures: Number(document.getElementById('charts').dataset.failures),
  bars: document.querySelectorAll('#chart-dispatches rect').length,
});

const result = { scenario: process.argv[2] };
const page = await openPage(env.BROWSER, env.BROWSER_EXECUTABLE, STEP_TIMEOUT_MS);
// Delete the dispatch of a jobs row with its button; once its row and the agent in the room's row are
// gone, its id.
async function deleteDispatch(agentRow, room) {
  const dispatch = await page.evaluate((selector) => document.querySelector(selector).dataset.dispatch, agentRow);
  await page.click(`${agentRow} button.delete`);
  await page.until(absent, `#jobs tr[data-dispatch="${dispatch}"]`);
  await page.until(agentGone, room);
  return dispatch;
}

try {
  await page.goto(env.DASHBOARD_URL);
  // What is on screen may come from a reading started before the event arrived: the page records the
  // event's latency when the reading after it is shown.
  const latency = (key) => (key in window.eventToScreen ? [window.eventToScreen[key]] : null);
  const shownAfter = async (key) => (await page.until(latency, key))[0];

  await page.fill('#api-key', env.API_KEY);
  await page.fill('#api-secret', 'not-the-secret');
  await page.click('#login-button');
  result.refused = await page.until(() => document.getElementById('error').textContent);

  await page.fill('#api-secret', env.API_SECRET);
  await page.click('#login-button');
  await page.until(() => document.getElementById('updated').textContent !== '');
  const room = `tr[data-room="${env.ROOM}"]`;
  result.roomShownAtLogin = await page.evaluate(present, room);
  result.chartedAtLogin = await page.evaluate(charted);
  console.log('shown');

  // The test creates the room and its dispatches now: they appear without a reload.
  // Live: the room appears through the event stream (the page's own clock, minus the event's).
  await page.until(present, room);
  if (result.scenario === 'many-rooms') {
    // The test keeps other rooms live: how long the room takes to show among them.
    result.latencyMs = { roomStarted: await shownAfter(`room_started:${env.ROOM}`) };
    result.roomsShown = await page.evaluate(() => document.querySelectorAll('#rooms > tr').length);
  } else if (result.scenario === 'cluster') {
    await page.until((count) => document.querySelectorAll('#nodes > tr').length === count, Number(env.NODES));
    result.nodes = await page.evaluate(() => [...document.querySelectorAll('#nodes > tr')].map((row) => ({
      id: row.dataset.node, label: row.cells[0].textContent, address: row.cells[1].textContent,
      state: row.cells[2].textContent,
    })));
    // ROOM's events come from its node, through the stream of the page's node.
    await page.until(agentListed, room);
    result.latencyMs = { agentJoined: await shownAfter(`participant_joined:${env.ROOM}`) };
    const agentRow = `#jobs tr[data-agent="${env.AGENT}"]`;
    await page.until(present, `${agentRow} .state-running`);
    result.agentJob = await page.evaluate(shownText, `${agentRow} .why`);
    const worker = `tr[data-worker="${env.WORKER_ID}"]`;
    await page.until(
      (selector) => document.querySelector(`${selector} .jobs`)?.textContent.endsWith(': running'),
      worker,
    );
    result.dispatchesCharted = await page.evaluate(() => Number(document.getElementById('charts').dataset.dispatches));
    result.workerNode = await page.evaluate(shownText, `${worker} .node`);
    result.workerJobs = await page.evaluate(shownText, `${worker} .jobs`);
    await page.screenshot(env.SCREENSHOT);
    result.deletedDispatch = await deleteDispatch(agentRow, room);
    result.errorShown = await page.evaluate(() => document.getElementById('error').textContent);
  } else {
    // The agent's participant in the room's list, whether it is shown: true with its identity, false without.
    const agentParticipant = (selector) => {
      const item = [...document.querySelectorAll(`${selector} li`)].find((li) => li.textContent.includes('(agent)'));
      return item && { identified: item.dataset.identity !== undefined };
    };
    result.agentParticipant = (await page.until(agentParticipant, room)).identified;
    result.latencyMs = {
      roomStarted: await shownAfter(`room_started:${env.ROOM}`),
      agentJoined: await shownAfter(`participant_joined:${env.ROOM}`),
    };
    const agentRow = `#jobs tr[data-agent="${env.AGENT}"]`;
    await page.until(present, `${agentRow} .state-running`);
    result.agentJob = await page.evaluate(shownText, `${agentRow} .why`);
    const failedRow = `#jobs tr[data-agent="${env.FAILED_AGENT}"]`;
    await page.until(present, `${failedRow} .state-failed`);
    result.failedReason = await page.evaluate(shownText, `${failedRow} .why`);
    // Each step's text without its (local) time of day.
    const steps = (row) => page.evaluate(
      (selector) => [...document.querySelectorAll(`${selector} ol.timeline li`)].map(
        (item) => item.textContent.replace(/^\S+( [AP]M)? /, ''),
      ),
      row,
    );
    result.agentTimeline = await steps(agentRow);
    result.failedTimeline = await steps(failedRow);
    const speaker = `${room} li.speaking[data-identity="${env.SPEAKER}"]`;
    await page.until(present, speaker);
    result.latencyMs.speakerShown = await shownAfter(`speakers_changed:${env.ROOM}`);
    await page.click(`${speaker} button.remove`);
    await page.until(absent, `${room} li[data-identity="${env.SPEAKER}"]`);

    result.charted = await page.evaluate(charted);

    const worker = `tr[data-worker="${env.WORKER_ID}"]`;
    await page.click(`${worker} button.steer`);
    result.workerStatus = await page.until((selector) => {
      const status = document.querySelector(selector)?.innerText ?? '';
      return status.startsWith('draining') && status;
    }, `${worker} .status`);
    await page.screenshot(env.SCREENSHOT);
    // The same button now undrains it.
    await page.click(`${worker} button.steer`);
    result.workerStatusUndrained = await page.until((selector) => {
      const status = document.querySelector(selector)?.innerText ?? '';
      return status !== '' && !status.startsWith('draining') && status;
    }, `${worker} .status`);

    // A dispatch created with the page's form appears among the jobs.
    await page.fill('#dispatch-room', env.ROOM);
    await page.fill('#dispatch-agent', env.FORM_AGENT);
    await page.click('#dispatch button');
    const formRow = `#jobs tr[data-agent="${env.FORM_AGENT}"]`;
    await page.until(present, formRow);
    result.formDispatch = await page.evaluate((selector) => document.querySelector(selector).dataset.dispatch, formRow);

    result.deletedDispatch = await deleteDispatch(agentRow, room);
    // Once the room is closed, a reading already under way may ask about it and get 404, which the browser
    // logs: the page's own errors are read before, and its error line after.
    result.consoleErrors = [...page.consoleErrors];
    await page.click(`${room} button.close`);
    await page.until(absent, room);
    result.errorShown = await page.evaluate(() => document.getElementById('error').textContent);
    result.secretOnPage = (await page.content()).includes(env.API_SECRET);
    result.stored = await page.evaluate(() => localStorage.length + sessionStorage.length + document.cookie.length);
  }
} catch (error) {
  result.unexpectedError = String(error);
  result.stack = error.stack;
  result.pageError = await page.evaluate(() => document.getElementById('error').textContent).catch(() => undefined);
} finally {
  await page.close();
}
console.log(JSON.stringify(result));
