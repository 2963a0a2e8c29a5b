#!/usr/bin/env node
// A stand-in for `interceptor sniff --serve`, for working on web/index.html and for the
// browser test (tests/browser) when no real server is given. No dependencies.
//
//   node web/mock-server.mjs [--port N] [--host H] [--live]
//
// Prints `listening http://H:PORT/` on its first line. Serves:
//   /         web/index.html, read from disk on each request (edit and reload)
//   /events   the scripted stream: mirrored GET /items calls (primary catalog v1, shadow
//             v2 adding imageUrl), a few other exchanges (404, 500, POST, binary, slow,
//             unanswered), their shadow pairs and a summary. The first connection skips
//             7 events (seq 10-16) and sends a `dropped` event (missed 7), then is closed:
//             the browser reconnects and the mock replays the whole ring (ignoring
//             Last-Event-ID), so the page must de-duplicate and slot the 7 in by seq.
//   /inject?n=K  adds K more mirrored calls and sends them to every open stream
//   /stats    {"exchanges","pairs","missed","connections","open"} as JSON
//   /metrics  a few lines of Prometheus text
// --live adds one mirrored call per second.

import http from "node:http";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : dflt; };
const PORT = Number(opt("--port", process.env.PORT || 8080));
const HOST = opt("--host", "127.0.0.1");
const LIVE = args.includes("--live");
const MISSED = 7, SKIP_FROM = 10;

// ---- the scripted traffic -------------------------------------------------------------
let seq = 0;
const ring = [];            // [seq, type, json]
const streams = new Set();
let connections = 0;
const counts = { exchanges: 0, same: 0, different: 0, latencies: [] };
let clock = Date.parse("2026-11-22T23:51:20.000Z");
let port = 40000;

const uuid = (n) => `47d4d90b-${String(n).padStart(4, "0")}-4f2a-9c1e-${(0x5a3c00000000 + n * 7919).toString(16).slice(-12)}`;
const ts = (t) => new Date(t).toISOString().replace("Z", String((t * 7) % 1000).padStart(3, "0") + "Z");   // µs, like the sniffer
const items = [
  { id: 1, color: "amber", department: "Eyewear", name: "Elinor Glasses", price: "282.00" },
  { id: 2, color: "cyan", department: "Clothing", name: "Atlas Shirt", price: "127.00" },
  { id: 3, color: "teal", department: "Clothing", name: "Small Metal Shoes", price: "232.00" },
  { id: 4, color: "red", department: "Watches", name: "Red Dragon Watch", price: "232.00" },
];
const v2items = items.map((it) => ({ ...it, imageUrl: "http://lorempixel.com/640/480" }));
const httpDate = (t) => new Date(t).toUTCString();

function push(type, obj) {
  const s = ++seq;
  const json = JSON.stringify({ type, seq: s, ...obj });
  ring.push([s, type, json]);
  for (const res of streams) send(res, s, type, json);
  return s;
}
function send(res, s, type, json) { res.write(`id: ${s}\nevent: ${type}\ndata: ${json}\n\n`); }

function exchange({ server, pod, method = "GET", target, host, rid, reqBody = "", status, reason = "OK", ctype = "application/json",
                    body = "", binary = false, latency, extraReq = [], extraResp = [], unanswered = false }) {
  const t = (clock += 37 + (seq % 5) * 11);
  counts.exchanges++;
  if (!unanswered) counts.latencies.push(latency);
  const reqHeaders = [["host", host], ["user-agent", "Go-http-client/1.1"], ...(rid ? [["x-request-id", rid]] : []),
    ["x-b3-traceid", rid ? rid.replace(/-/g, "").slice(0, 16) : "0"], ...extraReq];
  if (reqBody) reqHeaders.push(["content-type", "application/json"], ["content-length", String(reqBody.length)]);
  const bodyLen = binary ? Buffer.from(body, "base64").length : Buffer.byteLength(body);
  const response = unanswered ? null : {
    status, reason, version: "HTTP/1.1",
    headers: [["content-type", ctype], ["date", httpDate(t)], ["content-length", String(bodyLen)], ["x-powered-by", "Express"], ...extraResp],
    body_len: bodyLen, body, ...(binary ? { body_encoding: "base64" } : {}), body_truncated: false,
  };
  return push("exchange", {
    ts: ts(t), client: `10.123.1.2:${port++}`, server, pod,
    request: { method, target, version: "HTTP/1.1", headers: reqHeaders, body_len: reqBody.length, body: reqBody },
    response, latency_us: unanswered ? null : latency,
  });
}

