// edgepop console: renders the snapshots the console streams (/events) and sends the
// actions a click makes (POST /api/...) with the cluster token. No framework, no
// network access beyond the console itself.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const HISTORY_POINTS = 300;
// The numbers each node's row draws over the last minutes (History on the server).
const SPARKLINES = ["lag_s", "requests_per_s", "p99_ms"];
const state = {
  snapshot: null, history: {}, token: "", turned: new Map(), writing: false, probed: {},
  owners: new Map(), moves: [],
};
// How long an owner's move stays drawn on the map.
const MOVE_SHOWN_MS = 60_000;

// The token arrives in the URL's fragment (never sent to a server); keep it for this tab
// and take it out of the address bar.
(function takeToken() {
  const match = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem("edgepop-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.token = sessionStorage.getItem("edgepop-token") || "";
})();

function $(id) { return document.getElementById(id); }

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(value, unit = "", digits = 1) {
  if (value === null || value === undefined) return "–";
  return `${Number(value).toFixed(digits)}${unit}`;
}

function say(id, text, isError = false) {
  const node = $(id);
  node.textContent = text;
  node.classList.toggle("error", isError);
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (state.token) headers["Authorization"] = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function health(node) {
  if (!node.alive) return "down";
  return node.healthy ? "healthy" : "unhealthy";
}

// -- map -------------------------------------------------------------------------------

function regionIndex(snapshot) {
  return Object.fromEntries(snapshot.regions.map((region) => [region.name, region]));
}

// Nodes of one region sit around its point, so that two PoPs of tokyo are both visible.
function nodePositions(snapshot) {
  const regions = regionIndex(snapshot);
  const byRegion = {};
  for (const node of snapshot.nodes) (byRegion[node.region] ||= []).push(node);
  const positions = {};
  for (const [name, nodes] of Object.entries(byRegion)) {
    const region = regions[name];
    if (!region) continue;
    nodes.forEach((node, index) => {
      const angle = (index / nodes.length) * 2 * Math.PI - Math.PI / 2;
      const radius = nodes.length > 1 ? 9 : 0;
      positions[node.name] = { x: region.x + radius * Math.cos(angle), y: region.y + radius * Math.sin(angle) };
    });
  }
  return positions;
}

function curve(a, b, bend) {
  const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2;
  const dx = b.x - a.x, dy = b.y - a.y;
  const length = Math.hypot(dx, dy) || 1;
  const cx = mx - (dy / length) * bend, cy = my + (dx / length) * bend;
  return `M${a.x},${a.y} Q${cx},${cy} ${b.x},${b.y}`;
}

function renderMap(snapshot) {
  const regions = regionIndex(snapshot);
  const links = $("links"), faults = $("faults"), routes = $("routes"), nodes = $("nodes");
  links.replaceChildren(); faults.replaceChildren(); routes.replaceChildren(); nodes.replaceChildren();
  for (const link of snapshot.links) {
    const a = regions[link.from], b = regions[link.to];
    if (!a || !b) continue;
    links.append(svg("line", { class: "link", x1: a.x, y1: a.y, x2: b.x, y2: b.y }));
    links.append(svg("text", { class: "link-label", x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 - 3 },
      `${fmt(link.rtt_ms, " ms", 0)}`));
  }
  for (const fault of snapshot.faults) {
    const a = regions[fault.from_region], b = regions[fault.to_region];
    if (!a || !b) continue;
    const kind = fault.partitioned ? "partition" : fault.delay_ms || fault.jitter_ms ? "delay" : "loss";
    const path = svg("path", { class: `fault ${kind}`, d: curve(a, b, 18),
      "data-from": fault.from_region, "data-to": fault.to_region });
    path.append(svg("title", {}, `${fault.from_region} → ${fault.to_region}: ${describeFault(fault)}`));
    faults.append(path);
  }
  for (const [userRegion, popName] of Object.entries(snapshot.routes)) {
    const pop = snapshot.nodes.find((node) => node.name === popName);
    const from = regions[userRegion], to = pop && regions[pop.region];
    if (from && to && from.name !== to.name) {
      routes.append(svg("line", { class: "route", x1: from.x, y1: from.y, x2: to.x, y2: to.y }));
    }
  }
  const positions = nodePositions(snapshot);
  renderObjectsOnMap(snapshot, positions);
  for (const node of snapshot.nodes) {
    const at = positions[node.name];
    if (!at) continue;
    const group = svg("g", { class: `node ${health(node)}`, "data-node": node.name,
      "data-health": health(node), "data-region": node.region,
      "data-x": at.x.toFixed(1), "data-y": at.y.toFixed(1) });
    const turned = state.turned.get(node.name);
    if (turned !== undefined) group.classList.add("turned");
    if (node.role === "pop") group.append(svg("circle", { cx: at.x, cy: at.y, r: 5 }));
    else group.append(svg("rect", { x: at.x - 5, y: at.y - 5, width: 10, height: 10 }));
    group.append(svg("title", {}, `${node.name} (${node.role}, ${node.region}): ${health(node)}`));
    const label = node.role === "pop" ? node.name : node.role.replace("_", " ");
    const labelY = node.role === "pop" ? at.y - 8 : at.y + 16 + (node.role === "control_plane" ? 10 : 0);
    group.append(svg("text", { x: at.x + 7, y: labelY }, label));
    if (turned !== undefined && turned !== null) {
      group.append(svg("text", { class: "delay-label", x: at.x + 7, y: at.y + 12 }, `${fmt(turned, " ms")}`));
    }
    nodes.append(group);
  }
}

function objectKey(object) { return `${object.namespace}/${object.id}`; }

// Each object is a small diamond beside its owner; a move (a failover, a migration) is
// drawn from the old owner to the new one for a minute.
function renderObjectsOnMap(snapshot, positions) {
  const layer = $("objects");
  layer.replaceChildren();
  const perOwner = {};
  for (const object of snapshot.objects) {
    const at = positions[object.owner];
    if (!at) continue;
    const slot = (perOwner[object.owner] = (perOwner[object.owner] || 0) + 1) - 1;
    const x = at.x - 12 - (slot % 4) * 6, y = at.y + 4 + Math.floor(slot / 4) * 6;
    const group = svg("g", { class: "object", "data-object": objectKey(object), "data-owner": object.owner });
    group.append(svg("rect", { x: x - 2.5, y: y - 2.5, width: 5, height: 5, transform: `rotate(45 ${x} ${y})` }));
    const rate = object.calls_per_s === null ? "" : `, ${fmt(object.calls_per_s, " calls/s", 1)}`;
    group.append(svg("title", {}, `${object.namespace} ${object.id.slice(0, 12)}…: owner ${object.owner}, epoch ${object.epoch}${rate}`));
    layer.append(group);
  }
  const now = Date.now();
  state.moves = state.moves.filter((move) => now - move.at < MOVE_SHOWN_MS);
  for (const move of state.moves) {
    const a = positions[move.from], b = positions[move.to];
    if (!a || !b) continue;
    const path = svg("path", { class: "move", d: curve(a, b, -25), "data-object": move.key,
      "data-from": move.from, "data-to": move.to });
    path.append(svg("title", {}, `${move.key}: owner moved ${move.from} → ${move.to}`));
    layer.append(path);
  }
}

function noteMoves(snapshot) {
  const seen = new Map();
  for (const object of snapshot.objects) {
    const key = objectKey(object);
    const before = state.owners.get(key);
    if (before && before !== object.owner) {
      state.moves.push({ key, from: before, to: object.owner, at: Date.now() });
    }
    seen.set(key, object.owner);
  }
  state.owners = seen;
}

function describeFault(fault) {
  const parts = [];
  if (fault.partitioned) parts.push("partitioned");
  if (fault.delay_ms) parts.push(`+${fault.delay_ms} ms`);
  if (fault.jitter_ms) parts.push(`jitter ${fault.jitter_ms} ms`);
  if (fault.loss) parts.push(`loss ${(fault.loss * 100).toFixed(1)}%`);
  return parts.join(", ") || "no fault";
}

// -- tables ----------------------------------------------------------------------------

function sparkline(values) {
  const points = values.map((value, index) => [index, value]).filter(([, value]) => value !== null);
  const box = svg("svg", { class: "spark", viewBox: `0 0 ${HISTORY_POINTS} 22`, preserveAspectRatio: "none",
    "aria-hidden": "true" });
  if (points.length < 2) return box;
  const top = Math.max(...points.map(([, value]) => value), 0.001);
  box.append(svg("title", {}, `highest ${fmt(top, "", 2)} in the last ${values.length} s`));
  const offset = HISTORY_POINTS - values.length;
  const line = points.map(([index, value]) => `${index + offset},${(21 - (value / top) * 20).toFixed(1)}`).join(" ");
  box.append(svg("polyline", { points: line }));
  return box;
}

function nodeButtons(node) {
  const cell = el("td");
  const act = (action) => el("button", {
    class: `small${action === "kill" ? " danger" : ""}`, type: "button",
    "data-action": action, "data-node": node.name, "aria-label": `${action} ${node.name}`,
    onclick: () => nodeAction(node.name, action),
  }, action);
  if (node.alive) cell.append(act("stop"), " ", act("kill"));
  else cell.append(act("start"));
  return cell;
}

function renderNodes(snapshot) {
  const rows = snapshot.nodes.map((node) => el("tr", { "data-node": node.name },
    el("th", { scope: "row" }, node.name),
    el("td", {}, node.region),
    el("td", { class: `health-${health(node)}` }, health(node)),
    el("td", {}, node.seq ?? "–"),
    el("td", {}, node.role === "pop" ? fmt(node.lag_s === null ? null : node.lag_s * 1000, " ms", 0) : "–"),
    el("td", {}, fmt(node.requests_per_s, "", 1)),
    el("td", {}, fmt(node.p50_ms, " ms", 2)),
    el("td", {}, fmt(node.p99_ms, " ms", 2)),
    el("td", { class: "cpu" }, fmt(node.cpu_percent, "%", 0)),
    el("td", { class: `cpu-wait${node.cpu_wait_notable ? " notable" : ""}`,
      title: node.cpu_wait_notable ? "the host's run queue adds to what this node measures" : "" },
      fmt(node.cpu_wait_percent, "%", 0)),
    el("td", {}, node.workers ?? "–"),
    ...SPARKLINES.map((name) => el("td", { class: `spark-${name}` },
      sparkline((state.history[node.name] || {})[name] || []))),
    nodeButtons(node)));
  $("nodes-table").tBodies[0].replaceChildren(...rows);
}

function renderFaults(snapshot) {
  const rows = snapshot.faults.map((fault) => el("tr", {},
    el("td", {}, fault.from_region), el("td", {}, fault.to_region),
    el("td", {}, describeFault(fault)),
    el("td", {}, fault.heals_in_s === null ? "until healed" : `${fault.heals_in_s.toFixed(0)} s`),
    el("td", {}, el("button", { class: "small", type: "button",
      "aria-label": `heal ${fault.from_region} to ${fault.to_region}`,
      onclick: () => sendFault({ action: "heal", from: fault.from_region, to: fault.to_region, one_way: true }),
    }, "heal"))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 5 }, "no link faults in force")));
  $("faults-table").tBodies[0].replaceChildren(...rows);
}

