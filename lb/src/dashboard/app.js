// The steady dashboard: write, run and watch an app. Plain JavaScript, no dependencies; it
// talks to the API on this same origin (/v1/...), with the signed-in token or, for an app run
// anonymously, the token that run returned.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const store = {
  get token() { return localStorage.getItem("steady.token") || ""; },
  set token(value) { value ? localStorage.setItem("steady.token", value) : localStorage.removeItem("steady.token"); },
  appTokens() { try { return JSON.parse(localStorage.getItem("steady.appTokens") || "{}"); } catch { return {}; } },
  rememberAppToken(app, token) {
    const tokens = this.appTokens();
    tokens[app] = token;
    localStorage.setItem("steady.appTokens", JSON.stringify(tokens));
  },
};

const STARTER = {
  "index.ts": 'import { greet } from "./greet";\n\nexport default {\n  fetch(request: Request): Response {\n    console.log("request for", new URL(request.url).pathname);\n    return new Response(greet("world") + "\\n");\n  },\n};\n',
  "greet.ts": 'export function greet(who: string): string {\n  return `Hello, ${who}!`;\n}\n',
};

// ---- API ----------------------------------------------------------------------------------

async function api(path, { method = "GET", body, app, headers = {} } = {}) {
  const token = (app && store.appTokens()[app]) || store.token;
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(`/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { message: text }; }
  if (!response.ok) {
    const error = new Error((data && data.message) || `${response.status} ${response.statusText}`);
    error.log = (data && data.log) || [];
    error.status = response.status;
    throw error;
  }
  return { data, headers: response.headers };
}

// ---- Sign-in ------------------------------------------------------------------------------

async function showWho() {
  const who = $("#who");
  const signedIn = Boolean(store.token);
  $("#signout").hidden = !signedIn;
  $("#token").hidden = $("#signin-button").hidden = $("label[for=token]").hidden = signedIn;
  if (!signedIn) { who.textContent = "anonymous: Run makes temporary apps"; return; }
  try {
    const { data } = await api("/whoami");
    who.textContent = `signed in as ${data.owner}`;
  } catch (error) {
    who.textContent = `token refused: ${error.message}`;
  }
}

$("#signin").addEventListener("submit", (event) => {
  event.preventDefault();
  store.token = $("#token").value.trim();
  $("#token").value = "";
  showWho();
  route();
});
$("#signout").addEventListener("click", () => { store.token = ""; showWho(); route(); });

// ---- Editor -------------------------------------------------------------------------------

const KEYWORDS = new Set("as async await break case catch class const continue default delete do else export extends false finally for from function if import in instanceof interface let new null return static super switch this throw true try type typeof undefined var void while with yield".split(" "));
const escapeHtml = (text) => text.replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" })[c]);

/// TypeScript highlighting: comments, strings, numbers and keywords, by one regular expression.
function highlight(source) {
  const pattern = /(\/\/[^\n]*|\/\*[\s\S]*?\*\/)|("(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|`(?:\\.|[^`\\])*`)|(\b\d[\d_.]*\b)|([A-Za-z_$][\w$]*)/g;
  let html = "", last = 0;
  for (const match of source.matchAll(pattern)) {
    html += escapeHtml(source.slice(last, match.index));
    const [text, comment, string, number, word] = match;
    const cls = comment ? "c" : string ? "s" : number ? "n" : word && KEYWORDS.has(word) ? "k" : "";
    html += cls ? `<span class="tok-${cls}">${escapeHtml(text)}</span>` : escapeHtml(text);
    last = match.index + text.length;
  }
  return html + escapeHtml(source.slice(last)) + "\n";
}

const editor = { files: null, open: "index.ts", name: "" };

function loadDraft() {
  try { editor.files = JSON.parse(localStorage.getItem("steady.draft")) || null; } catch { editor.files = null; }
  if (!editor.files || !Object.keys(editor.files).length) editor.files = { ...STARTER };
  if (!(editor.open in editor.files)) editor.open = Object.keys(editor.files)[0];
}
const saveDraft = () => localStorage.setItem("steady.draft", JSON.stringify(editor.files));

function renderTabs() {
  const tabs = $("#tabs");
  tabs.replaceChildren();
  for (const path of Object.keys(editor.files)) {
    const tab = document.createElement("button");
    tab.type = "button";
    tab.setAttribute("role", "tab");
    tab.setAttribute("aria-selected", String(path === editor.open));
    tab.tabIndex = path === editor.open ? 0 : -1;
    tab.textContent = path;
    tab.addEventListener("click", () => openFile(path));
    tab.addEventListener("keydown", (event) => {
      const paths = Object.keys(editor.files), at = paths.indexOf(path);
      const step = event.key === "ArrowRight" ? 1 : event.key === "ArrowLeft" ? -1 : 0;
      if (step) { openFile(paths[(at + step + paths.length) % paths.length]); $("[aria-selected=true]", tabs).focus(); }
    });
    tabs.append(tab);
  }
}

function openFile(path) {
  editor.open = path;
  renderTabs();
  $("#code").value = editor.files[path];
  $("#highlight").innerHTML = highlight(editor.files[path]);
}

function showEditorError(error) {
  const box = $("#editor-error");
  box.hidden = !error;
  box.textContent = error ? [error.message, ...(error.log || [])].join("\n") : "";
}

const randomName = () => `run-${Math.random().toString(36).slice(2, 8)}`;

async function ship(name, temporary) {
  showEditorError(null);
  const buttons = [$("#run"), $("#deploy")];
  buttons.forEach((b) => (b.disabled = true));
  $("#editor-error").hidden = true;
  try {
    const query = temporary ? "?ttl_s=3600" : "";
    const { headers } = await api(`/apps/${name}/deploy${query}`, { method: "POST", body: { files: editor.files } });
    const token = headers.get("x-steady-token");
    if (token) store.rememberAppToken(name, token);
    location.hash = `#/apps/${name}`;
  } catch (error) {
    showEditorError(error);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

function showEditor(app) {
  mount("#editor-view");
  loadDraft();
  $("#app-name").value = app || editor.name;
  $("#code").addEventListener("input", (event) => {
    editor.files[editor.open] = event.target.value;
    $("#highlight").innerHTML = highlight(event.target.value);
    saveDraft();
  });
  $("#code").addEventListener("scroll", (event) => {
    const pre = $("#code-wrap pre");
    pre.scrollTop = event.target.scrollTop;
    pre.scrollLeft = event.target.scrollLeft;
  });
  $("#add-file").addEventListener("click", () => {
    const path = prompt("New file name", "lib.ts");
    if (!path || path in editor.files) return;
    editor.files[path] = "";
    saveDraft();
    openFile(path);
  });
  $("#rename-file").addEventListener("click", () => {
    const path = prompt("Rename to", editor.open);
    if (!path || path in editor.files) return;
    editor.files[path] = editor.files[editor.open];
    delete editor.files[editor.open];
    saveDraft();
    openFile(path);
  });
  $("#delete-file").addEventListener("click", () => {
    if (Object.keys(editor.files).length === 1 || !confirm(`Delete ${editor.open}?`)) return;
    delete editor.files[editor.open];
    saveDraft();
    openFile(Object.keys(editor.files)[0]);
  });
  $("#run").addEventListener("click", () => ship(randomName(), true));
  $("#deploy").addEventListener("click", () => {
    const name = $("#app-name").value.trim();
    if (!name) { showEditorError(new Error("name the app to deploy it")); $("#app-name").focus(); return; }
    editor.name = name;
    ship(name, false);
  });
  openFile(editor.open);
}

// ---- App page -----------------------------------------------------------------------------

let leave = () => {};
const time = (ms) => (ms ? new Date(ms).toLocaleString() : "—");

async function showApp(name) {
  mount("#app-view");
  $("#app-title").textContent = name;
  $("#edit-app").addEventListener("click", () => editSources(name));
  const refresh = () => loadApp(name).catch((error) => ($("#facts").textContent = error.message));
  $("#refresh").addEventListener("click", refresh);
  await refresh();
  const stopLog = followLog(name);
  // The request log has no stream of its own: polled often enough to show a request within a second.
  let ticks = 0;
  const timer = setInterval(() => {
    loadRequests(name).catch(() => {});
    // State, memory and counts change too: every 2 s is enough for them.
    if (++ticks % 5 === 0) loadFacts(name).catch(() => {});
  }, 400);
  leave = () => { clearInterval(timer); stopLog(); };
}

async function loadApp(name) {
  const versions = await loadFacts(name);
  renderVersions(name, versions);
  await Promise.all([loadRequests(name), loadEnv(name)]);
}

/// Shows the app's URL and facts; returns its versions.
async function loadFacts(name) {
  const [{ data: status, headers }, { data: versions }] = await Promise.all([
    api(`/apps/${name}`, { app: name }),
    api(`/apps/${name}/versions`, { app: name }),
  ]);
  const url = headers.get("x-steady-url") || "";
  $("#app-url").href = url;
  $("#app-url").textContent = url;
  const created = versions.versions.length ? versions.versions[versions.versions.length - 1].created_at_ms : 0;
  const facts = {
    Host: status.host_id, Version: status.version, State: status.state, Created: time(created),
    "Last started": time(status.last_start_ms),
    Memory: status.memory_bytes ? `${(status.memory_bytes / 1048576).toFixed(1)} MiB` : "—",
    Requests: status.requests_total, Expires: status.expires_at_ms ? time(status.expires_at_ms) : "never",
  };
  $("#facts").replaceChildren(...Object.entries(facts).flatMap(([key, value]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = key;
    dd.textContent = String(value);
    dd.dataset.fact = key.toLowerCase().replace(" ", "-");
    return [dt, dd];
  }));
  return versions.versions;
}

function renderVersions(name, versions) {
  const rows = versions.map((v) => {
    const row = document.createElement("tr");
    row.innerHTML = `<td>${v.version}${v.current ? " (current)" : ""}</td><td>${escapeHtml(v.status)}</td><td>${time(v.created_at_ms)}</td><td></td>`;
    if (!v.current && v.status !== "failed") {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `Roll back to ${v.version}`;
      button.addEventListener("click", async () => {
        button.disabled = true;
        try { await api(`/apps/${name}/rollback`, { method: "POST", body: { version: v.version }, app: name }); }
        catch (error) { alert(error.message); }
        await loadApp(name);
      });
      row.lastChild.append(button);
    }
    return row;
  });
  $("#versions tbody").replaceChildren(...rows);
}

async function loadRequests(name) {
  const { data } = await api(`/apps/${name}/requests?tail=20`, { app: name });
  $("#requests tbody").replaceChildren(...data.requests.slice().reverse().map((r) => {
    const row = document.createElement("tr");
    row.innerHTML = `<td>${new Date(r.at_ms).toLocaleTimeString()}</td><td>${escapeHtml(r.method)}</td><td>${escapeHtml(r.path)}</td><td>${r.status}</td><td>${r.duration_ms}</td>`;
    return row;
  }));
}

async function loadEnv(name) {
  try {
    const { data } = await api(`/apps/${name}/env`, { app: name });
    const items = data.keys.map((key) => Object.assign(document.createElement("li"), { textContent: key }));
    $("#env").replaceChildren(...(items.length ? items : [Object.assign(document.createElement("li"), { textContent: "none (set with steady env set)" })]));
  } catch (error) {
    $("#env").textContent = error.message;
  }
}

/// Streams the app's log into the page; reconnects a second after a drop. Returns a stop.
function followLog(name) {
  const log = $("#log"), state = $("#log-state");
  const LINES_MAX = 1000;
  let controller = null, stopped = false;
  const append = (text) => {
    log.textContent += text;
    const lines = log.textContent.split("\n");
    if (lines.length > LINES_MAX) log.textContent = lines.slice(-LINES_MAX).join("\n");
    log.scrollTop = log.scrollHeight;
  };
  const connect = async () => {
    controller = new AbortController();
    const token = store.appTokens()[name] || store.token;
    try {
      const response = await fetch(`/v1/apps/${name}/logs?follow=true&tail=100`, {
        headers: token ? { Authorization: `Bearer ${token}` } : {}, signal: controller.signal,
      });
      if (!response.ok) throw new Error(`${response.status}`);
      log.textContent = "";
      state.textContent = "following";
      const reader = response.body.getReader(), decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        append(decoder.decode(value, { stream: true }));
      }
    } catch (error) {
      if (stopped) return;
    }
    if (!stopped) { state.textContent = "reconnecting…"; setTimeout(connect, 1000); }
  };
  connect();
  return () => { stopped = true; if (controller) controller.abort(); };
}

/// Loads an app's current sources (a tar) into the editor.
async function editSources(name) {
  const token = store.appTokens()[name] || store.token;
  const response = await fetch(`/v1/apps/${name}/source`, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  if (!response.ok) { alert(`cannot load the sources: ${response.status}`); return; }
  const files = untar(new Uint8Array(await response.arrayBuffer()));
  localStorage.setItem("steady.draft", JSON.stringify(files));
  editor.name = name;
  location.hash = `#/edit/${name}`;
}

function untar(bytes) {
  const files = {}, decoder = new TextDecoder();
  for (let at = 0; at + 512 <= bytes.length;) {
    const header = bytes.subarray(at, at + 512);
    const name = decoder.decode(header.subarray(0, 100)).replace(/\0.*$/s, "");
    if (!name) break;
    const size = parseInt(decoder.decode(header.subarray(124, 136)).replace(/\0.*$/s, "").trim() || "0", 8);
    const type = String.fromCharCode(header[156]);
    if (type === "0" || type === "\0") files[name] = decoder.decode(bytes.subarray(at + 512, at + 512 + size));
    at += 512 + Math.ceil(size / 512) * 512;
  }
  return files;
}

// ---- Apps list and routing ----------------------------------------------------------------

async function showApps() {
  mount("#apps-view");
  const list = $("#app-list");
  const item = (text, href) => {
    const li = document.createElement("li");
    if (href) li.append(Object.assign(document.createElement("a"), { href, textContent: text }));
    else li.textContent = text;
    return li;
  };
  const temporary = Object.keys(store.appTokens()).map((name) => item(`${name} (temporary)`, `#/apps/${name}`));
  try {
    const { data } = store.token ? await api("/apps") : { data: { apps: [] } };
    const own = data.apps.map((a) => item(`${a.name} — version ${a.version} on ${a.host_id}`, `#/apps/${a.name}`));
    const all = [...own, ...temporary];
    list.replaceChildren(...(all.length ? all : [item("no apps yet: write one and Run it")]));
  } catch (error) {
    list.replaceChildren(item(error.message), ...temporary);
  }
}

function mount(templateId) {
  const main = $("#main");
  main.replaceChildren($(templateId).content.cloneNode(true));
}

function route() {
  leave();
  leave = () => {};
  const hash = location.hash || "#/";
  const app = hash.match(/^#\/apps\/([a-z0-9-]+)$/);
  const edit = hash.match(/^#\/edit\/([a-z0-9-]+)$/);
  if (app) showApp(app[1]);
  else if (edit) showEditor(edit[1]);
  else if (hash === "#/apps") showApps();
  else showEditor();
}

window.addEventListener("hashchange", route);
showWho();
route();
