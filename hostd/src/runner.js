// steady app runner: loads the app's bundled module and serves its default export's
// fetch(request, env, ctx) on a Unix socket, then tells hostd it is ready on fd 3.
const fs = require("node:fs");

const entry = process.env.STEADY_ENTRY;
const socket = process.env.STEADY_SOCKET;
let app;
try {
  app = (await import(entry)).default;
} catch (error) {
  console.error("steady: the app's module failed to load:", error);
  process.exit(70);
}
if (!app || typeof app.fetch !== "function") {
  console.error("steady: the app's default export has no fetch(request) method");
  process.exit(78);
}
const ctx = { waitUntil() {}, passThroughOnException() {} };
Bun.serve({
  unix: socket,
  fetch: (request, server) => app.fetch(request, process.env, ctx),
  error(error) {
    console.error("steady: unhandled error in fetch:", error);
    return new Response("internal error in app\n", { status: 500 });
  },
});
fs.writeSync(3, "ready\n");
fs.closeSync(3);
