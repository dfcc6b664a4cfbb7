// The admin's only script: live progress of a send, and "are you sure?" on
// dangerous buttons. Everything works without it (the progress page then shows
// the numbers at the time it was loaded).
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

function showProgress(root, data) {
  for (const element of root.querySelectorAll("[data-field]")) {
    const name = element.getAttribute("data-field");
    if (Object.prototype.hasOwnProperty.call(data, name)) {
      element.textContent = String(data[name]);
    }
  }
  const bar = root.querySelector("progress");
  if (bar) {
    bar.max = Math.max(data.recipients, 1);
    bar.value = data.done;
  }
  const status = root.querySelector("[data-status]");
  if (status) {
    status.textContent = data.status;
    status.className = "badge badge-" + data.status;
  }
  for (const form of root.querySelectorAll("[data-when-status]")) {
    const wanted = form.getAttribute("data-when-status").split(" ");
    form.hidden = !wanted.includes(data.status);
  }
}

function pollProgress(root) {
  const url = root.getAttribute("data-progress-url");
  const finished = ["done", "cancelled"];
  async function tick() {
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } });
      if (response.ok) {
        const data = await response.json();
        showProgress(root, data);
        if (finished.includes(data.status)) {
          return;
        }
      }
    } catch (error) {
      // The server restarting or the network dropping: keep trying.
    }
    window.setTimeout(tick, 1500);
  }
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const root of document.querySelectorAll("[data-progress-url]")) {
    pollProgress(root);
  }
});
