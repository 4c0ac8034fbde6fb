// Span bars: their position comes from data attributes (style attributes are not allowed
// by the page's Content-Security-Policy; setting style properties from a script is).
(function () {
  "use strict";
  function place(root) {
    root.querySelectorAll(".bar[data-offset]").forEach(function (bar) {
      bar.style.left = bar.getAttribute("data-offset") + "%";
      bar.style.width = bar.getAttribute("data-width") + "%";
    });
  }
  document.addEventListener("DOMContentLoaded", function () { place(document); });
  document.addEventListener("htmx:afterSwap", function (e) { place(e.target); });
})();
