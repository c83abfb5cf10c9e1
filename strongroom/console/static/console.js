// Strongroom console: progressive enhancement only. Every page works as plain HTML forms; this
// script adds the live book and trades, the order form's fields per type, the offline shell,
// and the approval device (an Ed25519 key that never leaves this browser).
"use strict";

const POLL_MS = 1000;
const APPROVAL_DOMAIN = "strongroom/approval/v2";
const SUBJECT_KINDS = { withdrawal: 1, refill: 2, policy_change: 3 };

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

// ---------------------------------------------------------------- live book and trades

async function getJson(url) {
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

function renderLevels(body, levels, reverse) {
  body.replaceChildren();
  const rows = reverse ? levels.slice().reverse() : levels;
  for (const [price, qty, orders] of rows) {
    const row = body.insertRow();
    cell(row, price); cell(row, qty); cell(row, orders);
  }
}

function renderTrades(trades) {
  const body = document.querySelector("#trades tbody");
  if (!body) return;  // the person's layout hides the trades panel
  body.replaceChildren();
  for (const t of trades) {
    const row = body.insertRow();
    cell(row, t.price, t.side === "buy" ? "up" : "down");
    cell(row, t.qty);
    cell(row, new Date(t.time_ms).toISOString().slice(11, 19));
  }
}

function setBookStatus(text) {
  document.getElementById("book-seq").textContent = text;
}

async function pollMarket(symbol) {
  try {
    const depth = await getJson(`/api/v1/market/depth?symbol=${encodeURIComponent(symbol)}&limit=12`);
    renderLevels(document.getElementById("asks"), depth.asks, true);
    renderLevels(document.getElementById("bids"), depth.bids, false);
    drawDepth(depth.bids, depth.asks);
    setBookStatus(`polling · seq ${depth.seq}`);
    const trades = await getJson(`/api/v1/market/trades?symbol=${encodeURIComponent(symbol)}&limit=20`);
    renderTrades(trades.trades.slice().reverse());
  } catch (err) {
    setBookStatus("reconnecting…");
  }
  setTimeout(() => pollMarket(symbol), POLL_MS);
}

// The live book over the websocket stream (docs/market-data.md, "Depth: sequence numbers, the gap
// rule, resync"): a snapshot, then diffs applied only when prev_seq is our seq; anything else is a
// gap, so the book is dropped and a resync asked for. If the stream is unreachable or closes, the
// page falls back to polling the REST depth.
function streamMarket(symbol, url) {
  const depthChannel = `depth:${symbol}`;
  const tradesChannel = `trades:${symbol}`;
  let book = null;
  let trades = [];
  let fellBack = false;
  const fallBack = () => { if (!fellBack) { fellBack = true; pollMarket(symbol); } };
  let ws;
  try { ws = new WebSocket(url); } catch (err) { fallBack(); return; }
  getJson(`/api/v1/market/trades?symbol=${encodeURIComponent(symbol)}&limit=20`)
    .then((body) => { trades = body.trades.slice().reverse().concat(trades).slice(0, 20); renderTrades(trades); })
    .catch(() => {});
  const levels = (side, ascending) => Array.from(side.values())
    .sort((a, b) => (ascending ? 1 : -1) * (Number(a[0]) - Number(b[0]))).slice(0, 12);
  const render = () => {
    renderLevels(document.getElementById("asks"), levels(book.asks, true), true);
    renderLevels(document.getElementById("bids"), levels(book.bids, false), false);
    drawDepth(levels(book.bids, false), levels(book.asks, true));
    setBookStatus(`live · seq ${book.seq}`);
  };
  const apply = (side, changes) => {
    for (const level of changes) {
      if (Number(level[1]) === 0) side.delete(level[0]); else side.set(level[0], level);
    }
  };
  const onDepth = (d) => {
    if (d.type === "snapshot") {
      book = { seq: d.seq, bids: new Map(d.bids.map((l) => [l[0], l])), asks: new Map(d.asks.map((l) => [l[0], l])) };
      render();
      return;
    }
    if (book === null || d.seq <= book.seq) return;
    if (d.prev_seq !== book.seq) {
      book = null;
      setBookStatus("gap: resyncing…");
      ws.send(JSON.stringify({ op: "resync", channel: depthChannel }));
      return;
    }
    apply(book.bids, d.bids);
    apply(book.asks, d.asks);
    book.seq = d.seq;
    render();
  };
  ws.addEventListener("open", () => {
    ws.send(JSON.stringify({ op: "subscribe", id: 1, channels: [depthChannel, tradesChannel] }));
  });
  ws.addEventListener("message", (event) => {
    const msg = JSON.parse(event.data);
    if (msg.channel === depthChannel) onDepth(msg.data);
    else if (msg.channel === tradesChannel) {
      // A batch of trades, oldest first (docs/market-data.md); the table shows the newest first.
      const batch = Array.isArray(msg.data) ? msg.data : [msg.data];
      trades = batch.slice().reverse().concat(trades).slice(0, 20);
      renderTrades(trades);
    }
  });
  ws.addEventListener("close", fallBack);
  ws.addEventListener("error", fallBack);
}

// ---------------------------------------------------------------- charts

const CANDLE_POLL_MS = 3000;
const CHART_UP = "#0ecb81";
const CHART_DOWN = "#f6465d";
const CHART_GRID = "#26313c";
const CHART_TEXT = "#8b98a5";

function chartContext(canvas) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = "11px sans-serif";
  return ctx;
}

