// The dashboard (/dashboard) in headless Debian Chromium, driven by playwright-core. Run by
// tests/integration/test_dashboard.py:
//
//   node dashboard_scenario.mjs dashboard    (the whole scenario below)
//   node dashboard_scenario.mjs many-rooms   (log in, then only the latency of ROOM appearing)
//   node dashboard_scenario.mjs cluster      (a page served by one of NODES nodes: the nodes listed, ROOM of
//                                             another node with AGENT from WORKER_ID, its dispatch deleted)
//
// Environment: DASHBOARD_URL, API_KEY, API_SECRET, ROOM (created by the test after the login),
// AGENT (the agent that runs there), FAILED_AGENT (an agent nobody serves, whose job fails),
// WORKER_ID (the worker to drain from the page), SCREENSHOT (where to save the page), CHROMIUM.
// SPEAKER: a participant the test has publishing a tone in ROOM, removed from the page once shown speaking.
// After draining, the scenario deletes the running agent's dispatch and closes the room from the page.
// Prints "shown" once the page shows its first state after logging in, then exactly one JSON line of
// observations on stdout; diagnostics go to stderr.

import { chromium } from 'playwright-core';

const env = process.env;
const STEP_TIMEOUT_MS = 20_000;
const CHROMIUM_ARGS = ['--disable-gpu', '--no-first-run', '--disable-background-networking', '--no-proxy-server'];