const V1 = { server: "10.123.2.2:3000", pod: { ip: "10.123.2.2", name: "catalog-v1-6d9c5f8b7-xk2lp", namespace: "istioinaction" } };
const V2 = { server: "10.123.3.2:3000", pod: { ip: "10.123.3.2", name: "catalog-v2-54b7d9cbd-q8w4n", namespace: "istioinaction" } };

let calls = 0;
// One call of the app, mirrored: primary to v1, shadow (Host …-shadow) to v2.
function mirroredCall(target = "/items") {
  const n = ++calls, rid = uuid(n);
  const list = target === "/items";
  const pBody = JSON.stringify(list ? items : items[0]), sBody = JSON.stringify(list ? v2items : items[0]);
  const pLat = 700 + ((n * 389) % 900), sLat = 1100 + ((n * 577) % 1400);
  const ps = exchange({ ...V1, target, host: "catalog.istioinaction:3000", rid, status: 200, body: pBody, latency: pLat,
                        extraResp: [["etag", `W/"18c-${n}"`]] });
  const ss = exchange({ ...V2, target, host: "catalog.istioinaction-shadow:80", rid, status: 200, body: sBody, latency: sLat,
                        extraResp: [["etag", `W/"1e4-${n}"`]] });
  const differences = list ? v2items.map((it, i) => ({ where: `body:[${i}].imageUrl`, kind: "added", primary: null, shadow: it.imageUrl })) : [];
  if (list && n % 3 === 0) differences.push({ where: "header:etag", kind: "changed", primary: `W/"18c-${n}"`, shadow: `W/"1e4-${n}"` });
  const noise = [{ where: "header:date", kind: "changed", primary: httpDate(clock - 50), shadow: httpDate(clock) }];
  const verdict = differences.length ? "different" : "same";
  counts[verdict]++;
  push("shadow", {
    request_id: rid, matched_by: "request-id", method: "GET", target,
    primary: { server: V1.server, status: 200, latency_us: pLat }, shadow: { server: V2.server, status: 200, latency_us: sLat },
    verdict, differences, noise: n % 2 ? noise : [], primary_exchange_seq: ps, shadow_exchange_seq: ss,
  });
}

function script() {
  for (let i = 0; i < 3; i++) mirroredCall();
  exchange({ ...V1, target: "/items/99", host: "catalog.istioinaction:3000", rid: uuid(900), status: 404, reason: "Not Found",
             body: JSON.stringify({ error: "item 99 not found" }), latency: 640 });
  for (let i = 0; i < 3; i++) mirroredCall();
  exchange({ ...V1, method: "POST", target: "/items", host: "catalog.istioinaction:3000", rid: uuid(901), status: 201, reason: "Created",
             reqBody: JSON.stringify({ name: "Jade Ring", color: "green", price: "99.00" }),
             body: JSON.stringify({ id: 5, name: "Jade Ring", color: "green", price: "99.00" }), latency: 2300 });
  mirroredCall("/items/1");
  exchange({ ...V1, target: "/health", host: "catalog.istioinaction:3000", status: 500, reason: "Internal Server Error",
             ctype: "text/plain; charset=utf-8", body: "database connection refused\n", latency: 410 });
  exchange({ server: "10.123.4.2:8080", pod: { ip: "10.123.4.2", name: "images-7f8d6c-2vbnm", namespace: "istioinaction" },
             target: "/img/1.png", host: "images.istioinaction:8080", status: 200, ctype: "image/png",
             body: "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==",
             binary: true, latency: 950 });
  for (let i = 0; i < 3; i++) mirroredCall();
  exchange({ ...V1, target: "/items?slow=1", host: "catalog.istioinaction:3000", rid: uuid(902), status: 200, body: JSON.stringify(items), latency: 352000 });
  exchange({ server: "10.123.9.9:80", pod: null, target: "/ping", host: "legacy.example:80", unanswered: true });
  mirroredCall("/items/1");
  for (let i = 0; i < 3; i++) mirroredCall();
}
script();

