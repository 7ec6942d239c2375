// clip-curator: triage at keyboard speed. No build step, no inline script (the CSP forbids it).
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
const typing = (ev) => ev.target.matches("input, textarea, select") || ev.ctrlKey || ev.metaKey || ev.altKey;

async function api(method, url, body) {
  const res = await fetch(url, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

const bulk = (ids, action, extra = {}) => api("POST", "/api/images/bulk", { ids, action, ...extra });

// --- toast with Undo, and the undo stack ---------------------------------------------------

const undoStack = [];

function toast(text, undoable = false) {
  const t = document.getElementById("toast");
  t.querySelector(".text").textContent = text;
  t.querySelector(".undo").hidden = !undoable;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), undoable ? 6000 : 2500);
}

function remember(label, revert) {
  undoStack.push({ label, revert });
  if (undoStack.length > 100) undoStack.shift();
}

async function undo() {
  const last = undoStack.pop();
  if (!last) { toast("Nothing to undo"); return; }
  try { await last.revert(); toast(`Undone: ${last.label}`); } catch (e) { toast(`Could not undo: ${e.message}`); }
}

// --- cells: what each shows ------------------------------------------------------------------

function showStar(el, starred) {
  el.dataset.starred = starred ? "1" : "0";
  el.classList.toggle("starred", starred);
  const btn = el.querySelector("button.star");
  if (!btn) return;
  btn.setAttribute("aria-pressed", starred ? "true" : "false");
  btn.textContent = el.classList.contains("image-page") ? (starred ? "★ Starred" : "☆ Star") : (starred ? "★" : "☆");
}

function showRating(el, rating) {
  el.dataset.rating = String(rating);
  const r = el.querySelector(".rating");
  if (r) r.textContent = rating ? "●".repeat(rating) : (el.classList.contains("image-page") ? "unrated" : "");
}

function groupBy(ids, valueOf) {
  const groups = new Map();
  for (const id of ids) {
    const v = valueOf(id);
    if (!groups.has(v)) groups.set(v, []);
    groups.get(v).push(id);
  }
  return groups;
}

// Each action changes what the given elements show, asks the server, and can be undone.
const actions = {
  async star(els) {
    const want = !els.every((el) => el.dataset.starred === "1");
    const before = new Map(els.map((el) => [Number(el.dataset.id), el.dataset.starred === "1"]));
    els.forEach((el) => showStar(el, want));  // optimistic: triage must not wait on the server
    try {
      await bulk([...before.keys()], want ? "star" : "unstar");
    } catch (e) { els.forEach((el) => showStar(el, before.get(Number(el.dataset.id)))); throw e; }
    remember(want ? "star" : "unstar", async () => {
      for (const [was, ids] of groupBy([...before.keys()], (id) => before.get(id))) {
        await bulk(ids, was ? "star" : "unstar");
        ids.forEach((id) => byId(id).forEach((el) => showStar(el, was)));
      }
    });
    return want ? "Starred" : "Unstarred";
  },
  async rate(els, rating) {
    const before = new Map(els.map((el) => [Number(el.dataset.id), Number(el.dataset.rating || 0)]));
    els.forEach((el) => showRating(el, rating));
    try { await bulk([...before.keys()], "rate", { rating }); } catch (e) {
      els.forEach((el) => showRating(el, before.get(Number(el.dataset.id)))); throw e;
    }
    remember(`rating ${rating}`, async () => {
      for (const [was, ids] of groupBy([...before.keys()], (id) => before.get(id))) {
        await bulk(ids, "rate", { rating: was });
        ids.forEach((id) => byId(id).forEach((el) => showRating(el, was)));
      }
    });
    return rating ? `Rated ${rating}` : "Rating cleared";
  },
  async reject(els) { return move(els, "reject", "restore", "Rejected"); },
  async restore(els) { return move(els, "restore", "reject", "Restored"); },
  async upscale(els) {
    const ids = els.map((el) => Number(el.dataset.id));
    const r = await bulk(ids, "upscale");
    return r.job ? `Upscale queued as job ${r.job}` : "Already upscaled";
  },
  async collect(els) {
    const name = (window.prompt("Add to which collection? (a new name makes one)", actions.lastCollection || "") || "").trim();
    if (!name) return "Nothing collected";
    actions.lastCollection = name;
    const r = await bulk(els.map((el) => Number(el.dataset.id)), "collect", { collection: name });
    if (r.ids.length) remember(`collect ${r.ids.length}`, () => bulk(r.ids, "uncollect", { collection: name }));
    return `Added ${r.ids.length} image(s) to ${name}`;
  },
};