function renderLatency(snapshot) {
  const rtt = {};
  for (const link of snapshot.rtt) rtt[`${link.from}>${link.to}`] = link.rtt_ms;
  const rows = snapshot.regions.filter((region) => !region.is_origin).map((region) => {
    const probed = state.probed[region.name] || {};
    return el("tr", { "data-region": region.name },
      el("th", { scope: "row" }, region.name),
      el("td", {}, snapshot.routes[region.name] || "–"),
      el("td", {}, fmt(region.edge_rtt_ms, " ms", 0)),
      el("td", { class: "probed-edge" }, fmt(probed.edge_ms, " ms", 1)),
      el("td", {}, fmt(rtt[`${region.name}>${snapshot.origin_region}`], " ms", 0)),
      el("td", { class: "probed-origin" }, fmt(probed.origin_ms, " ms", 1)));
  });
  $("latency-table").tBodies[0].replaceChildren(...rows);
}

function movedText(key) {
  const move = [...state.moves].reverse().find((candidate) => candidate.key === key);
  if (!move) return "–";
  return `from ${move.from}, ${Math.round((Date.now() - move.at) / 1000)} s ago`;
}

function renderObjects(snapshot) {
  const rows = snapshot.objects.map((object) => el("tr", { "data-object": objectKey(object) },
    el("td", {}, object.namespace), el("td", { title: object.id }, object.id.slice(0, 16)),
    el("td", { class: "owner" }, object.owner), el("td", {}, object.standby || object.next_standby || "–"),
    el("td", {}, object.epoch), el("td", {}, object.synced_seq),
    el("td", { class: "calls" }, fmt(object.calls_per_s, "", 1)),
    el("td", { class: "moved" }, movedText(objectKey(object)))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8 }, "no object placed yet")));
  $("objects-table").tBodies[0].replaceChildren(...rows);
}