// Price axis labels and a scale from [low, high] to the canvas height (a margin top and bottom).
function priceScale(ctx, canvas, low, high) {
  const pad = 14;
  const span = high - low || Math.abs(high) * 0.001 || 1;
  const y = (p) => pad + (canvas.height - 2 * pad) * (1 - (p - low) / span);
  ctx.fillStyle = CHART_TEXT;
  ctx.strokeStyle = CHART_GRID;
  for (let i = 0; i <= 4; i++) {
    const p = low + (span * i) / 4;
    ctx.beginPath(); ctx.moveTo(0, y(p)); ctx.lineTo(canvas.width - 70, y(p)); ctx.stroke();
    ctx.fillText(p.toFixed(1), canvas.width - 66, y(p) + 4);
  }
  return y;
}

function drawCandles(canvas, candles) {
  const ctx = chartContext(canvas);
  canvas.dataset.candles = String(candles.length);
  if (candles.length === 0) return;
  const rows = candles.map((c) => ({ o: Number(c.open), h: Number(c.high), l: Number(c.low), c: Number(c.close) }));
  const y = priceScale(ctx, canvas, Math.min(...rows.map((r) => r.l)), Math.max(...rows.map((r) => r.h)));
  const width = (canvas.width - 80) / Math.max(rows.length, 30);
  rows.forEach((r, i) => {
    const x = 4 + i * width + width / 2;
    ctx.strokeStyle = ctx.fillStyle = r.c >= r.o ? CHART_UP : CHART_DOWN;
    ctx.beginPath(); ctx.moveTo(x, y(r.h)); ctx.lineTo(x, y(r.l)); ctx.stroke();
    const top = y(Math.max(r.o, r.c));
    ctx.fillRect(x - width * 0.35, top, width * 0.7, Math.max(1, y(Math.min(r.o, r.c)) - top));
  });
}

async function pollCandles(canvas) {
  const note = document.getElementById("candles-note");
  try {
    const body = await getJson(`/api/v1/market/candles?symbol=${encodeURIComponent(canvas.dataset.symbol)}` +
      `&interval=${canvas.dataset.interval}&limit=120`);
    drawCandles(canvas, body.candles);
    note.textContent = body.candles.length ? `${body.candles.length} candles` : "no trades yet";
  } catch (err) {
    note.textContent = "unavailable";
  }
  setTimeout(() => pollCandles(canvas), CANDLE_POLL_MS);
}

// Cumulative size from the best price outwards on each side: bids left of the mid, asks right.
function drawDepth(bids, asks) {
  const canvas = document.getElementById("depth-chart");
  if (!canvas) return;
  const ctx = chartContext(canvas);
  const cumulative = (levels) => {
    let total = 0;
    return levels.map((l) => { total += Number(l[1]); return [Number(l[0]), total]; });
  };
  const b = cumulative(bids);
  const a = cumulative(asks);
  canvas.dataset.levels = String(b.length + a.length);
  if (b.length + a.length === 0) return;
  const prices = b.concat(a).map((p) => p[0]);
  const low = Math.min(...prices);
  const high = Math.max(...prices);
  const most = Math.max(...b.concat(a).map((p) => p[1]));
  const x = (p) => 4 + (canvas.width - 8) * ((p - low) / (high - low || 1));
  const y = (q) => canvas.height - 16 - (canvas.height - 30) * (q / most);
  for (const [side, colour] of [[b, CHART_UP], [a, CHART_DOWN]]) {
    if (side.length === 0) continue;
    ctx.strokeStyle = colour;
    ctx.fillStyle = colour + "33";
    ctx.beginPath();
    ctx.moveTo(x(side[0][0]), canvas.height - 16);
    for (const [price, total] of side) ctx.lineTo(x(price), y(total));
    ctx.lineTo(x(side[side.length - 1][0]), canvas.height - 16);
    ctx.closePath(); ctx.fill(); ctx.stroke();
  }
  ctx.fillStyle = CHART_TEXT;
  ctx.fillText(low.toFixed(1), 4, canvas.height - 3);
  ctx.fillText(high.toFixed(1), canvas.width - 60, canvas.height - 3);
}

