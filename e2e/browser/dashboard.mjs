// The dashboard as a person uses it, in headless Chromium: write a two-file app, Run it, land
// on its page, open its URL, see the request and the console.log line arrive; sign in, deploy
// a named app, deploy a broken version (the error shows, the old version keeps serving), roll
// back from the page. Screenshots go to $SCREENSHOTS. Prints one JSON line of figures.
//
// Usage: PLAYWRIGHT_DIR=.tools/playwright node dashboard.mjs http://localhost:PORT OWNER_TOKEN
import { strict as assert } from "node:assert";
import { createRequire } from "node:module";

// playwright-core lives in the checkout's tools folder ($PLAYWRIGHT_DIR), not beside this file.
const { chromium } = createRequire(`${process.env.PLAYWRIGHT_DIR}/`)("playwright-core");

const [base, ownerToken] = process.argv.slice(2);
const shots = process.env.SCREENSHOTS;
const WAIT_MS = 15_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const figures = {};
try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  page.on("dialog", (dialog) => dialog.accept(dialog.type() === "prompt" ? "greet.ts" : undefined));
  const firstLoad = [];
  const count = (r) => { if (r.url().startsWith(base)) firstLoad.push(Number(r.headers()["content-length"] || 0)); };
  page.on("response", count);
  let started = Date.now();
  await page.goto(`${base}/`);
  await page.getByRole("button", { name: "Run" }).waitFor();
  figures.first_load_ms = Date.now() - started;
  page.off("response", count);
  figures.first_load_bytes = firstLoad.reduce((a, b) => a + b, 0);

  // Two files: index.ts imports greet.ts (added with "Add file").
  await page.getByRole("tab", { name: "greet.ts" }).click();
  await page.getByRole("button", { name: "Delete" }).click();
  assert.equal(await page.getByRole("tab").count(), 1);
  await page.getByRole("button", { name: "Add file" }).click();
  await page.getByLabel("Source of the open file").fill('export const greet = (who: string) => `Hi, ${who}`;\n');
  await page.getByRole("tab", { name: "index.ts" }).click();
  await page.getByLabel("Source of the open file").fill(
    'import { greet } from "./greet";\nexport default {\n  fetch(request: Request) {\n' +
    '    console.log("seen", new URL(request.url).pathname);\n    return new Response(greet("browser"));\n  },\n};\n');
  assert.equal(await page.getByRole("tab").count(), 2, "two files");
  if (shots) await page.screenshot({ path: `${shots}/editor.png`, fullPage: true });

  started = Date.now();
  await page.getByRole("button", { name: "Run" }).click();
  await page.waitForURL(/#\/apps\/run-[a-z0-9]+$/, { timeout: WAIT_MS });
  figures.run_to_app_page_ms = Date.now() - started;
  const link = page.locator("#app-url[href^='http']");
  await link.waitFor({ timeout: WAIT_MS });
  const url = await link.getAttribute("href");
  assert.match(url, /^http:\/\/run-[a-z0-9]+\.localhost:\d+\/$/);

  const visitor = await context.newPage();
  const visit = await visitor.goto(`${url}hello-path`);
  assert.equal(await visit.text(), "Hi, browser");
  // From the answer in the visitor's tab to the line on the app's page, both waited on at once.
  started = Date.now();
  await Promise.all([
    page.locator("#requests tbody", { hasText: "/hello-path" }).waitFor({ timeout: WAIT_MS })
      .then(() => (figures.request_in_log_ms = Date.now() - started)),
    page.locator("#log", { hasText: "seen /hello-path" }).waitFor({ timeout: WAIT_MS })
      .then(() => (figures.console_line_in_log_ms = Date.now() - started)),
  ]);
  await page.locator("[data-fact=state]").waitFor();
  if (shots) await page.screenshot({ path: `${shots}/app-page.png`, fullPage: true });

  // Signed in: a named app, a broken version, a rollback.
  await page.getByLabel("Token").fill(ownerToken);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#who", { hasText: "signed in as" }).waitFor();
  await page.goto(`${base}/#/`);
  await page.getByLabel("Source of the open file").fill(
    'import { greet } from "./greet";\nexport default { fetch: () => new Response("v1 " + greet("x")) };\n');
  await page.getByLabel("App name").fill("dash-app");
  await page.getByRole("button", { name: "Deploy" }).click();
  await page.waitForURL(/#\/apps\/dash-app$/, { timeout: WAIT_MS });
  await page.locator("#app-url[href^='http']").waitFor({ timeout: WAIT_MS });
  const appUrl = await page.locator("#app-url").getAttribute("href");
  assert.equal(await (await visitor.goto(appUrl)).text(), "v1 Hi, x");

  await page.goto(`${base}/#/`);
  await page.getByLabel("Source of the open file").fill('export default { fetch: () => new Response("broken" };\n');
  await page.getByLabel("App name").fill("dash-app");
  await page.getByRole("button", { name: "Deploy" }).click();
  const error = page.getByRole("alert");
  await error.waitFor({ timeout: WAIT_MS });
  const errorText = await error.textContent();
  assert.match(errorText, /build failed/i, errorText);
  if (shots) await page.screenshot({ path: `${shots}/build-error.png`, fullPage: true });
  assert.equal(await (await visitor.goto(appUrl)).text(), "v1 Hi, x", "the old version keeps serving");

  await page.getByLabel("Source of the open file").fill(
    'import { greet } from "./greet";\nexport default { fetch: () => new Response("v2 " + greet("x")) };\n');
  await page.getByRole("button", { name: "Deploy" }).click();
  await page.waitForURL(/#\/apps\/dash-app$/, { timeout: WAIT_MS });
  assert.equal(await (await visitor.goto(appUrl)).text(), "v2 Hi, x");
  await page.getByRole("button", { name: "Roll back to 1" }).click();
  await page.locator("#versions tbody tr", { hasText: /^1 \(current\)/ }).waitFor({ timeout: WAIT_MS });
  assert.equal(await (await visitor.goto(appUrl)).text(), "v1 Hi, x", "rolled back from the page");
  if (shots) await page.screenshot({ path: `${shots}/app-page-after-rollback.png`, fullPage: true });
  console.log(JSON.stringify(figures));
} finally {
  await browser.close();
}
