// Drives the system's Chromium (puppeteer-core never downloads a browser) through the admin UI a
// gateway serves at /admin/, the way an operator would: open the page, fill the connection modal,
// look at the servers and sockets pages. Used by tests/integration/test_admin_browser.py.
//
//   node admin_ui.mjs '<json>'   with {ui, serverUrl?, logins: [{username, password}], expectServers,
//                                      expectSockets: [ids], screenshots: dir, timeoutMs}
//
// Prints one JSON line: what the page showed at each step (the test decides what is right).
// Requests to anything but the gateway's origins (the UI's page links web fonts from CDNs) are
// aborted, so the run needs no network and no time is spent waiting for one.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import puppeteer from "puppeteer-core";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--window-size=1400,900",
];

const opts = JSON.parse(process.argv[2]);
const timeout = opts.timeoutMs ?? 15000;
const report = { steps: [], blocked: [], pageErrors: [] };

function step(name, data) {
  report.steps.push({ name, ...data });
}

// The inputs of the connection modal, found by their visible labels (Vuetify links label -> input).
async function fillField(page, label, value) {
  const id = await page.evaluate((text) => {
    const dialog = document.querySelector(".v-dialog--active");
    const found = dialog && [...dialog.querySelectorAll("label")].find((l) => l.textContent.trim() === text);
    return found ? found.htmlFor : null;
  }, label);
  if (!id) throw new Error(`no field labelled ${label} in the connection modal`);
  const selector = `#${id}`; // Vuetify ids are input-<n>
  await page.focus(selector);
  await page.keyboard.down("Control");
  await page.keyboard.press("a");
  await page.keyboard.up("Control");
  await page.keyboard.press("Backspace");
  if (value) await page.keyboard.type(value);
}

async function modalState(page) {
  return page.evaluate(() => {
    const dialog = document.querySelector(".v-dialog--active");
    if (!dialog) return { open: false };
    const inputs = {};
    for (const label of dialog.querySelectorAll("label")) {
      const input = document.getElementById(label.htmlFor);
      if (input) inputs[label.textContent.trim()] = input.value;
    }
    const error = [...dialog.querySelectorAll(".red--text, .error--text, .v-alert")].map((e) => e.textContent.trim()).filter(Boolean);
    return { open: true, inputs, error };
  });
}

async function login(page, { username, password, serverUrl }) {
  await page.waitForSelector(".v-dialog--active input", { visible: true, timeout });
  if (serverUrl) await fillField(page, "Server URL", serverUrl);
  await fillField(page, "Username", username);
  await fillField(page, "Password", password);
  const clicked = await page.evaluate(() => {
    const dialog = document.querySelector(".v-dialog--active");
    const button = [...dialog.querySelectorAll("button")].find((b) => b.textContent.trim() === "Connect");
    if (!button || button.disabled) return false;
    button.click();
    return true;
  });
  if (!clicked) throw new Error("no enabled Connect button");
  // Either the modal closes (logged in) or it shows the server's refusal.
  await page.waitForFunction(
    () => {
      const dialog = document.querySelector(".v-dialog--active");
      if (!dialog) return true;
      const button = [...dialog.querySelectorAll("button")].find((b) => b.textContent.trim() === "Connect");
      const loading = button && button.classList.contains("v-btn--loading");
      return !loading && dialog.querySelector(".red--text, .error--text, .v-alert");
    },
    { timeout, polling: 100 },
  );
  return modalState(page);
}

// The rows of the data table on the page titled `title`, once the route transition is over (the
// page left behind is gone) and it shows at least `atLeast` rows.
async function pageRows(page, title, atLeast) {
  const rowsOf = (title) => {
    const container = document.querySelector(".v-main .container");
    const pages = container ? [...container.children] : [];
    if (pages.length !== 1) return null;
    const crumbs = pages[0].querySelector(".v-breadcrumbs");
    if (!crumbs || !crumbs.textContent.includes(title)) return null;
    return [...pages[0].querySelectorAll(".v-data-table tbody tr")]
      .filter((r) => !r.classList.contains("v-data-table__empty-wrapper") && r.querySelector("td"))
      .map((r) => [...r.querySelectorAll("td")].map((td) => td.textContent.trim()));
  };
  await page.waitForFunction(
    (body, title, n) => {
      const rows = new Function(`return (${body})`)()(title);
      return rows !== null && rows.length >= n;
    },
    { timeout, polling: 200 },
    rowsOf.toString(),
    title,
    atLeast,
  );
  return page.evaluate((body, title) => new Function(`return (${body})`)()(title), rowsOf.toString(), title);
}

const userDataDir = mkdtempSync(join(tmpdir(), "sio-admin-chromium-"));
let browser;
try {
  browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ARGS, userDataDir, timeout });
  const page = await browser.newPage();
  await page.setViewport({ width: 1400, height: 900 });
  const allowed = new Set([new URL(opts.ui).origin, ...(opts.serverUrl ? [new URL(opts.serverUrl).origin] : [])]);
  await page.setRequestInterception(true);
  page.on("request", (request) => {
    const url = request.url();
    if (url.startsWith("data:") || allowed.has(new URL(url).origin)) request.continue();
    else {
      report.blocked.push(url);
      request.abort();
    }
  });
  page.on("pageerror", (error) => report.pageErrors.push(String(error)));

  const response = await page.goto(opts.ui, { waitUntil: "domcontentloaded", timeout });
  step("open", { status: response.status(), contentType: response.headers()["content-type"] });
  // The app started (its Vue root replaced #app) and either opened the modal or connected.
  await page.waitForSelector(".v-application", { timeout });
  const seeded = await page.evaluate(() => ({ serverUrl: localStorage.getItem("server_url"), path: localStorage.getItem("path"), origin: location.origin }));
  step("loaded", { title: await page.title(), seeded });

  for (const credentials of opts.logins ?? []) {
    const state = await login(page, { ...credentials, serverUrl: opts.serverUrl });
    step("login", { username: credentials.username, ...state });
    if (!state.open) break;
  }

  if (opts.expectServers) {
    await page.evaluate(() => (location.hash = "#/servers/"));
    const rows = await pageRows(page, "Servers", opts.expectServers);
    step("servers", { rows });
    if (opts.screenshots) await page.screenshot({ path: join(opts.screenshots, "servers.png") });
  }
  if (opts.expectSockets?.length) {
    await page.evaluate(() => (location.hash = "#/sockets/"));
    const rows = await pageRows(page, "Sockets", opts.expectSockets.length);
    step("sockets", { rows });
    if (opts.screenshots) await page.screenshot({ path: join(opts.screenshots, "sockets.png") });
    await page.evaluate(() => (location.hash = "#/"));
    await page.waitForFunction(() => document.querySelectorAll("canvas, .v-card").length > 0, { timeout });
    await new Promise((resolve) => setTimeout(resolve, 800)); // the dashboard's charts animate in
    if (opts.screenshots) await page.screenshot({ path: join(opts.screenshots, "dashboard.png") });
  }
  report.ok = true;
} catch (error) {
  report.ok = false;
  report.error = String(error && error.stack ? error.stack : error);
} finally {
  if (browser) await browser.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(report) + "\n");
process.exit(report.ok ? 0 : 1);