// Reject or restore: the images (with their upscales) leave this view at once, and come back on undo.
async function move(els, action, inverse, done) {
  const r = await bulk(els.map((el) => Number(el.dataset.id)), action);
  const page = document.querySelector(".image-page");
  if (page) { page.dataset.rejected = action === "reject" ? "1" : "0"; updateRejectButton(page); }
  const leaving = !page && (action === "reject") !== (grid && grid.dataset.view === "trash");
  if (leaving) hide(r.ids);
  remember(`${action} ${r.ids.length}`, async () => {
    await bulk(r.ids, inverse);
    if (page) { page.dataset.rejected = inverse === "reject" ? "1" : "0"; updateRejectButton(page); }
    if (leaving) {
      unhide(r.ids);
      const back = cells().find((c) => r.ids.includes(Number(c.dataset.id)));
      if (back) focusCell(back);  // undo returns to the image it brought back
    }
  });
  return `${done} ${r.ids.length} image(s)`;
}

async function act(name, els, ...args) {
  if (!els.length) return;
  try { toast(await actions[name](els, ...args), name !== "upscale"); } catch (e) { toast(`Could not ${name}: ${e.message}`); }
}

// --- the grid --------------------------------------------------------------------------------

let grid = null;
let current = null;
const selected = new Set();
let anchor = null;
let loading = null;

const byId = (id) => Array.from(document.querySelectorAll(`.cell[data-id="${Number(id)}"], .image-page[data-id="${Number(id)}"]`));
const cells = () => Array.from(grid.querySelectorAll(".cell")).filter((c) => !c.hidden);
const targets = () => (selected.size ? cells().filter((c) => selected.has(c.dataset.id)) : (current ? [current] : []));

function focusCell(cell, scroll = true) {
  if (!cell) return;
  if (current) current.classList.remove("current");
  current = cell;
  cell.classList.add("current");
  cell.querySelector("a.open").focus({ preventScroll: true });
  if (scroll) cell.scrollIntoView({ block: "nearest" });
  if (lightbox.open) lightbox.show(cell);
}

function perRow() {
  const list = cells();
  if (!list.length) return 1;
  const top = list[0].offsetTop;
  const n = list.findIndex((c) => c.offsetTop !== top);
  return n === -1 ? list.length : n;
}

async function moveBy(delta) {
  let list = cells();
  let i = Math.max(0, list.indexOf(current));
  if (i + delta >= list.length && grid.dataset.next) {
    await loadMore();
    list = cells();
  }
  focusCell(list[Math.max(0, Math.min(list.length - 1, i + delta))]);
}

function screenful() {
  const c = cells()[0];
  return c ? Math.max(1, Math.floor(window.innerHeight / c.offsetHeight)) * perRow() : 1;
}

async function fetchCells(url) {
  const res = await fetch(url, { credentials: "same-origin" });
  const html = await res.text();
  const doc = new DOMParser().parseFromString(`<ul>${html}</ul>`, "text/html");
  const info = doc.querySelector("template.page-info");
  return { items: Array.from(doc.querySelectorAll("li.cell")), info: info ? info.dataset : {}, ok: res.ok };
}

function adopt(items) { items.forEach(wireCell); }

async function loadMore() {
  if (!grid.dataset.next) return;
  if (!loading) {
    loading = (async () => {
      const { items, info } = await fetchCells(grid.dataset.next);
      items.forEach((li) => grid.append(li));
      adopt(items);
      grid.dataset.next = info.next || "";
      const pager = document.querySelector(".pager");
      if (pager && !grid.dataset.next) pager.hidden = true;
    })().finally(() => { loading = null; });
  }
  return loading;
}

function hide(ids) {
  const list = cells();
  const set = new Set(ids.map(String));
  let next = current;
  if (current && set.has(current.dataset.id)) {
    const i = list.indexOf(current);
    next = list.slice(i + 1).find((c) => !set.has(c.dataset.id)) || list.slice(0, i).reverse().find((c) => !set.has(c.dataset.id));
  }
  grid.querySelectorAll(".cell").forEach((c) => { if (set.has(c.dataset.id)) { c.hidden = true; c.classList.add("gone"); selected.delete(c.dataset.id); c.classList.remove("selected"); } });
  if (next && next !== current) focusCell(next);
  if (!cells().length && lightbox.open) lightbox.close();
  showEmpty();
}

