// Live task progress: the console's server-sent events for the task on this page.
// Served from the console itself (the Content-Security-Policy allows nothing else).
"use strict";
(function () {
  const status = document.getElementById("task-status");
  if (!status || !status.dataset.events || !window.EventSource) {
    return;
  }
  const source = new EventSource(status.dataset.events);
  source.addEventListener("status", function (event) {
    const update = JSON.parse(event.data);
    status.textContent = update.status;
    if (update.terminal) {
      source.close();
      // Swap in the task's sections as they are now, without reloading the page.
      fetch(window.location.pathname, { credentials: "same-origin" })
        .then(function (response) { return response.text(); })
        .then(function (html) {
          const page = new DOMParser().parseFromString(html, "text/html");
          // The result appears; the buttons of a task that is over (invoke, cancel) go.
          ["result-section", "run-section"].forEach(function (id) {
            const current = document.getElementById(id);
            const fresh = page.getElementById(id);
            if (current && fresh) {
              current.replaceWith(fresh);
            } else if (current) {
              current.remove();
            }
          });
        });
    }
  });
  source.addEventListener("problem", function (event) {
    status.textContent = status.textContent + " (" + JSON.parse(event.data).message + ")";
    source.close();
  });
})();
