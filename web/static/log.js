// Step logs (`pre.log[data-stream]`): each follows its step over Server-Sent Events once
// the step has started, resuming after the last line the page already shows. A log
// follows its tail while the reader is at the bottom and stays where they scrolled to
// otherwise (as in GitHub Actions). Lines have numbers and anchors (`#step-2-L120`),
// timestamps on demand and a search. EventSource reconnects by itself with
// Last-Event-ID, so the server resumes after the last line received.
(function () {
  "use strict";
  const sources = new Map();

  function atBottom(log) {
    return log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  }

  // "+1:02.345" since the step started, as the server writes it for stored lines.
  function offset(log) {
    const started = Date.parse(log.dataset.started || "");
    if (isNaN(started)) return "";
    const ms = Math.max(0, Date.now() - started);
    const s = Math.floor(ms / 1000);
    return "+" + Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0") + "." +
      String(ms % 1000).padStart(3, "0");
  }

  function lineElement(log, n, html, stderr, at) {
    const line = document.createElement("span");
    line.className = stderr ? "line stderr" : "line";
    line.id = log.dataset.prefix + "-L" + n;
    line.dataset.n = n;
    const t = document.createElement("span");
    t.className = "t";
    t.textContent = at + " ";
    line.appendChild(t);
    line.insertAdjacentHTML("beforeend", html); // escaped by the server
    return line;
  }

  function stepState(log) {
    const head = log.dataset.head && document.getElementById(log.dataset.head);
    return head ? head.dataset.state : "running";
  }

  function follow(log) {
    if (log.dataset.complete === "true" || sources.has(log)) return;
    if (stepState(log) === "pending") return; // connected when the step starts
    let last = Number(log.dataset.last || 0);
    const source = new EventSource(log.dataset.stream + "?from=" + last);
    sources.set(log, source);
    source.addEventListener("lines", function (event) {
      const batch = JSON.parse(event.data);
      // Following: at the bottom now, and not held by a line anchor or a scroll up.
      const stick = log.dataset.follow !== "false" && atBottom(log);
      const at = offset(log);
      const lines = document.createDocumentFragment();
      batch.html.forEach(function (html, i) {
        const n = batch.first + i;
        if (n > last) lines.appendChild(lineElement(log, n, html, batch.stderr, at));
      });
      last = Math.max(last, batch.first + batch.html.length - 1);
      log.dataset.last = last;
      const added = Array.from(lines.childNodes);
      log.appendChild(lines);
      search(log, added);
      if (stick) log.scrollTop = log.scrollHeight;
    });
    source.addEventListener("end", function () {
      source.close();
      sources.delete(log);
      log.dataset.complete = "true";
      const status = document.querySelector("[data-live-status]");
      if (status) status.textContent = "complete";
    });
  }

  // Marks the lines matching the log's search box; with a search, only they show.
  function search(log, lines) {
    const box = document.querySelector("[data-log-search][aria-controls='" + log.id + "']");
    const words = box ? box.value.trim().toLowerCase() : "";
    log.classList.toggle("searching", words !== "");
    (lines || log.querySelectorAll(".line")).forEach(function (line) {
      // The output alone, without the (hidden) timestamp.
      const t = line.querySelector(".t");
      const text = line.textContent.slice(t ? t.textContent.length : 0);
      line.classList.toggle("hit", words !== "" && text.toLowerCase().indexOf(words) >= 0);
    });
    const count = box && box.closest(".log-tools").querySelector("[data-search-count]");
    if (count) {
      count.textContent = words === "" ? "" :
        log.querySelectorAll(".line.hit").length + " matching lines";
    }
  }

  function followAll() {
    document.querySelectorAll("pre.log[data-stream]").forEach(follow);
  }

  document.querySelectorAll("pre.log[data-stream]").forEach(function (log) {
    // A running step's log starts at its tail; a finished one at its first line,
    // unless the address points at one of its lines.
    const target = location.hash && document.getElementById(location.hash.slice(1));
    if (target && log.contains(target)) {
      const section = log.closest("details");
      if (section) section.open = true;
      log.dataset.follow = "false";
      target.classList.add("target");
      log.scrollTop = target.offsetTop - log.offsetTop - log.clientHeight / 3;
    } else if (stepState(log) === "running") {
      log.scrollTop = log.scrollHeight;
    } else {
      log.dataset.follow = "false";
    }
    log.addEventListener("scroll", function () {
      log.dataset.follow = atBottom(log) ? "true" : "false";
    });
    // A click on a line number makes the address point at that line.
    log.addEventListener("click", function (event) {
      const line = event.target.closest && event.target.closest(".line");
      if (!line || event.offsetX > 56 || event.target !== line) return;
      history.replaceState(null, "", "#" + line.id);
      log.querySelectorAll(".line.target").forEach(function (l) { l.classList.remove("target"); });
      line.classList.add("target");
    });
  });

  document.querySelectorAll("[data-log-times]").forEach(function (box) {
    box.addEventListener("change", function () {
      const log = document.getElementById(box.getAttribute("aria-controls"));
      if (log) log.classList.toggle("times", box.checked);
    });
  });
  document.querySelectorAll("[data-log-search]").forEach(function (box) {
    box.addEventListener("input", function () {
      const log = document.getElementById(box.getAttribute("aria-controls"));
      if (log) search(log);
    });
  });

  followAll();
  // The run panel's refresh brings each step's state out of band: a step that has
  // started since gets its stream; a run whose steps appeared since is drawn again.
  document.body.addEventListener("htmx:afterSettle", function () {
    const panel = document.getElementById("run-panel");
    if (panel && Number(panel.dataset.steps) !== document.querySelectorAll("details.step").length) {
      location.reload();
      return;
    }
    followAll();
  });
})();