function unhide(ids) {
  const set = new Set(ids.map(String));
  grid.querySelectorAll(".cell.gone").forEach((c) => { if (set.has(c.dataset.id)) { c.hidden = false; c.classList.remove("gone"); } });
  showEmpty();
}

function showEmpty() {
  const empty = document.querySelector("p.empty");
  if (empty) empty.hidden = cells().length > 0;
}

function select(cell, on) {
  const id = cell.dataset.id;
  if (on === undefined) on = !selected.has(id);
  if (on) selected.add(id); else selected.delete(id);
  cell.classList.toggle("selected", on);
  document.body.classList.toggle("selecting", selected.size > 0);
}

function selectRange(to) {
  const list = cells();
  const a = list.indexOf(anchor || current || to);
  const b = list.indexOf(to);
  list.slice(Math.min(a, b), Math.max(a, b) + 1).forEach((c) => select(c, true));
}

function clearSelection() { cells().forEach((c) => select(c, false)); }

function toggleStack(lead) {
  const members = grid.querySelectorAll(`.cell.member[data-stack="${lead.dataset.id}"]:not(.gone)`);
  const open = lead.classList.toggle("expanded");
  members.forEach((m) => { m.hidden = !open; });
}

function wireCell(cell) {
  cell.querySelector("button.star").addEventListener("click", (ev) => { ev.preventDefault(); focusCell(cell, false); act("star", [cell]); });
  const stack = cell.querySelector("button.stack");
  if (stack) stack.addEventListener("click", (ev) => { ev.preventDefault(); toggleStack(cell); });
  cell.querySelector("a.open").addEventListener("click", (ev) => {
    if (ev.shiftKey) { ev.preventDefault(); selectRange(cell); anchor = cell; }
  });
  cell.addEventListener("focusin", () => { if (current !== cell) { if (current) current.classList.remove("current"); current = cell; cell.classList.add("current"); } });
}

// --- the lightbox ------------------------------------------------------------------------------

const lightbox = {
  open: false,
  el: null,
  show(cell) {
    const box = this.el;
    box.querySelector("img").src = cell.dataset.file;
    box.querySelector("img").classList.toggle("small", cell.classList.contains("small"));
    box.querySelector("img").alt = cell.dataset.prompt;
    box.querySelector(".lb-prompt").textContent = cell.dataset.prompt || "(no prompt)";
    const facts = [cell.dataset.size, cell.dataset.seed !== "" ? `seed ${cell.dataset.seed}` : null,
      cell.dataset.model || cell.dataset.kind].filter(Boolean);
    box.querySelector(".lb-facts").textContent = facts.join(" · ");
    const state = [cell.dataset.starred === "1" ? "★" : "", Number(cell.dataset.rating) ? "●".repeat(Number(cell.dataset.rating)) : ""];
    box.querySelector(".lb-state").textContent = state.join(" ");
    box.dataset.id = cell.dataset.id;
  },
  openAt(cell) { if (!cell) return; this.open = true; this.el.hidden = false; document.body.classList.add("lightbox-open"); this.show(cell); },
  close() { this.open = false; this.el.hidden = true; document.body.classList.remove("lightbox-open"); if (current) focusCell(current); },
};

function gridKeys(ev) {
  if (typing(ev)) return;
  const k = ev.key;
  const inTrash = grid.dataset.view === "trash";
  const map = {
    ArrowRight: () => moveBy(1), ArrowLeft: () => moveBy(-1), j: () => moveBy(1), k: () => moveBy(-1),
    ArrowDown: () => moveBy(lightbox.open ? 1 : perRow()), ArrowUp: () => moveBy(lightbox.open ? -1 : -perRow()),
    PageDown: () => moveBy(screenful()), PageUp: () => moveBy(-screenful()),
    Home: () => focusCell(cells()[0]), End: () => focusCell(cells().slice(-1)[0]),
    Enter: () => (lightbox.open ? lightbox.close() : lightbox.openAt(current)), " ": () => (lightbox.open ? lightbox.close() : lightbox.openAt(current)),
    Escape: () => (lightbox.open ? lightbox.close() : clearSelection()),
    o: () => { if (current) window.location = current.dataset.page; },
    s: () => act("star", targets()), f: () => act("star", targets()),
    x: () => { if (!inTrash) act("reject", targets()); },
    r: () => act("restore", inTrash ? targets() : []),
    z: () => undo(), u: () => act("upscale", targets()), c: () => act("collect", targets()),
    v: () => { if (current) { select(current); anchor = current; } },
    a: () => cells().forEach((c) => select(c, true)),
    "?": () => { const h = document.getElementById("help"); h.hidden = !h.hidden; },
  };
  if (/^[0-5]$/.test(k)) map[k] = () => act("rate", targets(), Number(k));
  if (map[k]) { ev.preventDefault(); map[k](); }
}

