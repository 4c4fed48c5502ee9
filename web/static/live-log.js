// Follows a step's log over Server-Sent Events. EventSource reconnects by itself and
// sends Last-Event-ID, so the server resumes after the last line shown.
(function () {
  "use strict";
  const log = document.querySelector("[data-stream]");
  if (!log) return;
  const status = document.querySelector("[data-live-status]");
  const source = new EventSource(log.dataset.stream);
  // One event per burst of output: its lines, from one stream, already escaped.
  source.addEventListener("lines", function (event) {
    const batch = JSON.parse(event.data);
    const span = document.createElement("span");
    if (batch.stderr) span.className = "stderr";
    span.innerHTML = batch.html.join("\n") + "\n"; // escaped by the server
    const follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.appendChild(span);
    if (follow) log.scrollTop = log.scrollHeight;
  });
  source.addEventListener("end", function () {
    source.close();
    if (status) status.textContent = "complete";
  });
})();
