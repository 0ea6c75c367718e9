// tetras-back web console: live updates. The pages work without it; with
// it, the dashboard follows the daemon's events (Server-Sent Events) and
// redraws its content from the server, keeping what was being typed.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var counters = [];
  function count() {
    counters = [];
    document.querySelectorAll("[data-elapsed]").forEach(function (e) {
      counters.push({ el: e, base: parseInt(e.getAttribute("data-elapsed"), 10), at: Date.now() });
    });
  }
  function show(secs) {
    var h = Math.floor(secs / 3600), m = Math.floor(secs / 60) % 60, s = secs % 60;
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
  }
  setInterval(function () {
    counters.forEach(function (c) {
      c.el.textContent = show(c.base + Math.floor((Date.now() - c.at) / 1000));
    });
  }, 1000);
  count();
  if (!live || !window.EventSource || !window.fetch) return;

  var timer = null;
  function swap(html) {
    var typed = {};
    live.querySelectorAll("input[data-keep]").forEach(function (i) { typed[i.id] = i.value; });
    var focused = document.activeElement ? document.activeElement.id : "";
    live.innerHTML = html;
    Object.keys(typed).forEach(function (id) {
      var i = document.getElementById(id);
      if (i) i.value = typed[id];
    });
    if (focused) {
      var f = document.getElementById(focused);
      if (f) f.focus();
    }
    count();
  }
  function refresh() {
    if (timer) return;
    timer = setTimeout(function () {
      timer = null;
      fetch(live.getAttribute("data-live"), {
        headers: { "X-Tetras-Fragment": "1" }, credentials: "same-origin", cache: "no-store"
      }).then(function (r) {
        if (r.status === 401) { window.location.href = "/login"; return null; }
        return r.ok ? r.text() : null;
      }).then(function (html) {
        if (html !== null) swap(html);
      }).catch(function () {});
    }, 150);
  }
  var source = new EventSource("/events");
  source.addEventListener("change", refresh);
  source.addEventListener("daemon", refresh);
  // The stream ends with the session (a user removed, a password changed):
  // the content asked again then answers 401, and the page goes to /login.
  source.addEventListener("error", refresh);
  // While a backup runs, its log's last lines and the elapsed time move.
  setInterval(function () {
    if (live.querySelector("[data-running]")) refresh();
  }, 2000);
})();