function fillSelect(select, names) {
  const current = select.value;
  const known = [...select.options].map((option) => option.value).join("|");
  if (known === names.join("|")) return;
  select.replaceChildren(...names.map((name) => el("option", { value: name }, name)));
  if (names.includes(current)) select.value = current;
}

function renderForms(snapshot) {
  const regions = snapshot.regions.map((region) => region.name);
  fillSelect($("write-region"), regions.filter((name) => name !== snapshot.origin_region));
  const fresh = !$("fault-from").options.length;
  fillSelect($("fault-from"), regions);
  fillSelect($("fault-to"), regions);
  if (fresh && regions.length > 1) {
    // A first suggestion that is a real link: a PoP region and the origin's.
    $("fault-from").value = regions.find((name) => name !== snapshot.origin_region);
    $("fault-to").value = snapshot.origin_region;
  }
  const pops = snapshot.nodes.filter((node) => node.role === "pop").map((node) => node.name);
  fillSelect($("kv-pop"), pops);
  fillSelect($("sql-pop"), pops);
}

function render(snapshot) {
  state.snapshot = snapshot;
  noteMoves(snapshot);
  const up = snapshot.nodes.filter((node) => node.alive && node.healthy).length;
  $("summary").textContent = `${up} of ${snapshot.nodes.length} nodes healthy · ` +
    `${snapshot.faults.length} link faults · ${snapshot.objects.length} objects placed · ` +
    `topology v${snapshot.version}`;
  renderMap(snapshot);
  renderNodes(snapshot);
  renderFaults(snapshot);
  renderLatency(snapshot);
  renderObjects(snapshot);
  renderForms(snapshot);
}