function initGrid() {
  grid = document.getElementById("grid");
  if (!grid) return;
  lightbox.el = document.getElementById("lightbox");
  lightbox.el.addEventListener("click", (ev) => { if (ev.target === lightbox.el) lightbox.close(); });
  const info = grid.querySelector("template.page-info");
  grid.dataset.next = info ? info.dataset.next : "";
  adopt(cells());
  focusCell(cells()[0], false);
  document.addEventListener("keydown", gridKeys);
  const pager = document.querySelector(".pager");
  if (pager && "IntersectionObserver" in window) {
    new IntersectionObserver((entries) => { if (entries.some((e) => e.isIntersecting)) loadMore(); },
      { rootMargin: "600px" }).observe(pager);
  }
  const shown = document.querySelector(".reject-shown");
  if (shown) shown.addEventListener("click", () => act("reject", cells()));
  const emptyForm = document.querySelector("form.empty-trash");
  if (emptyForm) emptyForm.addEventListener("submit", (ev) => { if (!window.confirm(emptyForm.dataset.confirm)) ev.preventDefault(); });
  initTyping();
  watchActivity();
}

// --- search as you type --------------------------------------------------------------------

function initTyping() {
  const box = document.getElementById("q");
  if (!box || !["gallery"].includes(grid.dataset.view)) return;
  let timer = null;
  let asked = 0;
  box.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const q = box.value.trim();
      const ticket = ++asked;
      const url = q ? `/cells/gallery?q=${encodeURIComponent(q)}` : "/cells/gallery";
      const { items, info } = await fetchCells(url);
      if (ticket !== asked) return;  // a later keystroke has been answered, or will be
      grid.querySelectorAll(".cell").forEach((c) => c.remove());
      items.forEach((li) => grid.append(li));
      adopt(items);
      grid.dataset.next = info.next || "";
      grid.dataset.sorted = q ? "1" : "0";
      const error = document.querySelector("p.error");
      error.textContent = info.error || "";
      error.hidden = !info.error;
      document.querySelector("p.empty").textContent = info.empty || "";
      const h1 = document.querySelector(".toolbar h1");
      h1.textContent = q ? "Search: " : "Gallery";
      if (q) { const quote = document.createElement("q"); quote.className = "query"; quote.textContent = q; h1.append(quote); }
      history.replaceState(null, "", q ? `/?q=${encodeURIComponent(q)}` : "/");
      current = null;
      focusCell(cells()[0], false);
      showEmpty();
    }, 250);
  });
}

// --- live activity: a running job's progress, and its new images arriving --------------------

function watchActivity() {
  const panel = document.getElementById("activity");
  let lastDone = null;
  const poll = async () => {
    try {
      const jobs = (await api("GET", "/api/jobs?active=1")).jobs;
      const running = jobs.filter((j) => j.status === "running");
      panel.hidden = !running.length;
      panel.textContent = running.map((j) => `job ${j.id}: ${j.done}/${j.n}` + (j.steps ? `, step ${j.step}/${j.steps}` : "")).join(" · ");
      const done = jobs.reduce((s, j) => s + j.done, 0) + running.length * 1000;
      if (lastDone !== null && done !== lastDone) await arrivals();
      lastDone = done;
    } catch (e) { /* keep polling */ }
    setTimeout(poll, 2000);
  };
  setTimeout(poll, 2000);
}

async function arrivals() {
  // New images join the top of the newest-first gallery, never a sorted view or a later page.
  if (grid.dataset.view !== "gallery" || grid.dataset.sorted === "1") return;
  const first = grid.querySelector(".cell:not(.member)");
  const url = first ? `/cells/gallery?after=${first.dataset.id}` : "/cells/gallery";
  const { items } = await fetchCells(url);
  items.reverse().forEach((li) => { if (!byId(li.dataset.id).length) grid.prepend(li); });
  adopt(items);
  showEmpty();
}

// --- the image page --------------------------------------------------------------------------

function updateRejectButton(page) {
  const b = page.querySelector("button.reject");
  if (b) b.textContent = page.dataset.rejected === "1" ? "Restore" : "Reject";
}

