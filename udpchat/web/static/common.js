// What both pages share: the WebSocket to the view, safe DOM building, and the charts.
// Every name and text from the server is set as text (textContent), never parsed as HTML.
"use strict";

const udpchat = (() => {
  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function option(select, value, label, selected) {
    const node = el("option", label);
    node.value = String(value);
    node.selected = Boolean(selected);
    select.append(node);
  }

  function notice(list, text, kind) {
    const item = el("li", `${new Date().toLocaleTimeString()} ${text}`, kind || "");
    list.prepend(item);
    while (list.children.length > 50) list.lastChild.remove();
  }

  // The view's WebSocket, opened again after a drop (a restart, a slow page dropped), at most
  // every few seconds. Returns a function that sends a request as JSON.
  function connect(onMessage, onState) {
    const url = new URL("ws", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    let socket = null;
    let retryMs = 500;
    function open() {
      socket = new WebSocket(url);
      socket.onopen = () => { retryMs = 500; onState("connected", false); };
      socket.onmessage = (event) => onMessage(JSON.parse(event.data));
      socket.onclose = () => {
        onState("disconnected: reconnecting…", true);
        window.setTimeout(open, retryMs);
        retryMs = Math.min(retryMs * 2, 5000);
      };
    }
    open();
    return (message) => {
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
    };
  }

  const PALETTE = ["#1f5fbf", "#c62828", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f",
                   "#ad1457", "#5d4037", "#455a64", "#9e9d24"];

  // One chart: a time axis and the named series of one group of the view's points. The
  // points of the last `historyS` seconds are kept; the window shows the last `windowS`.
  class Chart {
    constructor(container, spec) {
      this.spec = spec;
      this.box = el("div", null, "chart");
      this.box.dataset.testid = `chart-${spec.key}`;
      this.box.append(el("h3", spec.title));
      this.plotBox = el("div");
      this.box.append(this.plotBox);
      container.append(this.box);
      this.names = [];
      this.plot = null;
    }

    draw(times, columns, names, windowS) {
      const width = Math.max(300, this.box.clientWidth || 400);
      if (!this.plot || names.join("\u0000") !== this.names.join("\u0000")) {
        if (this.plot) this.plot.destroy();
        this.names = names.slice();
        const series = [{}].concat(names.map((name, index) => ({
          label: name, stroke: PALETTE[index % PALETTE.length], width: 1.5, spanGaps: false,
          value: (u, v) => (v === null || v === undefined ? "–" : v.toFixed(this.spec.digits)),
        })));
        this.plot = new uPlot({
          width, height: 180, series,
          scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max, this.spec.floor || 1)] } },
          axes: [{}, { label: this.spec.unit, size: 60 }],
          legend: { live: true },
        }, [[]].concat(names.map(() => [])), this.plotBox);
      }
      const now = times.length ? times[times.length - 1] : 0;
      this.plot.setData([times].concat(columns), false);
      // What the chart shows now, for a test or a script to read without the canvas.
      this.box.dataset.points = String(times.length);
      this.box.dataset.last = JSON.stringify(columns.map((column) => column[column.length - 1]));
      this.plot.setScale("x", { min: now - windowS, max: now });
      if (Math.abs(this.plot.width - width) > 20) this.plot.setSize({ width, height: 180 });
    }
  }

  // The charts of a page: each point is {at_s, groups: {key: {name: value}}}; a ranked group
  // (per sender) shows its first `top` names, in the order of the latest point.
  class Charts {
    constructor(container, specs, historyS) {
      this.specs = specs;
      this.historyS = historyS;
      this.points = [];
      this.charts = specs.map((spec) => new Chart(container, spec));
      this.windowS = 300;
      this.top = 5;
    }

    add(point) {
      if (!point) return;
      this.points.push(point);
      const oldest = point.at_s - this.historyS;
      while (this.points.length && this.points[0].at_s < oldest) this.points.shift();
    }

    draw() {
      if (!this.points.length || typeof uPlot === "undefined") return;
      const shown = this.points.filter((p) => p.at_s >= this.points[this.points.length - 1].at_s - this.windowS);
      const times = shown.map((p) => p.at_s);
      this.charts.forEach((chart) => {
        const spec = chart.spec;
        const latest = shown[shown.length - 1].groups[spec.key] || {};
        let names;
        if (spec.ranked) {
          names = Object.keys(latest).slice(0, this.top);
        } else {
          const seen = new Set();
          shown.forEach((p) => Object.keys(p.groups[spec.key] || {}).forEach((n) => seen.add(n)));
          names = Array.from(seen);
        }
        const columns = names.map((name) => shown.map((p) => {
          const group = p.groups[spec.key] || {};
          return name in group ? group[name] : null;
        }));
        chart.draw(times, columns, names, this.windowS);
      });
    }
  }

  return { el, option, notice, connect, Charts };
})();
