// Dashboard charts: uPlot over the JSON the page embeds (#stats-data), one chart per metric,
// one line per group (latency: P50/P95/P99 per group). Redrawn at the container's width.
(function () {
  "use strict";
  var COLORS = ["#0b5cad", "#b3261e", "#1a7f37", "#9a6700", "#8250df", "#bc4c00", "#0a7e8c", "#57606a"];
  function build(el, data) {
    var metric = el.getAttribute("data-metric");
    var columns = [data.x];
    var series = [{}];
    data.series.forEach(function (group, n) {
      var color = COLORS[n % COLORS.length];
      if (metric === "latency") {
        [["p50", []], ["p95", [6, 3]], ["p99", [2, 2]]].forEach(function (p) {
          columns.push(group[p[0]]);
          series.push({ label: group.label + " " + p[0].toUpperCase(), stroke: color, dash: p[1], width: 2,
                        points: { show: true, size: 4 } });
        });
      } else {
        columns.push(group[metric]);
        series.push({ label: group.label, stroke: color, width: 2, points: { show: true, size: 4 } });
      }
    });
    var width = Math.max(el.clientWidth - 16, 200);
    var yAxis = { size: 60 };
    if (metric === "cost") {
      yAxis.values = function (u, values) {
        return values.map(function (v) {
          if (v === 0) { return "0"; }
          return "$" + (Math.abs(v) < 0.01 ? Number(v).toExponential(1) : Number(v).toPrecision(2));
        });
      };
    }
    var opts = { width: width, height: 200, series: series,
                 scales: { x: { time: true, range: function () { return [data.since, data.until]; } } },
                 axes: [{}, yAxis], legend: { show: true } };
    el.querySelectorAll(".uplot").forEach(function (old) { old.remove(); });
    var plot = new uPlot(opts, columns, el);
    el.setAttribute("data-drawn", "true");
    return plot;
  }
  function draw() {
    var node = document.getElementById("stats-data");
    if (!node || typeof uPlot === "undefined") { return; }
    var data = JSON.parse(node.textContent);
    document.querySelectorAll("figure.chart[data-metric]").forEach(function (el) {
      if (!data.x.length) {
        if (!el.querySelector(".empty")) {
          var p = document.createElement("p");
          p.className = "muted empty";
          p.textContent = "No data in this window.";
          el.appendChild(p);
        }
        return;
      }
      build(el, data);
    });
  }
  var timer = null;
  window.addEventListener("resize", function () { clearTimeout(timer); timer = setTimeout(draw, 100); });
  document.addEventListener("DOMContentLoaded", draw);
})();
