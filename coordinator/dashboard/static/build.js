// Live build page: one EventSource streams the build's logs and state
// (server-sent events from /builds/ID/live). Log chunks already shown are
// dropped, so a reconnect that starts again adds nothing twice.
(function () {
  "use strict";
  var script = document.getElementById("build-script");
  var id = script.getAttribute("data-build");
  var status = document.getElementById("live-status");
  // Last shown (attempt, seq) per step, and the tail bound per step.
  var seen = {};
  var maxChars = 256 * 1024;
  var blocked = {};
  document.querySelectorAll(".step").forEach(function (el) {
    blocked[el.id] = el.getAttribute("data-state") === "blocked";
  });
  var es = new EventSource("/builds/" + encodeURIComponent(id) + "/live");
  // A decision being posted navigates away: stop the stream so that its
  // state change does not reload the page under the form's request.
  var submitting = false;
  document.querySelectorAll("form.approval").forEach(function (f) {
    f.addEventListener("submit", function () { submitting = true; es.close(); });
  });
  es.addEventListener("log", function (m) {
    var ev = JSON.parse(m.data);
    var pre = document.getElementById("log-" + ev.id);
    if (!pre) { return; }
    var last = seen[ev.id];
    if (last && (ev.attempt < last.attempt || (ev.attempt === last.attempt && ev.seq <= last.seq))) { return; }
    if (last && ev.attempt > last.attempt) { pre.textContent = ""; }
    seen[ev.id] = { attempt: ev.attempt, seq: ev.seq };
    var text = pre.textContent + ev.text;
    if (text.length > maxChars) { text = "…" + text.slice(text.length - maxChars); }
    pre.textContent = text;
  });
  es.addEventListener("build", function (m) {
    var ev = JSON.parse(m.data);
    var bs = document.getElementById("build-state");
    bs.textContent = ev.state;
    bs.className = "state " + ev.state;
    document.getElementById("build-duration").textContent = ev.duration;
    var reload = false;
    (ev.steps || []).forEach(function (s) {
      var el = document.getElementById("step-" + s.id);
      if (!el) { reload = true; return; }
      el.className = "step " + s.state;
      el.setAttribute("data-state", s.state);
      var st = el.querySelector("[data-role=state]");
      st.textContent = s.state;
      st.className = "state " + s.state;
      el.querySelector("[data-role=duration]").textContent = s.duration;
      if ((s.state === "blocked") !== blocked[el.id]) { reload = true; }
    });
    // An approval gate opened or closed: the server renders its form.
    if (reload && !submitting) { es.close(); window.location.reload(); }
  });
  es.addEventListener("end", function () {
    es.close();
    status.textContent = "";
  });
  es.addEventListener("failure", function (m) {
    es.close();
    status.textContent = "stream failed: " + JSON.parse(m.data).message;
  });
  es.onerror = function () { status.textContent = "reconnecting…"; };
  es.onopen = function () { if (status.textContent === "reconnecting…") { status.textContent = "live"; } };
})();
