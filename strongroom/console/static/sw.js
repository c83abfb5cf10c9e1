// Offline shell of the Strongroom console: the stylesheet, script and an offline page are cached;
// pages and data are never cached (they are per user and must be fresh), so offline the console
// shows the shell saying it is offline rather than stale balances.
const CACHE = "strongroom-console-v1";
const SHELL = ["/console/static/console.css", "/console/static/console.js", "/console/static/icon.svg",
               "/console/static/offline.html"];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys().then((keys) => Promise.all(
    keys.filter((k) => k !== CACHE).map((k) => caches.delete(k)))).then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin) return;
  if (SHELL.includes(url.pathname)) {
    event.respondWith(caches.match(event.request).then((hit) => hit || fetch(event.request)));
    return;
  }
  if (event.request.mode === "navigate") {
    event.respondWith(fetch(event.request).catch(() => caches.match("/console/static/offline.html")));
  }
});
