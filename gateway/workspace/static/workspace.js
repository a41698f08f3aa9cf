// The workspace's own script: live progress from the job's SSE stream, the
// seed's dice, copying a link. Every page works without it (plain forms).
"use strict";

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
  document.querySelectorAll("[data-wait]").forEach(reloadWhenDone);
});
