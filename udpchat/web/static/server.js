// The server's page: the sender table (in the dashboard's orders, as the server ranks them),
// the charts, and the room, where this page may join as a member of its own.
"use strict";

(() => {
  const { el, option, notice, connect, Charts } = udpchat;
  const $ = (id) => document.getElementById(id);
  const state = { columns: [], update: null, charts: null, member: null };

  const WINDOWS = [[60, "1 min"], [300, "5 min"], [900, "15 min"]];
  const TOPS = [1, 3, 5, 10];

  function setStatus(text, bad) {
    $("status").textContent = text;
    $("status").classList.toggle("bad", bad);
  }

  // The dashboard's columns, a rare one (duplicates, late...) only when some sender has it.
  function header(processes, shown) {
    const row = el("tr");
    if (processes > 1) row.append(el("th", "proc", "num"));
    shown.forEach((i) => row.append(el("th", state.columns[i].header, state.columns[i].numeric ? "num" : "")));
    row.append(el("th", "heard"));
    const head = $("senders").tHead;
    head.replaceChildren(row);
  }

  function drawTable() {
    const update = state.update;
    if (!update) return;
    const table = update.table;
    header(table.processes, table.shown);
    const order = table.orders[$("sort").value] || [];
    const body = $("senders").tBodies[0];
    const rows = order.map((index) => {
      const sender = table.rows[index];
      const row = el("tr", null, sender.idle ? "idle" : (sender.lost ? "lost" : ""));
      if (table.processes > 1) row.append(el("td", sender.process, "num"));
      table.shown.forEach((i) => row.append(el("td", sender.cells[i], state.columns[i].numeric ? "num" : "text")));
      row.append(el("td", sender.heard));
      return row;
    });
    body.replaceChildren(...rows);
    $("senders-count").textContent = `${table.senders} tracked`;
    $("senders-more").textContent = table.senders > order.length
      ? `${table.senders - order.length} more not shown (sorted by ${$("sort").value}; the totals count them all)` : "";
    $("totals").textContent = [update.totals.counts].concat(update.totals.groups).join("\n");
  }

  function hello(message) {
    $("address").textContent = message.address;
    state.columns = message.columns;
    const sort = $("sort");
    const chosen = sort.value;
    sort.replaceChildren();
    message.sorts.forEach((key, i) => option(sort, key, key, chosen ? key === chosen : i === 0));
    if (!state.charts) {
      state.charts = new Charts($("charts"), message.charts, message.history_s);
      const windowSelect = $("window");
      WINDOWS.forEach(([s, label]) => option(windowSelect, s, label, s === 300));
      TOPS.forEach((n) => option($("top"), n, String(n), n === 5));
    }
    (message.points || []).forEach((p) => state.charts.add(p));
    $("room-panel").hidden = !message.relay;
    if (message.relay) {
      const room = $("room");
      room.replaceChildren(...message.room.map((line) => el("li", line)));
      room.scrollTop = room.scrollHeight;
      showWatch(message.watch);
    }
    showMember(null);
    state.update = message.update;
    drawTable();
    state.charts.draw();
  }

  function showWatch(watchState, detail) {
    $("watch").textContent = detail || (watchState === "in" ? "watching the room" : `room view: ${watchState}`);
  }

  function showMember(member) {
    state.member = member;
    const joined = Boolean(member && member.username);
    $("username").disabled = joined;
    $("join").hidden = joined;
    $("leave").hidden = !joined;
    $("text").disabled = !joined;
    $("send").disabled = !joined;
    $("text").placeholder = joined ? `${member.username} (${member.address}) says…` : "join to post";
  }

  function addLine(text) {
    const room = $("room");
    const atBottom = room.scrollTop + room.clientHeight >= room.scrollHeight - 4;
    room.append(el("li", text));
    while (room.children.length > 200) room.firstChild.remove();
    if (atBottom) room.scrollTop = room.scrollHeight;
  }

  const handlers = {
    hello,
    update(message) {
      state.update = message;
      state.charts.add(message.point);
      drawTable();
      state.charts.draw();
    },
    line(message) { addLine(message.text); },
    watch(message) { showWatch(message.state, message.detail); },
    member(message) {
      showMember(message);
      if (message.username) notice($("notices"), `joined as ${message.username} from ${message.address}`);
    },
    sent(message) { notice($("notices"), `sent: ${message.text}`, "sent"); },
    notice(message) { notice($("notices"), message.text); },
    refused(message) { notice($("notices"), `refused (${message.reason}): ${message.text}`, "refused"); },
  };

  const send = connect((message) => {
    const handle = handlers[message.type];
    if (handle) handle(message);
  }, setStatus);

  $("sort").addEventListener("change", drawTable);
  $("window").addEventListener("change", () => { state.charts.windowS = Number($("window").value); state.charts.draw(); });
  $("top").addEventListener("change", () => { state.charts.top = Number($("top").value); state.charts.draw(); });
  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    send({ type: "join", username: $("username").value });
  });
  $("leave").addEventListener("click", () => send({ type: "leave" }));
  $("post-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value;
    if (!text.trim()) return;
    send({ type: "post", text });
    $("text").value = "";
  });
})();
