// A Hono app works as it is: its default export has fetch(request, env, ctx).
import { Hono } from "hono";

const app = new Hono();
app.get("/", (c) => c.text("Hello from Hono on steady\n"));
app.get("/greet/:name", (c) => c.json({ hello: c.req.param("name") }));

export default app;
