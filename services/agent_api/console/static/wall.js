// The supervisor wall: queue depth and oldest wait per queue, agents by status and load,
// SLA breaches, conversations per hour, CSAT and its open low-score follow-ups. Figures
// come from GET /v1/supervisor/wall and GET /v1/analytics/csat; the live socket says when
// to re-read them (any frame: assignments, csat.recorded, csat.follow_up_opened/closed…),
// and waits tick on between reads.

import { LiveSocket, createApi, el, forgetToken, formatWait, savedToken, signIn, svg } from "./common.js";

const root = document.getElementById("app");
const api = createApi(signOut);
const ui = {};
const waits = []; // [{node, seconds}] ticking between snapshots
let fetchedAt = Date.now();
let pending = null;
let socket = null;

function signOut() {
  forgetToken();
  if (socket) socket.stop();
  location.reload();
}

function figure(label, value, { id, level, dataset } = {}) {
  return el(
    "div",
    { class: "figure", id, dataset: { level: level || "normal", ...(dataset || {}) } },
    el("div", { class: "value" }, value),
    el("div", { class: "label" }, label),
  );
}

function waitLevel(seconds) {
  if (seconds === null || seconds === undefined) return "good";
  if (seconds >= 300) return "bad";
  if (seconds >= 60) return "warn";
  return "normal";
}

function layout(me) {
  ui.connection = el("span", { id: "connection", class: "connection", dataset: { state: "connecting" } }, "connecting");
  ui.queues = el("div", { class: "figures", id: "queues" });
  ui.agents = el("div", { id: "agents" });
  ui.sla = el("div", { id: "sla" });
  ui.volume = el("div", { id: "volume" });
  ui.csat = el("div", { id: "csat" });
  ui.followUps = el("div", { id: "csat-follow-ups-tile" });
  ui.updated = el("span", { class: "muted", id: "updated" });
  root.replaceChildren(
    el(
      "header",
      { class: "topbar" },
      el("span", { class: "brand" }, "omniroute"),
      el("span", { class: "agent-name" }, `Supervisor wall \u00B7 ${me.display_name}`),
      ui.connection,
      ui.updated,
      el("a", { href: "/console", class: "wall-link" }, "Agent console"),
      el("button", { type: "button", class: "link", onclick: signOut }, "Sign out"),
    ),
    el(
      "main",
      { class: "wall" },
      el("section", { class: "tile wide" }, el("h2", {}, "Queues \u2014 waiting and oldest wait"), ui.queues),
      el("section", { class: "tile" }, el("h2", {}, "SLA \u2014 first response"), ui.sla),
      el("section", { class: "tile wide" }, el("h2", {}, "Conversations per hour \u2014 last 24 h"), ui.volume),
      el("section", { class: "tile" }, el("h2", {}, "Customer satisfaction"), ui.csat, ui.followUps),
      el("section", { class: "tile full" }, el("h2", {}, "Agents \u2014 status and load"), ui.agents),
    ),
  );
}

function renderQueues(queues) {
  waits.length = 0;
  const rows = [
    ...queues.tiers.map((q) => ({ name: `Tier ${q.tier}`, ...q })),
    ...queues.teams.map((q) => ({ ...q, name: `Team ${q.name}` })),
  ];
  const total = rows.reduce((sum, q) => sum + q.depth, 0);
  const oldest = rows.reduce((max, q) => Math.max(max, q.oldest_wait_seconds ?? 0), 0);
  const cards = rows.map((q) => {
    const wait = el("span", { class: "wait" }, formatWait(q.oldest_wait_seconds));
    if (q.oldest_wait_seconds !== null) waits.push({ node: wait, seconds: q.oldest_wait_seconds });
    return el(
      "div",
      { class: "figure", dataset: { queue: q.name, level: q.depth ? waitLevel(q.oldest_wait_seconds) : "normal" } },
      el("div", { class: "value depth" }, String(q.depth)),
      el("div", { class: "label" }, q.name, " \u00B7 oldest ", wait),
      el("div", { class: "label" }, `${q.online_agents} online \u00B7 est. ${formatWait(q.estimated_wait_seconds)}`),
    );
  });
  ui.queues.replaceChildren(
    figure("waiting in all queues", String(total), { id: "queue-total", level: total ? waitLevel(oldest) : "good" }),
    ...cards,
  );
}

