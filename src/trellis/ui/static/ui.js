// Trellis web UI: the CSRF header on every htmx request, upload progress, confirmations.
// No inline script anywhere (the Content-Security-Policy forbids it).
(function () {
  "use strict";
  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }
  window.trellisCsrf = csrf;
  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrf();
  });
  // Ask before destructive actions: forms/buttons carrying data-confirm.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var text = form.getAttribute && form.getAttribute("data-confirm");
    if (text && !window.confirm(text)) { event.preventDefault(); event.stopImmediatePropagation(); }
  }, true);
  // Upload progress: a <progress> named by the form's data-progress.
  document.addEventListener("htmx:xhr:progress", function (event) {
    var form = event.target.closest ? event.target.closest("form[data-progress]") : null;
    if (!form || !event.detail.lengthComputable) { return; }
    var bar = document.getElementById(form.getAttribute("data-progress"));
    if (bar) {
      bar.hidden = false;
      bar.value = Math.round((event.detail.loaded / event.detail.total) * 100);
      bar.textContent = bar.value + "%";
    }
  });
  // Forms marked data-reset start empty again once their request succeeded.
  document.addEventListener("htmx:afterRequest", function (event) {
    var form = event.target;
    if (form.hasAttribute && form.hasAttribute("data-reset") && event.detail.successful) { form.reset(); }
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    var form = event.target.closest ? event.target.closest("form[data-progress]") : null;
    if (form) {
      var bar = document.getElementById(form.getAttribute("data-progress"));
      if (bar) { bar.value = 100; }
      if (event.detail.successful) { form.reset(); }
    }
  });
})();
