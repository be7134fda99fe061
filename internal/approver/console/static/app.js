// Live updates: the approver announces each change of the queue on /events; the page then
// fetches the server-rendered list (/queue) and swaps it in, unless a deny form is open,
// so a reason being typed is never wiped. A slow poll covers a dropped event stream.
(function () {
  "use strict";
  var queue = document.getElementById("queue");
  if (!queue) { return; }
  var stale = false;
  function busy() {
    return queue.querySelector("details.deny[open]") !== null;
  }
  function refresh() {
    if (busy()) { stale = true; return; }
    stale = false;
    fetch("/queue", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        if (busy()) { stale = true; return; }
        queue.innerHTML = html; // escaped by the server's html/template
      })
      .catch(function () { stale = true; });
  }
  queue.addEventListener("toggle", function () { if (stale) { refresh(); } }, true);
  if (window.EventSource) {
    var es = new EventSource("/events");
    es.addEventListener("changed", refresh);
  }
  setInterval(refresh, 5000);
})();