function remember(snapshot) {
  for (const node of snapshot.nodes) {
    const series = (state.history[node.name] ||= {});
    for (const name of SPARKLINES) {
      const values = (series[name] ||= []);
      values.push(node[name]);
      if (values.length > HISTORY_POINTS) values.shift();
    }
  }
}

// -- actions ---------------------------------------------------------------------------

async function nodeAction(name, action) {
  say("node-status", `${action} ${name} …`);
  try {
    const answer = await api("POST", `/api/nodes/${encodeURIComponent(name)}`, { action });
    say("node-status", answer.message);
  } catch (error) {
    say("node-status", `${action} ${name}: ${error.message}`, true);
  }
}

// The fields each fault of the form takes (and the only ones enabled for it).
const FAULT_FIELDS = {
  partition: ["for"], delay: ["delay", "jitter", "for"], jitter: ["jitter", "for"],
  loss: ["loss", "for"], heal: [],
};

function showFaultFields() {
  const used = FAULT_FIELDS[$("fault-action").value] || [];
  for (const name of ["delay", "jitter", "loss", "for"]) $(`fault-${name}`).disabled = !used.includes(name);
}

async function sendFault(request) {
  say("fault-status", `${request.action} ${request.from} → ${request.to} …`);
  try {
    const answer = await api("POST", "/api/net", request);
    say("fault-status", `${request.action} ${request.from} ${request.one_way ? "→" : "↔"} ${request.to}: ` +
      `${answer.faults.length} faults in force`);
  } catch (error) {
    say("fault-status", error.message, true);
  }
}