function summary() {
  const l = counts.latencies.slice().sort((a, b) => a - b);
  const q = (p) => l.length ? l[Math.min(l.length - 1, Math.ceil(p * l.length) - 1)] : null;
  const top = new Map();
  for (const [, type, json] of ring) if (type === "shadow") {
    const seen = new Set(JSON.parse(json).differences.map((d) => d.where.replace(/\[\d+\]/g, "[*]")));
    for (const w of seen) top.set(w, (top.get(w) || 0) + 1);
  }
  const s = ++seq;
  return [s, JSON.stringify({ type: "summary", seq: s, exchanges: counts.exchanges, pairs: { same: counts.same, different: counts.different },
    top_differences: [...top].sort((a, b) => b[1] - a[1]).slice(0, 10), latency_us: { p50: q(0.5), p99: q(0.99) } })];
}
function sendSummary(streamsToo, res) {
  const [s, json] = summary();
  if (res) send(res, s, "summary", json);
  if (streamsToo) for (const r of streams) send(r, s, "summary", json);
}

// ---- the server -----------------------------------------------------------------------
const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  if (url.pathname === "/" || url.pathname === "/index.html") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
    res.end(readFileSync(join(here, "index.html")));
  } else if (url.pathname === "/events") {
    const n = ++connections;
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store", "x-accel-buffering": "no" });
    res.write("retry: 500\n\n");
    // The first stream skips 7 events, as the server does for a browser that fell behind,
    // and says so; the second replays them among the rest, to be put in their place.
    for (const [s, type, json] of ring) if (n > 1 || s < SKIP_FROM || s >= SKIP_FROM + MISSED) send(res, s, type, json);
    if (n === 1) { const s = ++seq; send(res, s, "dropped", JSON.stringify({ type: "dropped", seq: s, missed: MISSED })); }
    sendSummary(false, res);
    if (n === 1) { setTimeout(() => res.end(), 400); return; }   // the browser reconnects; the ring is replayed
    streams.add(res);
    const ping = setInterval(() => res.write(": ping\n\n"), 10000);
    req.on("close", () => { clearInterval(ping); streams.delete(res); });
  } else if (url.pathname === "/inject") {
    const k = Math.min(1000, Number(url.searchParams.get("n") || 1));
    for (let i = 0; i < k; i++) mirroredCall();
    sendSummary(true);
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ injected: k }));
  } else if (url.pathname === "/stats") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ exchanges: counts.exchanges, pairs: { same: counts.same, different: counts.different },
                             missed: MISSED, connections, open: streams.size }));
  } else if (url.pathname === "/metrics") {
    res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
    res.end(`# mock\ninterceptor_exchanges_total ${counts.exchanges}\ninterceptor_shadow_pairs_total{verdict="same"} ${counts.same}\n` +
            `interceptor_shadow_pairs_total{verdict="different"} ${counts.different}\n`);
  } else { res.writeHead(404); res.end("not found\n"); }
});
server.listen(PORT, HOST, () => {
  const a = server.address();
  console.log(`listening http://${a.address.includes(":") ? `[${a.address}]` : a.address}:${a.port}/`);
});
if (LIVE) setInterval(() => {
  mirroredCall();
  sendSummary(true);
}, 1000);
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(0));
