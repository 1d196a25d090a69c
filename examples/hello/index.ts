// The smallest steady app: a module whose default export has fetch(request).
// Its SQLite database lives in STEADY_DATA_DIR and survives restarts and redeploys.
import { Database } from "bun:sqlite";

const db = new Database(`${process.env.STEADY_DATA_DIR ?? "."}/hello.db`, { create: true });
db.run("PRAGMA journal_mode = WAL");
db.run("PRAGMA busy_timeout = 5000"); // Litestream checkpoints the WAL beside the app
db.run("CREATE TABLE IF NOT EXISTS visits (at INTEGER NOT NULL)");

export default {
  fetch(request: Request): Response {
    db.run("INSERT INTO visits (at) VALUES (?)", [Date.now()]);
    const { count } = db.query("SELECT COUNT(*) AS count FROM visits").get() as { count: number };
    return new Response(`Hello from steady! This app has been visited ${count} times.\n`);
  },
};
