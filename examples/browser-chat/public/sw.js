// Service worker of the example (offline.mjs prepends `FILES`, every file of dist/, and `VERSION`, a hash of them).
// Installing it caches the page, the bundle and the checkpoint; afterwards every request for them is answered from
// that cache, so the chat loads and runs with no network at all. A rebuilt model or bundle changes VERSION, so the
// browser installs the new worker beside the old one. It takes over only between page loads: when no page uses the
// old one any more, or when the page asks (its "reload" button) and then reloads. Taking over at once switched a page
// that was still loading to the new cache midway: its old model ran with the new tokenizer.
/* global FILES, VERSION */
const CACHE = `caldera-chat-${VERSION}`;

self.addEventListener('install', (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(FILES))
      // the first install has no copy to be mixed with: it serves the page that installed it from now on
      .then(() => (self.registration.active ? undefined : self.skipWaiting())),
  );
});

// the page's "reload" button: the new copy takes over, and the page reloads into it
self.addEventListener('message', (event) => {
  if (event.data === 'skipWaiting') self.skipWaiting();
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin) return;
  const path = url.pathname === '/' ? '/index.html' : url.pathname;
  event.respondWith(
    caches
      .open(CACHE)
      .then((cache) => cache.match(path))
      // not cached: not a file of the site (the loader probes optional files such as caldera.json); offline that is a 404
      .then(
        (hit) =>
          hit ?? fetch(event.request).catch(() => new Response('not found (offline)', { status: 404 })),
      ),
  );
});
