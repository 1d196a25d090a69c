// steady app runner. Starts before it knows its app: once Bun is up it says `warm` on fd 3
// and waits for one JSON line on stdin, {"env": {...}}, sent when hostd has placed the app's
// bundle at /app and its data at /data. Then it loads the bundled module, serves its default
// export's fetch(request, env, ctx) on a Unix socket and says `ready [schedules]` on fd 3,
// naming the cron schedules the app declares (`crons: { "<expression>": handler }`).
// hostd triggers a schedule with a request carrying the x-steady-cron header; clients can
// never send it (the load balancer and the ingress strip every x-steady-* header).
const fs = require("node:fs");
// Loaded while warm, so an app's first use of SQLite costs nothing at its cold start.
require("bun:sqlite");

const entry = process.env.STEADY_ENTRY;
const socket = process.env.STEADY_SOCKET;
const CRONS_MAX = 64;
// The app's environment (up to 1 MiB of names and values, JSON-quoted) rides on this line.
const ASSIGNMENT_BYTES_MAX = 8 * 1024 * 1024;

async function readAssignment() {
  const reader = Bun.stdin.stream().getReader();
  const decoder = new TextDecoder();
  let text = "";
  // Only the newest chunk is searched: a long line arrives in many chunks.
  for (let chunk = ""; !chunk.includes("\n"); ) {
    const { value, done } = await reader.read();
    if (done) process.exit(0); // hostd let this sandbox go without an app
    chunk = decoder.decode(value, { stream: true });
    text += chunk;
    if (text.length > ASSIGNMENT_BYTES_MAX) {
      console.error(`steady: assignment longer than ${ASSIGNMENT_BYTES_MAX} bytes`);
      process.exit(78);
    }
  }
  reader.releaseLock();
  return JSON.parse(text.slice(0, text.indexOf("\n")));
}

fs.writeSync(3, "warm\n");
const assignment = await readAssignment();
for (const [key, value] of Object.entries(assignment.env ?? {})) process.env[key] = String(value);
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
const crons = app.crons ?? {};
const schedules = Object.keys(crons);
if (typeof crons !== "object" || schedules.length > CRONS_MAX || schedules.some((s) => typeof crons[s] !== "function")) {
  console.error(`steady: crons must map at most ${CRONS_MAX} cron expressions to functions`);
  process.exit(78);
}

async function runCron(schedule) {
  const started = Date.now();
  try {
    await crons[schedule]({ cron: schedule, scheduledTime: started });
    return new Response("ok\n");
  } catch (error) {
    console.error(`steady: cron ${JSON.stringify(schedule)} threw:`, error);
    return new Response(String(error?.stack ?? error) + "\n", { status: 500 });
  }
}

// An app with `websocket` handlers ({ open, message, close }, as Bun.serve takes them) accepts a
// WebSocket by calling ctx.upgrade(request, { data }) in fetch and returning nothing.
const websocket = app.websocket && typeof app.websocket.message === "function" ? app.websocket : undefined;
Bun.serve({
  unix: socket,
  fetch(request, server) {
    const schedule = request.headers.get("x-steady-cron");
    if (schedule !== null) {
      return schedule in crons ? runCron(schedule) : new Response("no such schedule\n", { status: 404 });
    }
    const received = request;
    const ctx = {
      waitUntil() {},
      passThroughOnException() {},
      // Bun upgrades only the request its server received.
      upgrade: (_req, options) => (websocket ? server.upgrade(received, options) : false),
    };
    // The app is reached over plain HTTP; a request that came over TLS shows its real URL,
    // so links and redirects built from request.url stay on https. X-Forwarded-Proto is the
    // LB's own (it replaces what a client sends).
    if (request.headers.get("x-forwarded-proto") === "https" && request.url.startsWith("http:")) {
      request = new Request("https:" + request.url.slice("http:".length), request);
    }
    return app.fetch(request, process.env, ctx);
  },
  websocket,
  error(error) {
    console.error("steady: unhandled error in fetch:", error);
    return new Response("internal error in app\n", { status: 500 });
  },
});
fs.writeSync(3, `ready ${JSON.stringify(schedules)}\n`);
fs.closeSync(3);