const result = { scenario: process.argv[2] };
const browser = await chromium.launch({
  executablePath: env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: CHROMIUM_ARGS,
  timeout: STEP_TIMEOUT_MS,
});
let page;
try {
  page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const consoleErrors = [];
  page.on('console', (message) => message.type() === 'error' && consoleErrors.push(message.text()));
  await page.goto(env.DASHBOARD_URL);
  // What is on screen may come from a reading started before the event arrived: the page records the
  // event's latency when the reading after it is shown.
  const shownAfter = async (key) => (
    await (await page.waitForFunction((k) => (k in window.eventToScreen ? [window.eventToScreen[k]] : null), key))
      .jsonValue()
  )[0];

  await page.fill('#api-key', env.API_KEY);
  await page.fill('#api-secret', 'not-the-secret');
  await page.click('#login-button');
  await page.waitForFunction(() => document.getElementById('error').textContent !== '');
  result.refused = await page.textContent('#error');

  await page.fill('#api-secret', env.API_SECRET);
  await page.click('#login-button');
  await page.waitForSelector('#updated:not(:empty)');
  result.roomShownAtLogin = (await page.$(`tr[data-room="${env.ROOM}"]`)) !== null;
  console.log('shown');

  // The test creates the room and its dispatches now: they appear without a reload.
  // Live: the room appears through the event stream (the page's own clock, minus the event's).
  await page.waitForSelector(`tr[data-room="${env.ROOM}"]`);
  if (result.scenario === 'many-rooms') {
    // The test keeps other rooms live: how long the room takes to show among them.
    result.latencyMs = { roomStarted: await shownAfter(`room_started:${env.ROOM}`) };
    result.roomsShown = await page.locator('#rooms > tr').count();
  } else if (result.scenario === 'cluster') {
    await page.waitForFunction((count) => document.querySelectorAll('#nodes > tr').length === count, Number(env.NODES));
    result.nodes = await page.locator('#nodes > tr').evaluateAll((rows) => rows.map((row) => ({
      id: row.dataset.node, label: row.cells[0].textContent, address: row.cells[1].textContent,
      state: row.cells[2].textContent,
    })));
    // ROOM's events come from its node, through the stream of the page's node.
    const agentParticipant = page.locator(`tr[data-room="${env.ROOM}"] li`, { hasText: '(agent)' });
    await agentParticipant.waitFor();
    result.latencyMs = { agentJoined: await shownAfter(`participant_joined:${env.ROOM}`) };
    const agentRow = page.locator(`#jobs tr[data-agent="${env.AGENT}"]`);
    await agentRow.locator('.state-running').waitFor();
    result.agentJob = await agentRow.locator('.why').innerText();
    const worker = page.locator(`tr[data-worker="${env.WORKER_ID}"]`);
    await page.waitForFunction(
      (id) => document.querySelector(`tr[data-worker="${id}"] .jobs`)?.textContent.endsWith(': running'),
      env.WORKER_ID,
    );
    result.dispatchesCharted = await page.evaluate(() => Number(document.getElementById('charts').dataset.dispatches));
    result.workerNode = await worker.locator('.node').innerText();
    result.workerJobs = await worker.locator('.jobs').innerText();
    await page.screenshot({ path: env.SCREENSHOT, fullPage: true });
    result.deletedDispatch = await agentRow.getAttribute('data-dispatch');
    await agentRow.locator('button.delete').click();
    await page.locator(`#jobs tr[data-dispatch="${result.deletedDispatch}"]`).waitFor({ state: 'detached' });
    await agentParticipant.waitFor({ state: 'detached' });
    result.errorShown = await page.textContent('#error');
  } else {
    const agentParticipant = page.locator(`tr[data-room="${env.ROOM}"] li`, { hasText: '(agent)' });
    await agentParticipant.waitFor();
    result.agentParticipant = (await agentParticipant.getAttribute('data-identity')) !== null;
    result.latencyMs = {
      roomStarted: await shownAfter(`room_started:${env.ROOM}`),
      agentJoined: await shownAfter(`participant_joined:${env.ROOM}`),
    };
    const agentRow = page.locator(`#jobs tr[data-agent="${env.AGENT}"]`);
    await agentRow.locator('.state-running').waitFor();
    result.agentJob = await agentRow.locator('.why').innerText();
    const failedRow = page.locator(`#jobs tr[data-agent="${env.FAILED_AGENT}"]`);
    await failedRow.locator('.state-failed').waitFor();
    result.failedReason = await failedRow.locator('.why').innerText();
    // Each step's text without its (local) time of day.
    const steps = (row) => row.locator('ol.timeline li').evaluateAll(
      (items) => items.map((item) => item.textContent.replace(/^\S+( [AP]M)? /, '')),
    );
    result.agentTimeline = await steps(agentRow);
    result.failedTimeline = await steps(failedRow);
    const speaker = page.locator(`tr[data-room="${env.ROOM}"] li.speaking[data-identity="${env.SPEAKER}"]`);
    await speaker.waitFor();
    result.latencyMs.speakerShown = await shownAfter(`speakers_changed:${env.ROOM}`);
    await speaker.locator('button.remove').click();
    await page.locator(`tr[data-room="${env.ROOM}"] li[data-identity="${env.SPEAKER}"]`).waitFor({ state: 'detached' });

    result.charted = await page.evaluate(() => ({
      dispatches: Number(document.getElementById('charts').dataset.dispatches),
      failures: Number(document.getElementById('charts').dataset.failures),
      bars: document.querySelectorAll('#chart-dispatches rect').length,
    }));

    const worker = page.locator(`tr[data-worker="${env.WORKER_ID}"]`);
    await worker.locator('button.steer').click();
    await page.waitForFunction(
      (id) => document.querySelector(`tr[data-worker="${id}"] .status`)?.textContent.startsWith('draining'),
      env.WORKER_ID,
    );
    result.workerStatus = await worker.locator('.status').innerText();

    await page.screenshot({ path: env.SCREENSHOT, fullPage: true });

    result.deletedDispatch = await agentRow.getAttribute('data-dispatch');
    await agentRow.locator('button.delete').click();
    await page.locator(`#jobs tr[data-dispatch="${result.deletedDispatch}"]`).waitFor({ state: 'detached' });
    await agentParticipant.waitFor({ state: 'detached' });
    // Once the room is closed, a reading already under way may ask about it and get 404, which the browser
    // logs: the page's own errors are read before, and its error line after.
    result.consoleErrors = [...consoleErrors];
    await page.locator(`tr[data-room="${env.ROOM}"] button.close`).click();
    await page.locator(`tr[data-room="${env.ROOM}"]`).waitFor({ state: 'detached' });
    result.errorShown = await page.textContent('#error');
    result.secretOnPage = (await page.content()).includes(env.API_SECRET);
    result.stored = await page.evaluate(() => localStorage.length + sessionStorage.length + document.cookie.length);
  }
} catch (error) {
  result.unexpectedError = String(error);
  result.stack = error.stack;
  result.pageError = await page?.textContent('#error').catch(() => undefined);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