function renderSla(sla) {
  ui.sla.replaceChildren(
    el(
      "div",
      { class: "figures" },
      figure("breached", String(sla.breached), { id: "sla-breached", level: sla.breached ? "bad" : "good" }),
      figure(`due within ${Math.round(sla.at_risk_seconds / 60)} min`, String(sla.at_risk), {
        level: sla.at_risk ? "warn" : "normal",
      }),
    ),
    sla.most_overdue.length
      ? el(
          "table",
          {},
          el("tr", {}, el("th", {}, "Channel"), el("th", {}, "Tier"), el("th", {}, "Overdue")),
          sla.most_overdue.map((b) =>
            el("tr", {}, el("td", {}, b.channel), el("td", {}, String(b.tier)), el("td", {}, formatWait(b.overdue_seconds))),
          ),
        )
      : el("p", { class: "muted" }, "No first response is overdue."),
  );
}

function barChart(points, { width = 720, height = 170 } = {}) {
  const pad = { top: 14, right: 6, bottom: 22, left: 28 };
  const max = Math.max(1, ...points.map((p) => p.value));
  const innerW = width - pad.left - pad.right;
  const innerH = height - pad.top - pad.bottom;
  const step = innerW / points.length;
  const bar = Math.max(2, step * 0.7);
  const ticks = [0, Math.ceil(max / 2), max];
  return svg(
    "svg",
    { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Conversations per hour" },
    ticks.map((t) => {
      const y = pad.top + innerH - (t / max) * innerH;
      return [
        svg("line", { x1: pad.left, x2: width - pad.right, y1: y, y2: y, stroke: "#222b45" }),
        svg("text", { x: pad.left - 6, y: y + 3, "text-anchor": "end" }, String(t)),
      ];
    }),
    points.map((p, i) => {
      const h = (p.value / max) * innerH;
      const x = pad.left + i * step + (step - bar) / 2;
      return [
        svg(
          "rect",
          { x, y: pad.top + innerH - h, width: bar, height: Math.max(h, 0), rx: 2, fill: "#5b7cfa" },
          svg("title", {}, `${p.label}: ${p.value}`),
        ),
        p.value ? svg("text", { x: x + bar / 2, y: pad.top + innerH - h - 3, "text-anchor": "middle" }, String(p.value)) : null,
        i % 3 === 0 ? svg("text", { x: x + bar / 2, y: height - 6, "text-anchor": "middle" }, p.label) : null,
      ];
    }),
  );
}

function renderVolume(hours) {
  const points = hours.map((h) => ({
    label: new Date(h.hour_start).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
    value: h.conversations,
  }));
  const total = points.reduce((s, p) => s + p.value, 0);
  ui.volume.replaceChildren(
    el("p", { class: "muted", id: "volume-total" }, `${total} conversation${total === 1 ? "" : "s"} in the last 24 hours`),
    barChart(points),
  );
}

function renderAgents(snapshot) {
  const counts = snapshot.agents_by_status;
  ui.agents.replaceChildren(
    el(
      "div",
      { class: "figures" },
      figure("online", String(counts.online ?? 0), { id: "agents-online", level: counts.online ? "good" : "bad" }),
      figure("away", String(counts.away ?? 0), { level: counts.away ? "warn" : "normal" }),
      figure("offline", String(counts.offline ?? 0)),
    ),
    el(
      "table",
      {},
      el("tr", {}, el("th", {}, "Agent"), el("th", {}, "Status"), el("th", {}, "Tier"), el("th", {}, "Load")),
      snapshot.agents.map((a) => {
        const share = a.capacity_units ? Math.min(1, a.load_units / a.capacity_units) : 0;
        return el(
          "tr",
          { dataset: { agent: a.id } },
          el("td", {}, a.display_name),
          el("td", {}, el("span", { class: "status-dot", dataset: { status: a.status } }), a.status),
          el("td", {}, String(a.tier)),
          el(
            "td",
            {},
            svg(
              "svg",
              { class: "load-bar", viewBox: "0 0 100 8", width: 96, height: 8, role: "img", "aria-label": `${Math.round(share * 100)}% loaded` },
              svg("rect", { x: 0, y: 0, width: 100, height: 8, rx: 4, fill: "#222b45" }),
              svg("rect", { x: 0, y: 0, width: Math.round(share * 100), height: 8, rx: 4, fill: "#5b7cfa" }),
            ),
            ` ${a.load_units} / ${a.capacity_units}`,
          ),
        );
      }),
    ),
  );
}

function renderCsat(csat) {
  if (!csat || !csat.count) {
    ui.csat.replaceChildren(el("p", { class: "muted", id: "csat-empty" }, "No CSAT data yet."));
    return;
  }
  const points = ["1", "2", "3", "4", "5"].map((score) => ({ label: `${score}\u2605`, value: csat.distribution[score] || 0 }));
  const average = csat.average === null ? "\u2013" : csat.average.toFixed(2);
  ui.csat.replaceChildren(
    el(
      "div",
      { class: "figures" },
      figure("average of 5", average, { id: "csat-average", level: csat.average >= 4 ? "good" : csat.average >= 3 ? "warn" : "bad" }),
      figure("ratings", String(csat.count), { id: "csat-count" }),
      csat.response_rate === null || csat.response_rate === undefined
        ? null
        : figure(`answered of ${csat.surveys_sent} surveys`, `${Math.round(csat.response_rate * 100)}%`, { id: "csat-response-rate" }),
    ),
    barChart(points, { width: 300, height: 130 }),
  );
}

function renderFollowUps(followUps) {
  const oldest = el("span", { class: "wait" }, formatWait(followUps.oldest_open_seconds));
  if (followUps.oldest_open_seconds !== null) waits.push({ node: oldest, seconds: followUps.oldest_open_seconds });
  ui.followUps.replaceChildren(
    el(
      "div",
      { class: "figures" },
      figure("open low-score follow-ups", String(followUps.open), { id: "csat-follow-ups", level: followUps.open ? "bad" : "good" }),
      el(
        "div",
        { class: "figure", id: "csat-follow-up-oldest", dataset: { level: followUps.open ? waitLevel(followUps.oldest_open_seconds) : "normal" } },
        el("div", { class: "value" }, oldest),
        el("div", { class: "label" }, "oldest open follow-up"),
      ),
    ),
  );
}

async function refresh() {
  const [snapshot, csat] = await Promise.all([api("GET", "/v1/supervisor/wall"), api("GET", "/v1/analytics/csat")]);
  fetchedAt = Date.now();
  renderQueues(snapshot.queues);
  renderSla(snapshot.sla);
  renderVolume(snapshot.volume_by_hour);
  renderAgents(snapshot);
  renderCsat(csat);
  renderFollowUps(snapshot.csat_follow_ups);
  ui.updated.textContent = `updated ${new Date(snapshot.generated_at).toLocaleTimeString()}`;
}

function scheduleRefresh() {
  if (pending) return;
  pending = setTimeout(async () => {
    pending = null;
    try {
      await refresh();
    } catch (failure) {
      ui.updated.textContent = `update failed: ${failure.message}`;
    }
  }, 150);
}

function tick() {
  const elapsed = (Date.now() - fetchedAt) / 1000;
  for (const wait of waits) wait.node.textContent = formatWait(wait.seconds + elapsed);
}

async function start() {
  if (!savedToken()) await signIn(root, { title: "Supervisor wall" });
  let me;
  try {
    me = await api("GET", "/v1/me");
  } catch {
    forgetToken();
    await signIn(root, { title: "Supervisor wall" });
    me = await api("GET", "/v1/me");
  }
  if (me.role !== "supervisor" && me.role !== "admin") {
    root.replaceChildren(
      el("p", { class: "sign-in", role: "alert" }, "The wall is for supervisors and admins. ", el("a", { href: "/console" }, "Open the agent console")),
    );
    forgetToken();
    return;
  }
  layout(me);
  await refresh();
  socket = new LiveSocket({
    onFrame: (frame) => {
      if (frame.type !== "heartbeat") scheduleRefresh();
    },
    onState: (label) => {
      ui.connection.dataset.state = label;
      ui.connection.textContent = label;
    },
    onRejected: signOut,
  });
  socket.connect();
  setInterval(tick, 1000);
  setInterval(scheduleRefresh, 15000);
}

start();