function initImage() {
  const page = document.querySelector(".image-page");
  if (!page) return;
  page.querySelector("button.star").addEventListener("click", () => act("star", [page]));
  const rejectBtn = page.querySelector("button.reject");
  const rejectOrRestore = () => act(page.dataset.rejected === "1" ? "restore" : "reject", [page]);
  if (rejectBtn) rejectBtn.addEventListener("click", rejectOrRestore);
  const up = page.querySelector("button.upscale");
  const upscale = () => { if (up) act("upscale", [page]); };
  if (up) up.addEventListener("click", upscale);
  document.addEventListener("keydown", (ev) => {
    if (typing(ev)) return;
    const go = (url) => { if (url) window.location = url; };
    const keys = {
      ArrowLeft: () => go(page.dataset.newer), ArrowRight: () => go(page.dataset.older),
      k: () => go(page.dataset.newer), j: () => go(page.dataset.older),
      s: () => act("star", [page]), f: () => act("star", [page]), u: upscale, x: rejectOrRestore, z: () => undo(),
    };
    if (/^[0-5]$/.test(ev.key)) keys[ev.key] = () => act("rate", [page], Number(ev.key));
    if (keys[ev.key]) { ev.preventDefault(); keys[ev.key](); }
  });
}

// --- the jobs page ---------------------------------------------------------------------------

function clock(seconds) {
  if (seconds === null || seconds === undefined || seconds === "") return "";
  const s = Math.round(Number(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${r}s` : `${r}s`;
}

function showTime(cell, duration, eta) {
  cell.textContent = [duration ? `took ${clock(duration)}` : "", eta ? `about ${clock(eta)} left` : ""].filter(Boolean).join(", ");
}

function renderJobs(jobs) {
  const body = document.querySelector("#jobs tbody");
  for (const j of jobs) {
    const row = body.querySelector(`tr[data-id="${j.id}"]`);
    if (!row) { window.location.reload(); return; }
    row.className = `status-${j.status}`;
    const status = row.querySelector(".status");
    status.textContent = j.status;
    if (j.error) { const d = document.createElement("div"); d.className = "error"; d.textContent = j.error; status.append(d); }
    const p = row.querySelector("progress");
    p.max = j.n; p.value = j.done;
    row.querySelector(".progress span").textContent = `${j.done}/${j.n}`;
    let step = row.querySelector(".step");
    if (j.status === "running" && j.steps) {
      if (!step) { step = document.createElement("span"); step.className = "step"; row.querySelector(".progress").append(" ", step); }
      step.textContent = `step ${j.step}/${j.steps}`;
    } else if (step) step.remove();
    const madeOn = row.querySelector(".made-on");
    madeOn.replaceChildren(...(j.made_on || []).map((w) => {
      const d = document.createElement("div");
      d.textContent = `${w.node || "?"} · ${w.device || "?"} ×${w.images}`;
      return d;
    }));
    row.querySelector(".started").textContent = (j.started || "").slice(0, 19).replace("T", " ");
    showTime(row.querySelector(".time"), j.duration, j.eta);
    const cancel = row.querySelector("button.cancel");
    if (cancel && !(["queued", "running"].includes(j.status) && !j.cancel_requested)) cancel.remove();
  }
}

function initJobs() {
  const table = document.getElementById("jobs");
  if (!table) return;
  table.querySelectorAll("td.time").forEach((c) => showTime(c, c.dataset.duration, c.dataset.eta));
  table.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button.cancel");
    if (!btn) return;
    const id = btn.closest("tr").dataset.id;
    try { await api("POST", `/api/jobs/${id}/cancel`); toast(`Cancelling job ${id}`); btn.remove(); }
    catch (e) { toast(`Could not cancel: ${e.message}`); }
  });
  const poll = async () => {
    try { renderJobs((await api("GET", "/api/jobs")).jobs); } catch (e) { /* keep polling */ }
    setTimeout(poll, 1000);
  };
  setTimeout(poll, 1000);
}

// A page restored from the back-forward cache would show stars and rejects as they were: reload it.
window.addEventListener("pageshow", (ev) => { if (ev.persisted) window.location.reload(); });

document.addEventListener("DOMContentLoaded", () => {
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "/" && !ev.target.matches("input, textarea")) { ev.preventDefault(); document.getElementById("q").focus(); }
  });
  document.querySelector("#toast .undo").addEventListener("click", () => undo());
  initGrid();
  initImage();
  initJobs();
});
