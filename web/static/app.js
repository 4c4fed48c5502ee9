// What every console page shares: confirmations before destructive actions, relative
// times kept fresh, live elapsed times, and the navigation toggle on narrow screens.
(function () {
  "use strict";

  // A form (or its submit button) with data-confirm asks first; Cancel submits nothing.
  document.addEventListener("submit", function (event) {
    const button = event.submitter;
    const message = (button && button.dataset.confirm) || event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  }, true);

  // A filter form leaves its empty fields out of the address (`/runs?status=failed`).
  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (event.defaultPrevented || !form.matches("form.filters")) return;
    form.querySelectorAll("input, select").forEach(function (field) {
      if (field.name && field.value === "") field.disabled = true;
    });
  });

  // Back to a filtered page: its fields work again.
  window.addEventListener("pageshow", function () {
    document.querySelectorAll("form.filters [disabled]").forEach(function (f) { f.disabled = false; });
  });

  // "5 min ago", as the server writes it (present::ago).
  function ago(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 45) return "just now";
    if (s < 3600) return Math.floor((s + 30) / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    if (s < 172800) return "yesterday";
    return Math.floor(s / 86400) + " days ago";
  }

  // "4.2 s", "3 m 07 s", as the server writes durations (run::duration_text).
  function elapsed(ms) {
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    return Math.floor(ms / 60000) + " m " + String(Math.floor(ms / 1000) % 60).padStart(2, "0") + " s";
  }

  function tick() {
    const now = Date.now();
    document.querySelectorAll("time[data-relative]").forEach(function (t) {
      const at = Date.parse(t.getAttribute("datetime"));
      if (!isNaN(at)) t.textContent = ago(now - at);
    });
    document.querySelectorAll("[data-elapsed-since]").forEach(function (e) {
      const at = Date.parse(e.dataset.elapsedSince);
      if (!isNaN(at)) e.textContent = elapsed(Math.max(0, now - at));
    });
  }
  tick();
  setInterval(tick, 1000);
  document.addEventListener("htmx:afterSettle", tick);

  // A panel an htmx refresh replaces whole (a deployment's, with its log) keeps each
  // log's scroll position: at the bottom it stays at the bottom, else where it was. It
  // is put back right after the swap, in the same task, so a scroll between the two
  // (during the settle delay) is never undone.
  const scrolled = new Map();
  document.addEventListener("htmx:beforeSwap", function (event) {
    scrolled.clear();
    event.detail.target.querySelectorAll("pre.log[id]").forEach(function (log) {
      const bottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      scrolled.set(log.id, bottom ? Infinity : log.scrollTop);
    });
  });
  document.addEventListener("htmx:afterSwap", function () {
    scrolled.forEach(function (top, id) {
      const log = document.getElementById(id);
      if (log) log.scrollTop = top === Infinity ? log.scrollHeight : top;
    });
    scrolled.clear();
  });

  const toggle = document.querySelector("[data-nav-toggle]");
  if (toggle) {
    toggle.addEventListener("click", function () {
      const open = toggle.getAttribute("aria-expanded") !== "true";
      toggle.setAttribute("aria-expanded", String(open));
      document.getElementById(toggle.getAttribute("aria-controls")).classList.toggle("open", open);
    });
  }
})();
