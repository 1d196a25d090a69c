// steady app runner: loads the app's bundled module and serves its default export's
// fetch(request, env, ctx) on a Unix socket, then tells hostd it is ready on fd 3, naming
// the cron schedules the app declares (`crons: { "<expression>": handler }` on the export).
// hostd triggers a schedule with a request carrying the x-steady-cron header; clients can
// never send it (the load balancer and the ingress strip every x-steady-* header).
const fs = require("node:fs");

const entry = process.env.STEADY_ENTRY;
const socket = process.env.STEADY_SOCKET;
const CRONS_MAX = 64;
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

const ctx = { waitUntil() {}, passThroughOnException() {} };
Bun.serve({
  unix: socket,
  fetch(request) {
    const schedule = request.headers.get("x-steady-cron");
    if (schedule !== null) {
      return schedule in crons ? runCron(schedule) : new Response("no such schedule\n", { status: 404 });
    }
    return app.fetch(request, process.env, ctx);
  },
  error(error) {
    console.error("steady: unhandled error in fetch:", error);
    return new Response("internal error in app\n", { status: 500 });
  },
});
fs.writeSync(3, `ready ${JSON.stringify(schedules)}\n`);
fs.closeSync(3);
