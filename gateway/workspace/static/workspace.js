// The workspace's own script: live progress from the job's event stream, the
// seed's dice. Every page works without it (plain forms and links); htmx,
// when there, only spares full page loads.
"use strict";

// "STAGE_STATE_RUNNING" / "JOB_STATE_SUCCEEDED" -> "running" / "succeeded"
function shortState(name) {
  return String(name || "").replace(/^[A-Z]+_STATE_/, "").toLowerCase();
}

function setState(el, state) {
  if (!el) return;
  el.dataset.state = state;
  const badge = el.querySelector(":scope > .stage-state, :scope .job-state");
  if (badge) {
    badge.textContent = state;
    badge.className = badge.className.replace(/state-\S+/, "state-" + state);
  }
}

// Keep one progress panel current from /jobs/{id}/events (SSE; the browser
// reconnects with Last-Event-ID, and the gateway resumes from there).
function watch(panel) {
  const url = panel.dataset.events;
  if (!url || panel.dataset.watching) return;
  panel.dataset.watching = "1";
  const source = new EventSource(url);
  const stage = (name) => panel.querySelector(`.stage[data-stage="${CSS.escape(name)}"]`);
  // How many stream events this page applied (the browser tests read it).
  const counted = () => {
    document.body.dataset.liveEvents = String(Number(document.body.dataset.liveEvents || 0) + 1);
  };
  ["stage_started", "stage_progress", "stage_finished", "finished"].forEach((kind) =>
    source.addEventListener(kind, counted));

  source.addEventListener("stage_started", (e) => {
    const data = JSON.parse(e.data).stage_started;
    setState(stage(data.stage), "running");
    setState(panel, "running");
    const queued = panel.querySelector(".queued");
    if (queued) queued.hidden = true;
  });
  // A queued job's place in the queue: from the stream's first snapshot (the page
  // was rendered earlier: the queue may have moved in between, with no `queued`
  // event to say so), then from each `queued` event (the gateway re-reads it).
  const showPlace = (n) => {
    const place = panel.querySelector(".queue-position");
    if (!place) return;
    place.querySelector(".queue-n").textContent = String(n);
    place.hidden = n < 1;
  };
  source.addEventListener("snapshot", (e) => {
    showPlace(JSON.parse(e.data).queue_position || 0);
  });
  source.addEventListener("queued", (e) => {
    showPlace(JSON.parse(e.data).queue_position || 0);
  });
  source.addEventListener("stage_progress", (e) => {
    const data = JSON.parse(e.data).stage_progress;
    const row = stage(data.stage);
    if (!row) return;
    const bar = row.querySelector("progress");
    bar.max = data.total_steps || 1;
    bar.value = data.step || 0;
    row.querySelector(".stage-step").textContent = `step ${data.step} of ${data.total_steps}`;
  });
  source.addEventListener("stage_finished", (e) => {
    const run = JSON.parse(e.data).stage_finished.run;
    const row = stage(run.stage);
    if (!row) return;
    setState(row, shortState(run.state));
    row.querySelector(".cache-hit").hidden = !run.cache_hit;
    if (shortState(run.state) === "succeeded") row.querySelector("progress").value = row.querySelector("progress").max;
  });
  source.addEventListener("finished", () => {
    source.close();
    reload(panel);
  });
  source.addEventListener("error", (e) => {
    if (e.data) {  // the gateway's own error event (not a dropped connection)
      source.close();
      const p = document.createElement("p");
      p.className = "form-error";
      p.setAttribute("role", "alert");
      p.textContent = JSON.parse(e.data).error.message;
      panel.append(p);
    }
  });
}

// The finished job from the server: final states, thumbnails, no cancel button.
async function reload(panel) {
  // On a job page that was waiting for this run (data-wait), the whole page
  // changes (the new version's images, its state): swap the page's main part
  // in place, keeping this page (and its event count) rather than reloading.
  if (document.querySelector("[data-wait]")) return refreshMain();
  const reply = await fetch(panel.dataset.fragment, { headers: { "HX-Request": "true" } });
  if (!reply.ok) return;
  const holder = document.createElement("div");
  holder.innerHTML = await reply.text();
  const fresh = holder.firstElementChild;
  if (fresh) panel.replaceWith(fresh);
}