function orderTypeFields() {
  const select = document.getElementById("order-type");
  if (!select) return;
  const update = () => {
    const type = select.value;
    document.querySelector(".needs-price").hidden = !(type === "limit" || type === "stop_limit");
    document.querySelector(".needs-trigger").hidden = !type.startsWith("stop");
  };
  select.addEventListener("change", update);
  update();
}

// ---------------------------------------------------------------- approval device

function idb() {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open("strongroom-console", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("keys");
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
}

async function idbDo(mode, action) {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction("keys", mode);
    const request = action(tx.objectStore("keys"));
    tx.oncomplete = () => resolve(request.result);
    tx.onerror = () => reject(tx.error);
  });
}

const deviceSlot = () => `approver:${document.body.dataset.user}`;
const loadDevice = () => idbDo("readonly", (store) => store.get(deviceSlot()));
const saveDevice = (device) => idbDo("readwrite", (store) => store.put(device, deviceSlot()));
const hex = (bytes) => Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");

// The canonical encoding of policies/wire_format.py: big-endian unsigned integers, UTF-8 strings
// and blobs with a 16-bit length. The page encodes what it shows, so it signs what it shows.
class Writer {
  constructor() { this.parts = []; }
  uint(value, width) {
    let v = BigInt(value);
    const out = new Uint8Array(width);
    for (let i = width - 1; i >= 0; i--) { out[i] = Number(v & 0xffn); v >>= 8n; }
    if (v !== 0n) throw new Error(`value ${value} does not fit in ${width} bytes`);
    this.parts.push(out);
    return this;
  }
  u8(v) { return this.uint(v, 1); }
  u64(v) { return this.uint(v, 8); }
  u256(v) { return this.uint(v, 32); }
  text(s) { const b = new TextEncoder().encode(s); this.uint(b.length, 2); this.parts.push(b); return this; }
  bytes() {
    const out = new Uint8Array(this.parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of this.parts) { out.set(p, at); at += p.length; }
    return out;
  }
}

async function approvalDigest(subject, signedAt, expiresAt) {
  const w = new Writer().text(APPROVAL_DOMAIN);
  w.u8(SUBJECT_KINDS[subject.kind]).text(subject.subject_id).text(subject.policy_id).u64(subject.policy_version);
  w.text(subject.rule_id).text(subject.chain).text(subject.network).text(subject.source_wallet);
  w.text(subject.asset).u256(subject.amount_minor).text(subject.destination);
  w.u256(subject.fee_cap_minor).text(subject.document_sha256);
  w.u64(signedAt).u64(expiresAt);
  return new Uint8Array(await crypto.subtle.digest("SHA-256", w.bytes()));
}

function deviceForm() {
  const form = document.getElementById("device-form");
  if (!form) return;
  const hint = document.getElementById("device-hint");
  loadDevice().then((device) => {
    hint.textContent = device ? `This browser holds approval key ${device.keyId}.` : "This browser holds no approval key.";
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
      const publicHex = hex(await crypto.subtle.exportKey("raw", pair.publicKey));
      const keyId = form.elements.key_id.value;
      await saveDevice({ keyId, privateKey: pair.privateKey, publicHex });
      form.elements.public_key.value = publicHex;
      form.submit();
    } catch (err) {
      hint.textContent = `This browser cannot make an Ed25519 key: ${err.message}`;
    }
  });
}

function approveForms() {
  for (const form of document.querySelectorAll(".approve-form:not([data-bound])")) {
    form.dataset.bound = "1";
    const status = form.querySelector(".device-status");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        const device = await loadDevice();
        if (!device) { status.textContent = "Register this browser as an approval device first."; return; }
        const subject = JSON.parse(form.dataset.subject);
        const digest = await approvalDigest(subject, form.dataset.signedAt, form.dataset.expiresAt);
        if (hex(digest) !== form.dataset.digest) {
          status.textContent = "The server's digest differs from what this page shows: not signed.";
          return;
        }
        const signature = await crypto.subtle.sign({ name: "Ed25519" }, device.privateKey, digest);
        form.elements.signature.value = hex(signature);
        form.elements.key_id.value = device.keyId;
        form.submit();
      } catch (err) {
        status.textContent = `Could not sign: ${err.message}`;
      }
    });
  }
}

