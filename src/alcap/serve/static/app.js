// alcap's page: caption an upload, search the library, a song's page, the library in pages.
// Plain JS against the JSON API (/docs); no build step, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 20;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function setStatus(node, text, isError = false) {
  node.textContent = text;
  node.classList.toggle("error", isError);
}

function songCard(song, withScore) {
  const title = el("h3", {}, el("a", { href: `#/song/${encodeURIComponent(song.id)}`, text: song.name || song.id }));
  if (withScore) title.append(el("span", { class: "score", text: `score ${song.score.toFixed(3)}` }));
  return el("li", { class: "song" }, title,
    el("p", { class: "caption", text: song.caption }),
    song.lyrics ? el("p", { class: "lyrics", text: song.lyrics.slice(0, 160) + (song.lyrics.length > 160 ? "…" : "") }) : null,
    el("audio", { controls: "", preload: "none", src: song.audio, "aria-label": `play ${song.name || song.id}` }));
}

// ------------------------------------------------------------------ caption an upload
let chosen = null;

function choose(file) {
  chosen = file;
  $("file-name").textContent = file ? `${file.name} (${(file.size / 1048576).toFixed(1)} MB)` : "";
}

function setUpCaption() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => choose(e.target.files[0] || null));
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); } });
  drop.setAttribute("tabindex", "0");
  drop.setAttribute("role", "button");
  for (const kind of ["dragenter", "dragover"]) drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const kind of ["dragleave", "drop"]) drop.addEventListener(kind, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); if (e.dataTransfer.files.length) choose(e.dataTransfer.files[0]); });
  $("caption-form").addEventListener("submit", (e) => { e.preventDefault(); captionUpload(); });
}

function captionUpload() {
  const status = $("caption-status"), result = $("caption-result"), button = $("caption-button");
  if (!chosen) { setStatus(status, "Choose an audio file first.", true); $("drop").focus(); return; }
  const form = new FormData();
  form.append("file", chosen);
  form.append("lyrics", $("lyrics").value);
  const add = $("add").checked;
  const request = new XMLHttpRequest();
  request.open("POST", `/api/caption${add ? "?add=true" : ""}`);
  if (add) request.setRequestHeader("Authorization", `Bearer ${$("token").value}`);
  request.responseType = "json";
  $("progress-wrap").hidden = false;
  result.hidden = true;
  button.disabled = true;
  setStatus(status, "Uploading…");
  request.upload.onprogress = (e) => {
    if (e.lengthComputable) $("progress").value = (100 * e.loaded) / e.total;
  };
  request.upload.onload = () => { $("progress").removeAttribute("value"); setStatus(status, "Listening and captioning…"); };
  request.onload = () => {
    button.disabled = false;
    $("progress-wrap").hidden = true;
    const body = request.response || {};
    if (request.status !== 200) { setStatus(status, body.error || `HTTP ${request.status}`, true); return; }
    result.textContent = body.caption;
    result.hidden = false;
    setStatus(status, `${body.duration.toFixed(1)} s of audio, captioned in ${body.seconds.toFixed(1)} s` +
      (body.id ? " and added to the library." : "."));
  };
  request.onerror = () => { button.disabled = false; $("progress-wrap").hidden = true; setStatus(status, "The server could not be reached.", true); };
  request.send(form);
}

// ------------------------------------------------------------------ search
async function search(e) {
  e.preventDefault();
  const status = $("search-status"), list = $("results");
  const q = $("query").value.trim();
  if (!q) return;
  setStatus(status, "Searching…");
  list.replaceChildren();
  try {
    const body = await api(`/api/search?q=${encodeURIComponent(q)}&mode=${$("mode").value}&k=10`);
    list.replaceChildren(...body.results.map((song) => songCard(song, true)));
    setStatus(status, body.results.length ? `${body.results.length} songs` : "No songs match.");
  } catch (error) { setStatus(status, error.message, true); }
}

// ------------------------------------------------------------------ a song, the library
async function showSong(id) {
  const view = $("view-song");
  view.replaceChildren(el("p", { class: "status", text: "Loading…" }));
  try {
    const [song, similar] = await Promise.all([api(`/api/songs/${encodeURIComponent(id)}`),
      api(`/api/songs/${encodeURIComponent(id)}/similar?k=5`)]);
    const meta = Object.entries(song.metadata || {}).map(([k, v]) => `${k}: ${v}`).join(" · ");
    view.replaceChildren(
      el("h1", { text: song.name || song.id }),
      el("p", { class: "meta", text: [song.duration ? `${song.duration.toFixed(1)} s` : null, meta || null, `id ${song.id}`].filter(Boolean).join(" · ") }),
      el("blockquote", { class: "result", text: song.caption }),
      el("audio", { controls: "", preload: "metadata", src: song.audio }),
      el("h2", { text: "Lyrics" }), el("p", { class: "pre", text: song.lyrics || "(an instrumental: no lyrics)" }),
      el("h2", { text: "Similar songs" }), el("ol", { class: "songs" }, ...similar.results.map((s) => songCard(s, true))));
    view.querySelector("h1").setAttribute("tabindex", "-1");
    view.querySelector("h1").focus();
  } catch (error) { view.replaceChildren(el("p", { class: "status error", text: error.message })); }
}

async function showLibrary(page) {
  const view = $("view-library");
  view.replaceChildren(el("p", { class: "status", text: "Loading…" }));
  try {
    const body = await api(`/api/songs?offset=${page * PAGE}&limit=${PAGE}`);
    const pages = Math.max(1, Math.ceil(body.total / PAGE));
    const previous = el("button", { class: "secondary", type: "button", text: "← Previous" });
    const next = el("button", { class: "secondary", type: "button", text: "Next →" });
    previous.disabled = page <= 0;
    next.disabled = page + 1 >= pages;
    previous.onclick = () => { location.hash = `#/library/${page}`; };
    next.onclick = () => { location.hash = `#/library/${page + 2}`; };
    view.replaceChildren(el("h1", { text: `Library: ${body.total} songs` }),
      el("ol", { class: "songs", start: String(page * PAGE + 1) }, ...body.songs.map((s) => songCard(s, false))),
      el("div", { class: "pager" }, previous, el("span", { text: `page ${page + 1} of ${pages}` }), next));
  } catch (error) { view.replaceChildren(el("p", { class: "status error", text: error.message })); }
}

// ------------------------------------------------------------------ routing and health
function route() {
  const [, view = "", arg = ""] = location.hash.split("/");
  for (const section of document.querySelectorAll(".view")) section.hidden = true;
  for (const link of document.querySelectorAll("nav a[data-nav]")) link.removeAttribute("aria-current");
  if (view === "song" && arg) { $("view-song").hidden = false; showSong(decodeURIComponent(arg)); return; }
  if (view === "library") {
    $("view-library").hidden = false;
    document.querySelector('[data-nav="library"]').setAttribute("aria-current", "page");
    showLibrary(Math.max(0, (parseInt(arg, 10) || 1) - 1));
    return;
  }
  $("view-home").hidden = false;
  document.querySelector('[data-nav="home"]').setAttribute("aria-current", "page");
}

async function health() {
  try {
    const body = await api("/healthz");
    $("health").textContent = body.status === "ok" ? `${body.songs} songs · model ready` : "model loading…";
    if (body.status !== "ok") setTimeout(health, 2000);
    $("add-details").hidden = !body.writable;
  } catch (error) { $("health").textContent = `not ready: ${error.message}`; setTimeout(health, 3000); }
}

window.addEventListener("hashchange", route);
setUpCaption();
$("search-form").addEventListener("submit", search);
route();
health();
