// The live web view (web/index.html) in a real browser: Debian's chromium driven by
// playwright-core.
//
//   cd tests/browser && npm ci && node --test
//
// Environment:
//   INTERCEPTOR_VIEW_URL  the page to test, e.g. http://127.0.0.1:PORT/ of a running
//                         `interceptor sniff --serve`; unset: this test starts
//                         web/mock-server.mjs on a free port and tests against it
//   EXPECT_EXCHANGES      at least this many exchange rows (mock: exactly its count)
//   EXPECT_DIFF_PATH      a difference path some pair must show, e.g. body:[0].imageUrl
//   EXPECT_MISSED         the missed counter's value (mock: 7, from its `dropped` event)
//   SCREENSHOT            where the shadow diff view is saved (default docs/web-view.png
//                         in the repository; relative paths are taken from the cwd)
//   CHROMIUM              the browser (default /usr/bin/chromium)
//
// A missing chromium or playwright-core fails the run; nothing here is ever skipped.

import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { accessSync, constants, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "..", "..");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SCREENSHOT = process.env.SCREENSHOT ? resolve(process.env.SCREENSHOT) : join(repo, "docs", "web-view.png");
const EXPECT_DIFF_PATH = process.env.EXPECT_DIFF_PATH || "";

let browser, page, mock, baseUrl, usingMock = false;
const pageErrors = [];

function startMock() {
  return new Promise((ok, fail) => {
    const child = spawn(process.execPath, [join(repo, "web", "mock-server.mjs"), "--port", "0"], { stdio: ["ignore", "pipe", "inherit"] });
    const timer = setTimeout(() => fail(new Error("web/mock-server.mjs did not say where it listens within 10 s")), 10000);
    child.on("exit", (code) => fail(new Error(`web/mock-server.mjs exited (${code}) before listening`)));
    createInterface({ input: child.stdout }).once("line", (line) => {
      clearTimeout(timer);
      const m = /^listening (\S+)$/.exec(line);
      if (!m) return fail(new Error(`web/mock-server.mjs said ${JSON.stringify(line)}, not "listening URL"`));
      ok([child, m[1]]);
    });
  });
}
async function mockStats() {
  const r = await fetch(new URL("stats", baseUrl));
  return r.json();
}
const expectMissed = () => process.env.EXPECT_MISSED != null ? Number(process.env.EXPECT_MISSED) : usingMock ? 7 : null;

// Everything the filter assertions need, read in one go so that rows arriving meanwhile
// cannot make the numbers disagree.
function snapshot() {
  return page.evaluate(() => {
    const rows = [...document.querySelectorAll('[data-testid="exchange-row"]')];
    const cell = (r, id) => r.querySelector(`[data-testid="${id}"]`);
    const m = /(\d+)\s+of\s+(\d+)/.exec(document.querySelector('[data-testid="shown-count"]').textContent);
    return {
      shown: m ? +m[1] : NaN, total: m ? +m[2] : NaN,
      rows: rows.map((r) => ({
        seq: r.dataset.seq, visible: !r.hidden && r.offsetParent !== null,
        method: cell(r, "cell-method").textContent, target: cell(r, "cell-target").textContent,
        status: cell(r, "cell-status").textContent, latency: cell(r, "cell-latency").textContent,
        host: cell(r, "cell-server").title, server: cell(r, "cell-server").textContent,
      })),
    };
  });
}
async function setFilter(name, value) {
  await page.getByTestId(`filter-${name}`).fill(value);
}
// Sets one filter, checks the count against what the rows say, clears it, checks it is back.
async function checkFilter(name, value, pred, what) {
  const before = await snapshot();
  assert.equal(before.shown, before.total, "no filter should be active before " + what);
  await setFilter(name, value);
  const s = await snapshot();
  const expected = s.rows.filter(pred).length;
  const visible = s.rows.filter((r) => r.visible);
  assert.equal(s.shown, expected, `${what}: "N of M shown" says ${s.shown}, the rows say ${expected}`);
  assert.equal(visible.length, expected, `${what}: ${visible.length} rows visible, ${expected} match`);
  assert.ok(visible.every(pred), `${what}: a visible row does not match`);
  assert.equal(s.total, s.rows.length, `${what}: M should count all rows`);
  await setFilter(name, "");
  const back = await snapshot();
  assert.equal(back.shown, back.total, `${what}: clearing the filter should show all rows again`);
  assert.equal(back.rows.filter((r) => r.visible).length, back.rows.length, `${what}: clearing should unhide every row`);
  return { expected, total: s.total };
}

