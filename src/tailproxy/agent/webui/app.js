// The tailproxy ui page: live views from the agent's server-sent events, the exit node switch.
"use strict";
const history = new Map();          // connection id -> recent byte rates (the sparkline)
let last = new Map();                // connection id -> [time, total bytes]
const SPARK = 30;

function bytes(n) {
  if (n === null || n === undefined) return "-";
  for (const u of ["B", "K", "M", "G"]) {
    if (n < 1024 || u === "G") return u === "B" ? `${Math.round(n)}B` : `${n.toFixed(1)}${u}`;
    n /= 1024;
  }
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function spark(values) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", `0 0 ${SPARK} 10`);
  svg.setAttribute("preserveAspectRatio", "none");
  const max = Math.max(1, ...values);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", values.map((v, i) =>
    `${i + SPARK - values.length},${(10 - 9 * v / max).toFixed(2)}`).join(" "));
  svg.appendChild(line);
  return svg;
}

function fill(id, rows, make) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows.map(make));
}

function dest(c) {
  return c.asked === c.dialled ? c.asked : `${c.asked} (${c.dialled})`;
}

function show(top) {
  document.getElementById("agent").textContent = `${top.hostname} (agent ${top.pid})`;
  const ex = top.exit_node, health = document.getElementById("health");
  health.textContent = ex ? `exit node ${ex.name}: ${ex.online ? "online" : "OFFLINE"}, ${ex.path}`
                          : "no exit node";
  health.className = ex && !ex.online ? "bad" : "";
  const t = top.totals;
  document.getElementById("totals").textContent =
    `(${t.open} open, ${Object.entries(t.connections).map(([k, v]) => `${k} ${v}`).join(", ")}, ${t.failed} failed)`;
  const now = performance.now() / 1000, seen = new Map();
  const rates = new Map();
  for (const c of top.connections) {
    const total = (c.up || 0) + (c.down || 0), before = last.get(c.id);
    const rate = before && now > before[0] ? (total - before[1]) / (now - before[0]) : 0;
    seen.set(c.id, [now, total]);
    const h = history.get(c.id) || [];
    h.push(rate);
    if (h.length > SPARK) h.shift();
    history.set(c.id, h);
    rates.set(c.id, rate);
  }
  for (const id of history.keys()) if (!seen.has(id)) history.delete(id);
  last = seen;
  const conns = [...top.connections].sort((a, b) => rates.get(b.id) - rates.get(a.id));
  fill("connections", conns, c => {
    const tr = document.createElement("tr");
    tr.dataset.dialled = c.dialled;
    tr.dataset.route = c.route;
    cell(tr, c.pid, "num");
    cell(tr, dest(c));
    cell(tr, c.route);
    cell(tr, c.up === null ? "-" : `${bytes(rates.get(c.id))}/s`, "num");
    cell(tr, "").appendChild(spark(history.get(c.id)));
    cell(tr, bytes(c.up), "num");
    cell(tr, bytes(c.down), "num");
    cell(tr, `${c.connect_ms.toFixed(1)} ms`, "num");
    cell(tr, `${Math.round(c.duration_s)} s`, "num");
    return tr;
  });
  fill("programs", top.programs, p => {
    const tr = document.createElement("tr");
    cell(tr, p.pid, "num");
    cell(tr, p.command.join(" ") || "(proxy)");
    cell(tr, p.connections, "num");
    const td = cell(tr, p.exports.length ? "" : "-");
    td.dataset.withdrawn = p.withdrawn.join(",");
    for (const port of p.exports) {
      const url = `http://${top.node_name || top.hostname}:${port}/`;
      const code = document.createElement("code");
      code.textContent = url;
      code.className = "export-url";
      const b = document.createElement("button");
      b.className = "copy";
      b.type = "button";
      b.textContent = "copy";
      b.addEventListener("click", () => navigator.clipboard.writeText(url));
      td.append(code, b, " ");
    }
    if (p.export_idle_timeout) td.append(`idle timeout ${p.export_idle_timeout} s`);
    if (p.withdrawn.length) td.append(`; withdrawn (unused): ${p.withdrawn.join(", ")}`);
    return tr;
  });
  fill("peers", top.peers, p => {
    const tr = document.createElement("tr");
    cell(tr, p.name + (p.exit_node ? " (exit node)" : ""));
    cell(tr, p.online ? "online" : "offline");
    cell(tr, p.path === "derp" ? `derp ${p.derp_region}` : p.path);
    cell(tr, p.last_handshake || "-");
    cell(tr, bytes(p.rx_bytes), "num");
    cell(tr, bytes(p.tx_bytes), "num");
    return tr;
  });
  fill("closed", top.closed.slice(0, 20), c => {
    const tr = document.createElement("tr");
    cell(tr, c.pid, "num");
    cell(tr, dest(c));
    cell(tr, c.route);
    cell(tr, bytes(c.up), "num");
    cell(tr, bytes(c.down), "num");
    cell(tr, `${c.connect_ms.toFixed(1)} ms`, "num");
    cell(tr, c.reason);
    return tr;
  });
  document.getElementById("lookups").textContent = "name lookups: " +
    Object.entries(top.lookups).map(([k, v]) => `${k} ${v}`).join(", ");
  const select = document.getElementById("exit-select");
  const options = top.peers.filter(p => p.exit_node_option).map(p => p.name);
  if (select.dataset.options !== options.join(",")) {
    select.dataset.options = options.join(",");
    select.replaceChildren(...options.map(n => new Option(n, n)));
  }
}

async function switchExit(name) {
  const status = document.getElementById("exit-status");
  status.textContent = "…";
  const r = await fetch("/api/exit-node", {
    method: "POST", headers: {"Content-Type": "application/json", "X-Tailproxy": "1"},
    body: JSON.stringify({name}),
  });
  const reply = await r.json();
  status.textContent = reply.ok ? (reply.exit_node ? `using ${reply.exit_node}` : "cleared")
                                : `failed: ${reply.error}`;
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("exit-form").addEventListener("submit", e => {
    e.preventDefault();
    switchExit(document.getElementById("exit-select").value);
  });
  document.getElementById("exit-clear").addEventListener("click", () => switchExit(null));
  const events = new EventSource("/api/events");
  events.onmessage = e => show(JSON.parse(e.data));
});
