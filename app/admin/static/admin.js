// Live refresh: replace the contents of [data-refresh-url] elements every few seconds,
// without reloading the page. Everything else works without JavaScript.
(function () {
  "use strict";
  function start(el) {
    var url = el.getAttribute("data-refresh-url");
    var seconds = parseInt(el.getAttribute("data-refresh-seconds") || "5", 10);
    var timer = null;
    function tick() {
      if (document.hidden) { return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" }, redirect: "manual" })
        .then(function (response) {
          if (response.type === "opaqueredirect" || response.status === 401) {
            clearInterval(timer);  // signed out: stop polling
            return null;
          }
          return response.ok ? response.text() : null;
        })
        .then(function (html) { if (html !== null) { el.innerHTML = html; } })
        .catch(function () { /* try again at the next tick */ });
    }
    timer = setInterval(tick, Math.max(seconds, 1) * 1000);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh-url]").forEach(start);
  });
})();
