// The admin page: counts pushed by /admin/api/events are written into the tables and onto the diagram.
const svg = document.querySelector("#diagram svg");

// Graphviz titles each drawn state by its full name; a state with children is a cluster titled cluster_<name>.
function drawnState(name) {
  if (!svg) return null;
  for (const g of svg.querySelectorAll("g.cluster, g.node")) {
    if (g.querySelector(":scope > title")?.textContent === "cluster_" + name) return g;
  }
  for (const g of svg.querySelectorAll("g.node")) {
    if (g.querySelector(":scope > title")?.textContent === name) return g;
  }
  return null;
}

const badges = new Map();

function badgeFor(name) {
  if (badges.has(name)) return badges.get(name);
  const g = drawnState(name);
  if (!g) return null;
  const box = g.getBBox();
  const ns = "http://www.w3.org/2000/svg";
  const badge = document.createElementNS(ns, "g");
  badge.setAttribute("class", "badge");
  badge.setAttribute("data-state", name);
  const rect = document.createElementNS(ns, "rect");
  const text = document.createElementNS(ns, "text");
  text.setAttribute("text-anchor", "middle");
  badge.append(rect, text);
  g.append(badge);
  // Badges keep a readable size however far the page scales the diagram down.
  const k = Math.max(1, svg.viewBox.baseVal.width / svg.getBoundingClientRect().width);
  rect.setAttribute("rx", 8 * k);
  rect.setAttribute("height", 16 * k);
  text.setAttribute("font-size", 12 * k);
  const place = () => {
    const width = k * Math.max(18, 8 * text.textContent.length + 8);
    const x = box.x + box.width - width / 2, y = box.y - 2 * k;
    rect.setAttribute("x", x - width / 2);
    rect.setAttribute("y", y - 8 * k);
    rect.setAttribute("width", width);
    text.setAttribute("x", x);
    text.setAttribute("y", y + 4 * k);
  };
  const entry = {badge, text, place};
  badges.set(name, entry);
  return entry;
}

function setCount(name, n) {
  const row = document.querySelector(`#states tr[data-state="${CSS.escape(name)}"]`);
  if (row) {
    row.querySelector(".n").textContent = n;
    row.classList.toggle("busy", n > 0);
  }
  const entry = badgeFor(name);
  if (entry) {
    entry.text.textContent = String(n);
    entry.badge.classList.toggle("zero", n === 0);
    entry.place();
  }
}

function fillTable(selector, entries) {
  const body = document.querySelector(selector + " tbody");
  body.replaceChildren(...entries.map(([k, v]) => {
    const tr = document.createElement("tr");
    tr.dataset.key = k;
    tr.innerHTML = "<td></td><td class='n'></td>";
    tr.cells[0].textContent = k;
    tr.cells[1].textContent = v;
    return tr;
  }));
}

function sessionLink(sessionId) {
  const link = document.createElement("a");
  link.href = "/admin/sessions/" + encodeURIComponent(sessionId);
  link.textContent = sessionId;
  return link;
}

// Rows of text cells (a Node is put in as it is); everything a participant or researcher named is text, never HTML.
function fillRows(selector, rows) {
  document.querySelector(selector + " tbody").replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      if (cell instanceof Node) td.append(cell);
      else td.textContent = cell ?? "";
      tr.append(td);
    }
    return tr;
  }));
}

function renderLobby(counts, lobby) {
  for (const [name, n] of Object.entries({...counts.states, waiting: counts.waiting})) {
    const cell = document.querySelector(`#match-states tr[data-state="${CSS.escape(name)}"] .n`);
    if (cell) cell.textContent = n;
  }
  for (const [name, n] of Object.entries(counts.ended)) {
    const cell = document.querySelector(`#match-outcomes tr[data-outcome="${CSS.escape(name)}"] .n`);
    if (cell) cell.textContent = n;
  }
  if (!lobby) return;
  fillRows("#waiting", lobby.waiting.map((w) => [
    sessionLink(w.session_id), w.participant_id, w.scene_id, String(w.needed), `${w.waited_s} s`]));
  fillRows("#matches", lobby.matches.map((m) => {
    const players = document.createElement("span");
    for (const [agent, participant] of Object.entries(m.players)) {
      if (players.childNodes.length) players.append(", ");
      players.append(`${agent}: `, m.sessions?.[agent] ? sessionLink(m.sessions[agent]) : "", ` ${participant ?? ""}`);
    }
    for (const agent of m.bots) players.append(players.childNodes.length ? ", " : "", `${agent}: bot`);
    return [m.match_id, m.scene_id, m.state, String(m.frame), players, m.absent.join(", ")];
  }));
}

function render(data) {
  document.getElementById("live").textContent = data.live;
  for (const [name, n] of Object.entries(data.states)) setCount(name, n);
  for (const [name, n] of Object.entries(data.outcomes)) {
    const cell = document.querySelector(`#outcomes tr[data-outcome="${name}"] .n`);
    if (cell) cell.textContent = n;
  }
  fillTable("#reasons", Object.entries(data.excluded_reasons));
  fillTable("#timeouts", Object.entries(data.timeouts));
  const body = document.querySelector("#sessions tbody");
  body.replaceChildren(...data.recent.map((s) => {
    const tr = document.createElement("tr");
    tr.innerHTML = "<td><a></a></td><td></td><td></td><td class='n'></td>";
    const link = tr.querySelector("a");
    link.href = "/admin/sessions/" + encodeURIComponent(s.session_id);
    link.textContent = s.session_id;
    tr.cells[1].textContent = s.participant_id ?? "";
    const regions = Object.entries(s.regions).map(([k, v]) => `${k}: ${v}`).join(", ");
    tr.cells[2].textContent = regions ? `${s.state} (${regions})` : s.state;
    tr.cells[3].textContent = s.in_state_s === null ? "" : `${s.in_state_s} s`;
    return tr;
  }));
  renderLobby(data.matches, data.lobby);
  window.__admin = {updates: (window.__admin?.updates ?? 0) + 1, data};
}

const status = document.getElementById("connection");
const events = new EventSource("/admin/api/events");
events.onopen = () => { status.textContent = "live"; };
events.onerror = () => { status.textContent = "reconnecting…"; };
events.onmessage = (event) => render(JSON.parse(event.data));
