// The console's only script: refreshes the page's live part every 5 s while "live" is ticked,
// unless the operator is choosing rows or typing; and "select all" for the bulk actions.
(function () {
  "use strict";
  function busy(live) {
    return live.querySelector("input.pick:checked") !== null ||
      (document.activeElement && live.contains(document.activeElement) &&
        document.activeElement.matches("input, select, textarea"));
  }
  function refresh() {
    var toggle = document.getElementById("live-toggle");
    var live = document.getElementById("live");
    if (!toggle || !toggle.checked || !live || busy(live)) return;
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok && !r.redirected ? r.text() : null; })
      .then(function (text) {
        if (!text || busy(live)) return;
        var next = new DOMParser().parseFromString(text, "text/html").getElementById("live");
        if (next) live.innerHTML = next.innerHTML;
      })
      .catch(function () {});
  }
  setInterval(refresh, 5000);
  document.addEventListener("change", function (e) {
    if (e.target && e.target.id === "select-all") {
      document.querySelectorAll("input.pick").forEach(function (box) {
        box.checked = e.target.checked;
      });
    }
  });
})();
