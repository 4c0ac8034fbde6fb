// The chat playground: posts a turn, reads the server-sent events of the answer as they
// arrive (fetch + a stream reader: EventSource cannot POST), and writes the tokens as text.
// Model output is only ever set as textContent, never as HTML.
(function () {
  "use strict";
  var form, log, status, button;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text) { node.textContent = text; }
    return node;
  }

  function settings() {
    var box = document.getElementById("chat-settings");
    var chosen = [];
    box.querySelectorAll('input[name="collections"]:checked').forEach(function (c) { chosen.push(c.value); });
    return {
      model: box.querySelector("#model").value,
      collections: chosen,
      session_id: box.querySelector("#session").value
    };
  }

  // [n] markers become links to the n-th citation of this answer.
  function linkCitations(body, prefix, count) {
    var text = body.textContent;
    body.textContent = "";
    var re = /\[(\d+)\]/g, last = 0, match;
    while ((match = re.exec(text)) !== null) {
      var n = parseInt(match[1], 10);
      if (n < 1 || n > count) { continue; }
      body.appendChild(document.createTextNode(text.slice(last, match.index)));
      var a = el("a", "cite", "[" + n + "]");
      a.href = "#" + prefix + n;
      body.appendChild(a);
      last = re.lastIndex;
    }
    body.appendChild(document.createTextNode(text.slice(last)));
  }

  function showCitations(box, prefix, citations) {
    var list = el("ol", "citations");
    list.setAttribute("aria-label", "Citations");
    citations.forEach(function (c) {
      var item = el("li");
      item.id = prefix + c.index;
      var link = el("a", null, c.collection + " / " + c.document_id);
      link.href = "/ui/collections/" + encodeURIComponent(c.collection);
      item.appendChild(link);
      item.appendChild(el("span", "muted", " (chunk " + c.chunk_id + ", score " + Number(c.score).toFixed(3) + ")"));
      item.appendChild(el("blockquote", null, c.snippet));
      list.appendChild(item);
    });
    box.appendChild(list);
  }

  function problem(text) {
    var doc = new DOMParser().parseFromString(text, "text/html");
    return (doc.body.textContent || "The request failed.").trim();
  }

  async function send(event) {
    event.preventDefault();
    var textarea = form.querySelector("#message");
    var message = textarea.value.trim();
    if (!message) { textarea.focus(); return; }
    var chosen = settings();
    var mine = el("div", "msg user");
    mine.appendChild(el("span", "who-said", "You"));
    mine.appendChild(document.createTextNode(message));
    log.appendChild(mine);
    var answer = el("div", "msg assistant");
    answer.appendChild(el("span", "who-said", "Assistant (" + chosen.model + ")"));
    var body = el("span", "answer-text");
    answer.appendChild(body);
    log.appendChild(answer);
    textarea.value = "";
    button.disabled = true;
    status.textContent = "Answering…";
    var prefix = "cite-" + Date.now() + "-";
    var citations = [];
    try {
      var response = await fetch("/ui/chat/stream", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": window.trellisCsrf(), "HX-Request": "true" },
        body: JSON.stringify({ model: chosen.model, message: message, collections: chosen.collections, session_id: chosen.session_id }),
        credentials: "same-origin"
      });
      if (!response.ok) { throw new Error(problem(await response.text())); }
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      var done = null;
      for (;;) {
        var part = await reader.read();
        if (part.done) { break; }
        buffer += decoder.decode(part.value, { stream: true });
        var cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          var frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          var name = "message", data = "";
          frame.split("\n").forEach(function (line) {
            if (line.indexOf("event: ") === 0) { name = line.slice(7); }
            else if (line.indexOf("data: ") === 0) { data += line.slice(6); }
          });
          var payload = data ? JSON.parse(data) : null;
          if (name === "token") { body.textContent += payload.text; }
          else if (name === "citations") { citations = payload; }
          else if (name === "error") { throw new Error(payload.message); }
          else if (name === "done") { done = payload; }
        }
      }
      if (!done) { throw new Error("The answer stopped before its end."); }
      if (citations.length) {
        linkCitations(body, prefix, citations.length);
        showCitations(answer, prefix, citations);
      }
      var figures = el("div", "answer-summary");
      figures.id = "summary-" + done.trace_id;
      var usage = done.usage || {};
      figures.appendChild(el("p", "muted", "Trace " + done.trace_id + " · " +
        (usage.prompt_tokens || 0) + " in / " + (usage.completion_tokens || 0) + " out tokens · " +
        done.latency_ms + " ms"));
      answer.appendChild(figures);
      status.textContent = "Done.";
      if (window.htmx) {
        htmx.ajax("GET", "/ui/chat/summary/" + encodeURIComponent(done.trace_id), { target: figures, swap: "innerHTML" });
      }
    } catch (err) {
      var failure = el("p", "error", err.message);
      failure.setAttribute("role", "alert");
      answer.appendChild(failure);
      status.textContent = "";
    } finally {
      button.disabled = false;
      textarea.focus();
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    form = document.getElementById("chat-form");
    if (!form) { return; }
    log = document.getElementById("chat-log");
    status = document.getElementById("chat-status");
    button = document.getElementById("send");
    form.addEventListener("submit", send);
    form.querySelector("#message").addEventListener("keydown", function (e) {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { form.requestSubmit(); }
    });
  });
})();