describe("live web view", { timeout: 120000 }, () => {
  // A missing prerequisite fails the first test with what to do, and every other test
  // with the same message (a `before` that throws would only cancel them).
  let setupError = null;
  const ready = () => { if (setupError) throw setupError; };
  before(async () => {
    try { await setUp(); } catch (e) { setupError = e; }
  });
  async function setUp() {
    try {
      accessSync(CHROMIUM, constants.X_OK);
    } catch {
      throw new Error(`chromium is missing: ${CHROMIUM} is not an executable. Install Debian's chromium (apt-get install -y chromium; scripts/setup.sh does) or set CHROMIUM.`);
    }
    let chromium;
    try {
      ({ chromium } = await import("playwright-core"));
    } catch (e) {
      throw new Error(`playwright-core is missing in tests/browser: run \`npm ci\` there (scripts/setup.sh does). (${e.message})`);
    }
    if (process.env.INTERCEPTOR_VIEW_URL) baseUrl = process.env.INTERCEPTOR_VIEW_URL;
    else { [mock, baseUrl] = await startMock(); usingMock = true; }
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-quic", "--no-first-run"],
    });
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    page = await ctx.newPage();
    page.setDefaultTimeout(15000);
    page.on("pageerror", (e) => pageErrors.push(e.message));
    page.on("console", (m) => { if (m.type() === "error") pageErrors.push(m.text()); });
    page.on("requestfailed", (r) => { if (!r.url().endsWith("/events")) pageErrors.push(`request failed: ${r.url()}`); });
    await page.goto(baseUrl);
  }

  after(async () => {
    if (browser) await browser.close();
    if (mock) mock.kill("SIGTERM");
  });

  it("has chromium, playwright-core and the page", () => ready());

  it("shows exchange rows with method, target and status, once each", async () => {
    ready();
    let min = Number(process.env.EXPECT_EXCHANGES || 1);
    if (usingMock) {
      const st = await mockStats();
      min = st.exchanges;
      // The mock closes the first stream and replays its whole ring on the second: the
      // page must come back to "connected" with no row twice.
      await page.waitForFunction(() => document.body.dataset.connection === "connected");
      for (let i = 0; (await mockStats()).connections < 2; i++) {
        assert.ok(i < 100, "the page did not reconnect after the mock closed the stream");
        await page.waitForTimeout(100);
      }
      await page.waitForFunction(() => document.body.dataset.connection === "connected");
      await page.waitForFunction(() => +document.getElementById("st-dups").textContent > 0);
    }
    await page.waitForFunction((n) => document.querySelectorAll('[data-testid="exchange-row"]').length >= n, min);
    await page.waitForTimeout(300);     // let a replay, if any, land
    const s = await snapshot();
    if (usingMock) assert.equal(s.rows.length, min, `expected exactly the mock's ${min} exchanges (replayed events de-duplicated), got ${s.rows.length}`);
    else assert.ok(s.rows.length >= min, `expected at least ${min} exchange rows, got ${s.rows.length}`);
    assert.equal(new Set(s.rows.map((r) => r.seq)).size, s.rows.length, "a sequence number shows twice");
    const seqs = s.rows.map((r) => +r.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => b - a), "rows should be newest first");
    assert.equal(s.shown, s.rows.length);
    assert.equal(s.total, s.rows.length);
    for (const r of s.rows) {
      assert.match(r.method, /^[A-Z]+$/, `method cell ${JSON.stringify(r.method)}`);
      assert.match(r.target, /^\//, `target cell ${JSON.stringify(r.target)}`);
      assert.match(r.status, /^(\d{3}|—)$/, `status cell ${JSON.stringify(r.status)}`);
    }
    assert.ok(s.rows.some((r) => /^\d{3}$/.test(r.status)), "no row has a status");
    if (usingMock) {
      const items = s.rows.filter((r) => r.method === "GET" && r.target === "/items" && r.status === "200");
      assert.ok(items.length >= 2, "the mock's GET /items 200 rows are missing");
      assert.ok(s.rows.some((r) => r.status === "—"), "the unanswered request should show — as status");
    }
  });

  it("filters by status, path, method, host and latency, and typing it back restores", async () => {
    ready();
    const status = (r) => /^\d{3}$/.test(r.status) && +r.status >= 400;
    const st = await checkFilter("status", ">=400", status, "status >=400");
    assert.ok(st.expected < st.total, `status >=400 should hide something (${st.expected} of ${st.total})`);
    if (usingMock) assert.equal(st.expected, 2, "the mock has one 404 and one 500");
    const st5 = await checkFilter("status", "5xx", (r) => r.status.startsWith("5"), "status 5xx");
    if (usingMock) assert.equal(st5.expected, 1);

    // A path that some rows have and others not, if there is one; else one no row has.
    const { rows } = await snapshot();
    const counts = new Map();
    for (const r of rows) counts.set(r.target, (counts.get(r.target) || 0) + 1);
    const rare = [...counts].sort((a, b) => a[1] - b[1])[0][0];
    const path = counts.size > 1 ? rare : "/no-such-path-in-this-capture";
    const p = await checkFilter("path", path, (r) => r.target.includes(path), `path ${path}`);
    assert.ok(p.expected < p.total, `path ${path} should hide something`);

    await checkFilter("method", "post", (r) => r.method === "POST", "method post");
    await checkFilter("latency", "100", (r) => r.latency !== "–" && parseFloat(r.latency) > 100, "latency > 100 ms");
    const h = await checkFilter("host", "shadow", (r) => /shadow/i.test(r.host + r.server), "host shadow");
    if (usingMock) { const st = await mockStats(); assert.equal(h.expected, st.pairs.same + st.pairs.different, "one shadow exchange per mirrored call"); }

    // A bad status expression is flagged, not applied.
    await setFilter("status", ">=abc");
    assert.ok(await page.getByTestId("filter-status").evaluate((e) => e.classList.contains("bad")), "a bad status filter should be marked");
    await setFilter("status", "");

    if (usingMock) {
      // The filter applies to rows that arrive after it was set.
      await setFilter("path", "/items");
      const s0 = await snapshot();
      await fetch(new URL("inject?n=2", baseUrl));
      await page.waitForFunction((n) => document.querySelectorAll('[data-testid="exchange-row"]').length >= n, s0.total + 4);
      const s1 = await snapshot();
      assert.equal(s1.total, s0.total + 4, "4 new exchanges should have arrived");
      assert.equal(s1.shown, s0.shown + 4, "the new /items rows should pass the /items filter");
      await setFilter("status", ">=400");
      const s2 = await snapshot();
      assert.equal(s2.shown, 1, "only the 404 is under /items and >=400");
      await setFilter("status", "");
      await setFilter("path", "");
    }
  });

  it("opens a row's headers and its JSON body", async () => {
    ready();
    const n = await page.getByTestId("exchange-row").count();
    let found = false;
    for (let i = 0; i < Math.min(n, 40) && !found; i++) {
      await page.getByTestId("exchange-row").nth(i).click();
      found = await page.locator('[data-testid="detail"] [data-testid="response-body"][data-format="json"]').count() > 0;
    }
    assert.ok(found, "no row among the first 40 opened with a JSON response body");
    const detail = page.getByTestId("detail");
    const reqHeaders = await detail.getByTestId("request-headers").innerText();
    assert.match(reqHeaders, /\bhost\b/i, "request headers should list host");
    const respHeaders = await detail.getByTestId("response-headers").innerText();
    assert.match(respHeaders, /content-type/i, "response headers should list content-type");
    const body = await detail.getByTestId("response-body").innerText();
    assert.doesNotThrow(() => JSON.parse(body), "the shown body should be the JSON, pretty-printed");
    assert.match(body, /\n {2}\S/, "the JSON body should be indented");
    assert.ok(await page.locator('[data-testid="exchange-row"].selected').count() === 1, "the clicked row should be marked");

    if (usingMock) {
      await page.getByTestId("exchange-row").filter({ hasText: "/img/1.png" }).click();
      assert.match(await detail.getByTestId("response-body").innerText(), /^binary, 70 bytes/);
      await page.getByTestId("exchange-row").filter({ hasText: "/ping" }).click();
      assert.match(await detail.innerText(), /no response/);
    }
  });

  it("lists shadow pairs with verdict different, and shows a pair's differences side by side", async () => {
    ready();
    await page.getByTestId("tab-shadow").click();
    await page.getByTestId("pair-row").first().waitFor();
    const different = page.getByTestId("pair-row").filter({ has: page.locator('[data-testid="pair-verdict"]', { hasText: /^different$/ }) });
    const nd = await different.count();
    assert.ok(nd > 0, "no pair with verdict different");
    const pairSeqs = await page.getByTestId("pair-row").evaluateAll((rs) => rs.map((r) => +r.dataset.seq));
    assert.deepEqual(pairSeqs, [...pairSeqs].sort((a, b) => b - a), "pairs should be newest first, each once");
    assert.equal(new Set(pairSeqs).size, pairSeqs.length, "a pair shows twice");
    if (usingMock) assert.equal(nd, (await mockStats()).pairs.different);
    await different.first().click();
    const detail = page.getByTestId("detail");
    await detail.getByTestId("diff-row").first().waitFor();
    const paths = await detail.getByTestId("diff-path").allInnerTexts();
    assert.ok(paths.some((p) => p.includes("imageUrl")), `no difference path with imageUrl among ${JSON.stringify(paths)}`);
    if (EXPECT_DIFF_PATH) {
      const all = [];
      for (let i = 0; i < nd && !all.some((p) => p.includes(EXPECT_DIFF_PATH)); i++) {
        await different.nth(i).click();
        all.push(...await detail.getByTestId("diff-path").allInnerTexts());
      }
      assert.ok(all.some((p) => p.includes(EXPECT_DIFF_PATH)), `no pair shows ${EXPECT_DIFF_PATH}; saw ${JSON.stringify([...new Set(all)])}`);
      await different.first().click();
    }
    // The added value is in the shadow's cell, highlighted; the primary's is absent.
    const row = detail.getByTestId("diff-row").filter({ hasText: "imageUrl" }).first();
    assert.match(await row.getAttribute("class"), /kind-(added|changed|removed)/);
    const bg = await row.getByTestId("diff-shadow").evaluate((e) => getComputedStyle(e).backgroundColor);
    assert.notEqual(bg, "rgba(0, 0, 0, 0)", "the differing cell should be highlighted");
    if (usingMock) {
      assert.equal(await row.getByTestId("diff-primary").innerText(), "—");
      assert.equal(await row.getByTestId("diff-shadow").innerText(), "http://lorempixel.com/640/480");
      // Both bodies, the added lines marked.
      assert.ok(await detail.getByTestId("shadow-body").locator(".hl-add").count() >= 1, "the shadow body should mark imageUrl");
    }
    mkdirSync(dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT });
  });

  it("summarises pairs by verdict and the paths that differ most", async () => {
    ready();
    const summary = page.getByTestId("summary");
    const text = await summary.innerText();
    assert.match(text, /same/);
    assert.match(text, /different/);
    const rows = await page.getByTestId("pair-row").count();
    const diffRows = await page.locator('[data-testid="pair-verdict"]', { hasText: /^different$/ }).count();
    const sameRows = await page.locator('[data-testid="pair-verdict"]', { hasText: /^same$/ }).count();
    assert.ok(rows > 0);
    assert.equal(Number(await summary.getByTestId("summary-different").innerText()), diffRows, "summary's different count");
    assert.equal(Number(await summary.getByTestId("summary-same").innerText()), sameRows, "summary's same count");
    assert.match(text, /imageUrl/, "the paths differing most should name imageUrl");
    if (usingMock) {
      const st = await mockStats();
      await page.waitForFunction((d) => document.getElementById("v-different-srv").textContent === String(d), st.pairs.different);
      assert.match(text, /body:\[\*\]\.imageUrl/);
    }
  });

  it("shows how many events the browser missed", async () => {
    ready();
    const missed = page.getByTestId("missed-count");
    const want = expectMissed();
    if (want != null) {
      await page.waitForFunction((w) => document.querySelector('[data-testid="missed-count"]').textContent === String(w), want)
        .catch(async () => assert.fail(`missed counter shows ${await missed.innerText()}, expected ${want}`));
    }
    const v = Number(await missed.innerText());
    assert.ok(Number.isInteger(v) && v >= 0, `missed counter ${v}`);
    const alert = await page.locator("#missed-box").evaluate((e) => e.classList.contains("alert"));
    assert.equal(alert, v > 0, "the missed box should stand out exactly when something was missed");
  });

  it("raised no page errors", () => {
    ready();
    assert.deepEqual(pageErrors, []);
  });
});
