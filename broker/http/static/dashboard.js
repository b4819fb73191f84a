// Taskbroker dashboard: charts (uPlot) fed by /api/history, and confirmations of
// destructive actions. Live tables are refreshed by htmx (hx-trigger="every ...").
"use strict";

(function () {
  const COLOURS = ["#2b6cb0", "#c53030", "#2f855a", "#b7791f", "#6b46c1"];

  function chartOptions(el, names, data) {
    return {
      width: Math.max(el.clientWidth, 320),
      height: 200,
      scales: {
        // The whole range asked for, however few points it has so far.
        x: { time: true, range: function () { return [el.since, el.until]; } },
      },
      series: [{}].concat(
        names.map(function (name, i) {
          return { label: name, stroke: COLOURS[i % COLOURS.length], width: 1.5 };
        })
      ),
      axes: [{}, { size: 60 }],
    };
  }

  function columns(data, kind) {
    const series = data[kind] || {};
    const names = Object.keys(series);
    return { names: names, cols: [data.x].concat(names.map(function (n) { return series[n]; })) };
  }

  function load(el) {
    const params = new URLSearchParams({
      pool: el.dataset.pool || "",
      range: el.dataset.range || "15m",
    });
    return fetch("/api/history?" + params.toString(), { credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) { throw new Error(response.statusText); }
        return response.json();
      })
      .then(function (data) {
        const c = columns(data, el.dataset.kind);
        el.since = data.since;
        el.until = data.until;
        if (!el.uplot) {
          el.uplot = new uPlot(chartOptions(el, c.names, data), c.cols, el);
        } else {
          el.uplot.setData(c.cols);
        }
        el.dataset.points = String(data.x.length);
      })
      .catch(function (err) {
        el.dataset.error = String(err);
      });
  }

  function start() {
    document.querySelectorAll("div.chart").forEach(function (el) {
      load(el);
      const every = Number(el.dataset.refresh || "0");
      if (every > 0) {
        setInterval(function () {
          if (!document.hidden) { load(el); }
        }, every * 1000);
      }
    });
    document.addEventListener("submit", function (event) {
      const form = event.target;
      if (form.classList && form.classList.contains("confirm") && !window.confirm(form.dataset.confirm)) {
        event.preventDefault();
      }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