async function refreshMain() {
  const reply = await fetch(window.location.href, { cache: "no-store" });
  if (!reply.ok) return window.location.reload();
  const fresh = new DOMParser().parseFromString(await reply.text(), "text/html");
  const main = document.getElementById("main");
  const next = fresh.getElementById("main");
  if (!main || !next) return window.location.reload();
  main.replaceChildren(...next.childNodes);
  start(main);
  main.querySelectorAll("[data-compare-slider]").forEach(moveCompare);
}

function start(root) {
  root.querySelectorAll(".progress[data-events]").forEach(watch);
}

document.addEventListener("click", (e) => {
  const dice = e.target.closest("[data-dice]");
  if (!dice) return;
  const input = document.getElementById(dice.dataset.dice);
  const draw = new Uint32Array(1);
  crypto.getRandomValues(draw);
  input.value = String(draw[0] % 2147483648);
  input.dispatchEvent(new Event("change", { bubbles: true }));
});

document.addEventListener("DOMContentLoaded", () => start(document));
// htmx swaps (the cancel button's answer, boosted pages) may bring a panel in.
document.addEventListener("htmx:load", (e) => start(e.target));
// --- The job page (job.html): copy a share link, the before/after slider,
// zoom, and reloading when a running version finishes. Each one binds by a
// data- attribute, so a page without those elements does nothing here.

async function copyField(button) {
  const field = document.getElementById(button.dataset.copy);
  const status = button.closest(".copy-row")?.parentElement?.querySelector(".copy-status");
  let copied = false;
  try {
    await navigator.clipboard.writeText(field.value);
    copied = true;
  } catch {
    field.select(); // no clipboard API (an http page): the old way
    copied = document.execCommand("copy");
  }
  if (status) status.textContent = copied ? "Copied." : "Select the link and copy it (Ctrl+C).";
  button.textContent = copied ? "Copied" : "Copy";
}

function moveCompare(slider) {
  const figure = slider.closest("section").querySelector("[data-compare]");
  figure.style.setProperty("--pos", `${slider.value}%`);
  slider.setAttribute("aria-valuetext", `${slider.value}%`);
}

function zoom(link) {
  const dialog = document.getElementById("zoom");
  if (!dialog || typeof dialog.showModal !== "function") return false;
  const img = dialog.querySelector("img");
  img.src = link.href;
  img.alt = link.querySelector("img")?.alt ?? "";
  dialog.showModal();
  return true;
}

// A long poll (job.py's /wait answers 204 to ask again, 200 once finished);
// a 204 that came back at once (a stream cut short) waits a moment first.
async function reloadWhenDone(element) {
  for (;;) {
    const asked = Date.now();
    let reply;
    try {
      reply = await fetch(element.dataset.wait, { cache: "no-store" });
    } catch {
      return; // the gateway went away: the "reload now" link stays
    }
    if (reply.status === 200) return window.location.reload();
    if (reply.status !== 204) return;
    if (Date.now() - asked < 1000) await new Promise((done) => setTimeout(done, 2000));
  }
}

document.addEventListener("click", (event) => {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    copyField(copy);
    return;
  }
  const link = event.target.closest("a[data-zoom]");
  if (link && !event.ctrlKey && !event.metaKey && !event.shiftKey && zoom(link)) {
    event.preventDefault();
  }
});

document.addEventListener("input", (event) => {
  if (event.target.matches("[data-compare-slider]")) moveCompare(event.target);
});

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-compare-slider]").forEach(moveCompare);
  // The long poll only where no event stream follows the run (the progress
  // panel's stream refreshes the page itself when the run finishes).
  if (!document.querySelector(".progress[data-events]") || typeof EventSource !== "function") {
    document.querySelectorAll("[data-wait]").forEach(reloadWhenDone);
  }
});
