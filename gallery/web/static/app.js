// clip-curator: star without reloads, keyboard triage, live job progress. No build step.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

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

function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 2500);
}

function showStar(el, starred) {
  el.dataset.starred = starred ? "1" : "0";
  el.classList.toggle("starred", starred);
  const btn = el.querySelector("button.star");
  if (btn) {
    btn.setAttribute("aria-pressed", starred ? "true" : "false");
    btn.textContent = el.classList.contains("image-page") ? (starred ? "★ Starred" : "☆ Star") : (starred ? "★" : "☆");
  }
}

async function toggleStar(el) {
  const want = el.dataset.starred !== "1";
  showStar(el, want);  // optimistic: triage must not wait on the server
  try {
    const r = await api("POST", `/api/images/${el.dataset.id}/star`, { starred: want });
    showStar(el, r.starred);
  } catch (e) {
    showStar(el, !want);
    toast(`Could not star: ${e.message}`);
  }
}

function initGrid() {
  const cells = Array.from(document.querySelectorAll("#grid .cell"));
  if (!cells.length) return;
  let current = 0;
  const focus = (i) => {
    current = Math.max(0, Math.min(cells.length - 1, i));
    cells.forEach((c, j) => c.classList.toggle("current", j === current));
    cells[current].querySelector("a.open").focus({ preventScroll: true });
    cells[current].scrollIntoView({ block: "nearest" });
  };
  const perRow = () => {
    const top = cells[0].offsetTop;
    const n = cells.findIndex((c) => c.offsetTop !== top);
    return n === -1 ? cells.length : n;
  };
  cells.forEach((cell, i) => {
    cell.querySelector("button.star").addEventListener("click", (ev) => { ev.preventDefault(); toggleStar(cell); });
    cell.addEventListener("focusin", () => { current = i; cells.forEach((c, j) => c.classList.toggle("current", j === i)); });
  });
  focus(0);
  document.addEventListener("keydown", (ev) => {
    if (ev.target.matches("input, textarea, select") || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const keys = {
      ArrowRight: () => focus(current + 1), ArrowLeft: () => focus(current - 1),
      ArrowDown: () => focus(current + perRow()), ArrowUp: () => focus(current - perRow()),
      j: () => focus(current + 1), k: () => focus(current - 1),
      s: () => toggleStar(cells[current]), f: () => toggleStar(cells[current]),
      Enter: () => { window.location = cells[current].querySelector("a.open").href; },
    };
    if (keys[ev.key]) { ev.preventDefault(); keys[ev.key](); }
  });
}

function initImage() {
  const page = document.querySelector(".image-page");
  if (!page) return;
  page.querySelector("button.star").addEventListener("click", () => toggleStar(page));
  const up = page.querySelector("button.upscale");
  const upscale = async () => {
    if (!up) return;
    try {
      const r = await api("POST", `/api/images/${page.dataset.id}/upscale`, { model: up.dataset.model });
      toast(r.job ? `Upscale queued as job ${r.job}` : "Already upscaled");
    } catch (e) { toast(`Could not upscale: ${e.message}`); }
  };
  if (up) up.addEventListener("click", upscale);
  document.addEventListener("keydown", (ev) => {
    if (ev.target.matches("input, textarea, select") || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const go = (url) => { if (url) window.location = url; };
    const keys = {
      ArrowLeft: () => go(page.dataset.newer), ArrowRight: () => go(page.dataset.older),
      k: () => go(page.dataset.newer), j: () => go(page.dataset.older),
      s: () => toggleStar(page), f: () => toggleStar(page), u: upscale,
    };
    if (keys[ev.key]) { ev.preventDefault(); keys[ev.key](); }
  });
}

function renderJobs(jobs) {
  const body = document.querySelector("#jobs tbody");
  for (const j of jobs) {
    let row = body.querySelector(`tr[data-id="${j.id}"]`);
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
    const cancel = row.querySelector("button.cancel");
    if (cancel && !(["queued", "running"].includes(j.status) && !j.cancel_requested)) cancel.remove();
  }
}

function initJobs() {
  const table = document.getElementById("jobs");
  if (!table) return;
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

document.addEventListener("DOMContentLoaded", () => {
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "/" && !ev.target.matches("input, textarea")) { ev.preventDefault(); document.getElementById("q").focus(); }
  });
  initGrid();
  initImage();
  initJobs();
});