function writeRow(result) {
  return el("tr", { "data-node": result.node },
    el("th", { scope: "row" }, result.node), el("td", {}, result.region),
    el("td", { class: "propagation" }, fmt(result.propagation_ms, " ms", 1)),
    el("td", {}, fmt(result.seen_after_ms, " ms", 0)));
}

async function sendWrite(event) {
  event.preventDefault();
  if (state.writing) return;
  const form = new FormData($("write-form"));
  const request = Object.fromEntries(form.entries());
  state.writing = true;
  state.turned = new Map();
  $("write-table").tBodies[0].replaceChildren();
  say("write-status", `putting ${request.key} from ${request.region} …`);
  try {
    const answer = await api("POST", "/api/write", request);
    for (const result of answer.pops) state.turned.set(result.node, result.propagation_ms);
    const rows = [...answer.pops].sort((a, b) => (a.propagation_ms ?? 1e9) - (b.propagation_ms ?? 1e9));
    $("write-table").tBodies[0].replaceChildren(...rows.map(writeRow));
    say("write-status", `seq ${answer.seq} via ${answer.via}, acknowledged in ${fmt(answer.ack_ms, " ms")}` +
      `; visible at ${answer.pops.length} PoPs` + (answer.not_seen.length ? `; not seen at ${answer.not_seen.join(", ")}` : ""));
    if (state.snapshot) renderMap(state.snapshot);
  } catch (error) {
    say("write-status", error.message, true);
  } finally {
    state.writing = false;
  }
}

function onVisible(result) {
  state.turned.set(result.node, result.propagation_ms);
  if (state.snapshot) renderMap(state.snapshot);
}

async function runProbe(event) {
  event.preventDefault();
  say("probe-status", "probing every region …");
  try {
    const answer = await api("POST", "/api/probe", {});
    state.probed = Object.fromEntries(answer.regions.map((result) => [result.region, result]));
    const off = answer.regions.filter((result) => !result.within_tolerance).map((result) => result.region);
    say("probe-status", `probed ${answer.regions.length} regions, ${answer.regions[0]?.calls ?? 0} calls each` +
      (off.length ? `; outside max(1 ms, 5%): ${off.join(", ")}` : "; every median within max(1 ms, 5%)"));
    if (state.snapshot) renderLatency(state.snapshot);
  } catch (error) {
    say("probe-status", error.message, true);
  }
}

function fillChoices(select, names) {
  fillSelect(select, ["", ...names]);
  select.options[0].textContent = "(list)";
}

async function browseSql(event) {
  event.preventDefault();
  const query = new URLSearchParams(new FormData($("sql-form")));
  say("sql-status", "reading the replica …");
  try {
    const answer = await api("GET", `/api/sql?${query}`);
    fillChoices($("sql-database"), answer.databases);
    $("sql-database").value = answer.database || "";
    fillChoices($("sql-table"), answer.tables || []);
    $("sql-table").value = answer.table || "";
    const table = $("sql-table-rows");
    if (answer.columns && answer.table) {
      table.tHead.replaceChildren(el("tr", {}, ...answer.columns.map((name) => el("th", { scope: "col" }, name))));
      table.tBodies[0].replaceChildren(...answer.rows.map((row) => el("tr", {},
        ...row.map((value) => el("td", {}, value === null ? "NULL" : value)))));
      say("sql-status", `${answer.rows.length} rows of ${answer.table} in ${answer.database}, served by ${answer.served_by}`);
    } else {
      table.tHead.replaceChildren();
      table.tBodies[0].replaceChildren();
      say("sql-status", answer.database ? `${answer.tables.length} tables in ${answer.database} at ${answer.pop}`
        : `${answer.databases.length} databases at ${answer.pop}`);
    }
  } catch (error) {
    say("sql-status", error.message, true);
  }
}

