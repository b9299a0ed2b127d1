// The two browsers the dashboard is tested in, behind the few page actions dashboard_scenario.mjs uses,
// so both run the very same steps:
//
//   chromium: Debian's Chromium driven by playwright-core (over the DevTools protocol);
//   firefox:  Debian's firefox-esr driven by puppeteer-core over WebDriver BiDi. Playwright cannot drive
//             it: its own Firefox is a patched build downloaded from its servers, and its `moz-firefox`
//             channel sends `emulation.setMediaFeaturesOverride`, which firefox-esr does not know.
//
// Everything the scenario reads is read with the page's own DOM (`until`, `evaluate`), not with either
// driver's selector engine, so both browsers are asked exactly the same questions.

import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';

const CHROMIUM_ARGS = ['--disable-gpu', '--no-first-run', '--disable-background-networking', '--no-proxy-server'];
const VIEWPORT = { width: 1400, height: 900 };

async function chromiumPage(executablePath, timeoutMs) {
  const browser = await chromium.launch({ executablePath, headless: true, args: CHROMIUM_ARGS, timeout: timeoutMs });
  const page = await browser.newPage({ viewport: VIEWPORT });
  page.setDefaultTimeout(timeoutMs);
  return {
    page,
    close: () => browser.close(),
    fill: (selector, value) => page.fill(selector, value),
    click: (selector) => page.click(selector),
    until: async (predicate, arg) => (await page.waitForFunction(predicate, arg)).jsonValue(),
  };
}

async function firefoxPage(executablePath, timeoutMs) {
  // No proxy whatever the environment says, as Chromium's --no-proxy-server.
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath,
    headless: true,
    timeout: timeoutMs,
    extraPrefsFirefox: { 'network.proxy.type': 0 },
  });
  const page = await browser.newPage();
  await page.setViewport(VIEWPORT);
  page.setDefaultTimeout(timeoutMs);
  return {
    page,
    close: () => browser.close(),
    fill: (selector, value) => page.locator(selector).fill(value),
    click: (selector) => page.locator(selector).click(),
    until: async (predicate, arg) => (await page.waitForFunction(predicate, {}, arg)).jsonValue(),
  };
}

const OPENERS = { chromium: chromiumPage, firefox: firefoxPage };

// A new page in BROWSER ('chromium' or 'firefox', at EXECUTABLE), with the console errors it logs:
// { goto, fill, click, until(predicate, arg) (the predicate's first truthy value, as JSON), evaluate,
//   screenshot(path), content, consoleErrors, close }.
export async function openPage(name, executablePath, timeoutMs) {
  const opener = OPENERS[name];
  if (!opener) throw new Error(`unknown browser ${JSON.stringify(name)}: chromium or firefox`);
  const { page, ...actions } = await opener(executablePath, timeoutMs);
  const consoleErrors = [];
  page.on('console', (message) => message.type() === 'error' && consoleErrors.push(message.text()));
  return {
    ...actions,
    consoleErrors,
    goto: (url) => page.goto(url),
    evaluate: (fn, arg) => page.evaluate(fn, arg),
    screenshot: (path) => page.screenshot({ path, fullPage: true }),
    content: () => page.content(),
  };
}