// ---------------------------------------------------------------- private updates

// What each page listens to on the private channels, and which of its parts it then re-reads from
// the server (the same page, rendered again; nothing is computed in the browser).
const LIVE = {
  trade: { channels: ["orders", "fills", "positions", "balances", "income"],
           parts: ["#summary", "#positions", "#closed-positions", "#open-orders", "#fills", "#income"] },
  wallet: { channels: ["withdrawals", "balances"], parts: ["#balances", "#withdrawals"] },
  treasury: { channels: ["approvals"], parts: ["#approvals"] },
  alerts: { channels: ["alerts"], parts: ["#notifications", "#deliveries"] },
};

async function refreshParts(parts) {
  const url = new URL(location.href);
  url.searchParams.set("partial", "1");
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok || response.redirected) return;
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  for (const selector of parts) {
    const now = document.querySelector(selector);
    const next = fresh.querySelector(selector);
    if (now && next) now.replaceWith(document.importNode(next, true));
  }
  approveForms();
}

function privateUpdates(url) {
  const live = LIVE[document.body.dataset.page];
  if (!live || !url) return;
  let pending = null;
  const schedule = () => {
    if (pending === null) pending = setTimeout(() => { pending = null; refreshParts(live.parts).catch(() => {}); }, 300);
  };
  const ws = new WebSocket(url);
  let attempts = 0;
  // A new listen token reaches the stream server through the app's feed a moment after it is
  // issued, so the first auth may find it unknown: wait, then try again with a fresh token.
  const authenticate = async () => {
    attempts += 1;
    if (attempts > 6) return;
    const csrf = document.querySelector("meta[name=csrf-token]").content;
    const response = await fetch("/console/stream-token", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ csrf_token: csrf }),
    });
    if (!response.ok) return;
    const token = (await response.json()).token;
    setTimeout(() => ws.send(JSON.stringify({ op: "auth", id: 1, token })), 150 * attempts);
  };
  ws.addEventListener("open", () => { authenticate().catch(() => {}); });
  ws.addEventListener("message", (event) => {
    const msg = JSON.parse(event.data);
    if (msg.type === "authenticated") ws.send(JSON.stringify({ op: "subscribe", id: 2, channels: live.channels }));
    else if (msg.type === "error" && msg.id === 1) authenticate().catch(() => {});
    else if (msg.channel && live.channels.includes(msg.channel)) schedule();
  });
}

// ---------------------------------------------------------------- cold bundle QR frames

// An animated QR code for the offline signer's camera: the frames (signer/qr.py, server-rendered
// SVG) one after another in a loop, with pause and step for a scanner that misses one. The
// signer reassembles them in any order and checks every frame and the whole file's SHA-256.
function qrPlayers() {
  for (const player of document.querySelectorAll(".qr-player")) {
    const frames = Array.from(player.querySelectorAll(".qr-frame"));
    if (frames.length === 0) continue;
    const label = player.querySelector(".frame-label");
    const toggle = player.querySelector("[data-toggle]");
    const interval = Number(player.dataset.intervalMs) || 900;
    let current = 0;
    let timer = null;
    const show = (index) => {
      current = (index + frames.length) % frames.length;
      frames.forEach((f, i) => f.classList.toggle("current", i === current));
      player.dataset.current = String(current + 1);
      label.textContent = `frame ${current + 1} of ${frames.length}`;
    };
    const play = () => { timer = setInterval(() => show(current + 1), interval); toggle.textContent = "Pause"; };
    const pause = () => { clearInterval(timer); timer = null; toggle.textContent = "Play"; };
    player.classList.add("playing");
    player.querySelector(".player-controls").hidden = false;
    toggle.addEventListener("click", () => (timer === null ? play() : pause()));
    for (const button of player.querySelectorAll("[data-step]")) {
      button.addEventListener("click", () => { pause(); show(current + Number(button.dataset.step)); });
    }
    show(0);
    if (frames.length > 1) play(); else toggle.hidden = true;
  }
}

// ---------------------------------------------------------------- start

document.addEventListener("DOMContentLoaded", () => {
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("/console/sw.js", { scope: "/console/" }).catch(() => {});
  }
  const book = document.getElementById("book-card");
  if (book && book.dataset.stream) streamMarket(book.dataset.symbol, book.dataset.stream);
  else if (book) pollMarket(book.dataset.symbol);
  const candles = document.getElementById("candle-chart");
  if (candles) pollCandles(candles);
  orderTypeFields();
  deviceForm();
  approveForms();
  qrPlayers();
  privateUpdates(document.body.dataset.stream);
});