async function kvVersions(namespace, key) {
  say("kv-versions-status", `asking every PoP for ${key} …`);
  try {
    const answer = await api("GET", `/api/kv/versions?${new URLSearchParams({ namespace, key })}`);
    const newest = Math.max(...answer.holders.map((holder) => holder.seq || 0));
    $("kv-versions").tBodies[0].replaceChildren(...answer.holders.map((holder) => el("tr", {
      "data-node": holder.node, class: holder.seq === newest ? "" : "behind" },
      el("th", { scope: "row" }, holder.node), el("td", {}, holder.region),
      el("td", {}, holder.error ? "–" : holder.found ? holder.seq : "not found"),
      el("td", {}, holder.error || holder.value))));
    const behind = answer.holders.filter((holder) => (holder.seq || 0) !== newest).length;
    say("kv-versions-status", `${key}: seq ${newest} at ${answer.holders.length - behind} of ` +
      `${answer.holders.length} nodes` + (behind ? `, ${behind} behind` : ""));
  } catch (error) {
    say("kv-versions-status", error.message, true);
  }
}

async function listKv(event) {
  event.preventDefault();
  const query = new URLSearchParams(new FormData($("kv-form")));
  say("kv-status", "listing …");
  try {
    const answer = await api("GET", `/api/kv?${query}`);
    $("kv-table").tBodies[0].replaceChildren(...answer.keys.map((key) => el("tr", {},
      el("td", {}, el("button", { class: "small", type: "button", "data-key": key.key,
        title: "which version each PoP holds", onclick: () => kvVersions(answer.namespace, key.key) }, key.key)),
      el("td", { title: key.encoding }, key.value), el("td", {}, key.seq),
      el("td", {}, key.metadata || "–"))));
    say("kv-status", `${answer.keys.length} keys in ${answer.namespace} at ${answer.pop}`);
  } catch (error) {
    say("kv-status", error.message, true);
  }
}

// -- wiring ----------------------------------------------------------------------------

function connect() {
  const query = state.token ? `?token=${encodeURIComponent(state.token)}` : "";
  const events = new EventSource(`/events${query}`);
  events.addEventListener("open", () => {
    $("connection").textContent = "live";
    $("connection").className = "badge live";
  });
  events.addEventListener("error", () => {
    $("connection").textContent = "reconnecting…";
    $("connection").className = "badge lost";
  });
  events.addEventListener("state", (event) => {
    const snapshot = JSON.parse(event.data);
    remember(snapshot);
    render(snapshot);
  });
  events.addEventListener("visible", (event) => onVisible(JSON.parse(event.data)));
  events.addEventListener("problem", (event) => {
    $("connection").textContent = `cluster unreachable: ${JSON.parse(event.data).error}`;
    $("connection").className = "badge lost";
  });
}

async function start() {
  $("write-form").addEventListener("submit", sendWrite);
  $("kv-form").addEventListener("submit", listKv);
  $("probe-form").addEventListener("submit", runProbe);
  $("sql-form").addEventListener("submit", browseSql);
  $("sql-database").addEventListener("change", () => { $("sql-table").value = ""; });
  $("fault-action").addEventListener("change", showFaultFields);
  showFaultFields();
  $("fault-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData($("fault-form"));
    const request = { action: form.get("action"), from: form.get("from"), to: form.get("to"),
      one_way: form.get("one_way") === "on" };
    // Only the fields the fault takes, as the text `edgectl net` takes (100ms, 20%, 30s).
    for (const name of FAULT_FIELDS[request.action]) request[name] = String(form.get(name) ?? "");
    sendFault(request);
  });
  try {
    const world = await api("GET", "/api/map");
    $("map").setAttribute("viewBox", `0 0 ${world.width} ${world.height}`);
    $("land").setAttribute("d", world.land);
    const first = await api("GET", "/api/state");
    state.history = first.history || {};
    render(first);
  } catch (error) {
    $("connection").textContent = error.message;
    $("connection").className = "badge lost";
  }
  connect();
}

start();
