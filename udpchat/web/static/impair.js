// The link's page: what each direction injected a second, the settings and the seed, and a
// form that changes them through PUT /api/impairment (the API scripts use too).
"use strict";

(() => {
  const { el, option, connect, Charts } = udpchat;
  const $ = (id) => document.getElementById(id);
  const state = { knobs: [], current: null, charts: null };
  const DIRECTIONS = ["up", "down"];
  const WINDOWS = [[60, "1 min"], [300, "5 min"], [900, "15 min"]];

  function setStatus(text, bad) {
    $("status").textContent = text;
    $("status").classList.toggle("bad", bad);
  }

  function drawKnobs() {
    const grid = $("knobs");
    const cells = [el("span"), el("strong", "up"), el("strong", "down")];
    state.knobs.forEach((knob) => {
      const label = el("label", `--${knob.name}`);
      label.title = knob.help;
      cells.push(label);
      DIRECTIONS.forEach((direction) => {
        const input = el("input");
        input.dataset.testid = `knob-${knob.name}-${direction}`;
        input.dataset.knob = knob.name;
        input.dataset.direction = direction;
        input.placeholder = knob.default || "off";
        input.value = (state.current[direction] || {})[knob.name] || "";
        input.setAttribute("aria-label", `${knob.name} ${direction}`);
        cells.push(input);
      });
    });
    grid.replaceChildren(...cells);
  }

  function showState(current) {
    state.current = current;
    $("seed").textContent = String(current.seed);
    const changes = $("changes");
    changes.replaceChildren(...current.changes.slice().reverse().map((change) =>
      el("li", `${change.time}: from datagram ${change.from_datagram.up} up, ` +
        `${change.from_datagram.down} down: up ${change.up || "nothing"}; down ${change.down || "nothing"}`)));
    drawKnobs();
  }

  function changeRequest() {
    const request = {};
    document.querySelectorAll("#knobs input").forEach((input) => {
      const knob = input.dataset.knob;
      const was = (state.current[input.dataset.direction] || {})[knob] || "";
      const now = input.value.trim();
      if (now !== was) {  // a cleared field turns its knob off (back to its default)
        (request[knob] = request[knob] || []).push(`${input.dataset.direction}:${now || "off"}`);
      }
    });
    return request;
  }

  async function apply(event) {
    event.preventDefault();
    $("error").textContent = "";
    const response = await fetch("api/impairment", {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(changeRequest()),
    });
    const answer = await response.json();
    if (!response.ok) {
      $("error").textContent = answer.error;
      return;
    }
    showState(answer);
  }

  const handlers = {
    hello(message) {
      $("address").textContent = message.address;
      state.knobs = message.knobs;
      if (!state.charts) {
        state.charts = new Charts($("charts"), message.charts, message.history_s);
        WINDOWS.forEach(([s, label]) => option($("window"), s, label, s === 300));
      }
      (message.points || []).forEach((p) => state.charts.add(p));
      showState(message.state);
      state.charts.draw();
    },
    update(message) {
      state.charts.add(message.point);
      state.charts.draw();
    },
    state(message) { showState(message.state); },
  };

  connect((message) => {
    const handle = handlers[message.type];
    if (handle) handle(message);
  }, setStatus);

  $("knobs-form").addEventListener("submit", apply);
  $("window").addEventListener("change", () => { state.charts.windowS = Number($("window").value); state.charts.draw(); });
})();
