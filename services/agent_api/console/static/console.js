// The agent console: presence, my conversations and the queue (live over /v1/ws), the
// customer's cross-channel timeline, replies, internal notes, transfer, escalation,
// resolution and the routing explanation. Every customer string goes in as text.

import {
  ApiError,
  LiveSocket,
  channelBadge,
  createApi,
  el,
  forgetToken,
  formatTime,
  formatWait,
  savedToken,
  signIn,
} from "./common.js";

const root = document.getElementById("app");
const api = createApi(signOut);

const state = {
  me: null,
  mine: [],
  queued: [],
  queues: null,
  contacts: new Map(),
  selected: null,
  rendered: new Set(),
  unread: new Set(),
  outcomes: [],
  socket: null,
  refreshing: null,
};

const ui = {};

function signOut() {
  forgetToken();
  if (state.socket) state.socket.stop();
  location.reload();
}

async function contactName(contactId) {
  if (!state.contacts.has(contactId)) {
    const lookup = api("GET", `/v1/contacts/${contactId}`)
      .then((contact) => contact.display_name || firstIdentity(contact) || "Customer")
      .catch(() => "Customer");
    state.contacts.set(contactId, lookup);
  }
  return state.contacts.get(contactId);
}

function firstIdentity(contact) {
  const identity = (contact.identities || [])[0];
  return identity ? identity.address : null;
}

function layout() {
  ui.status = el(
    "select",
    { id: "status", "aria-label": "My status", onchange: (e) => setStatus(e.target.value) },
    ["online", "away", "offline"].map((s) => el("option", { value: s }, s)),
  );
  ui.connection = el("span", { id: "connection", class: "connection", dataset: { state: "connecting" } }, "connecting");
  ui.mine = el("ul", { id: "mine", class: "conversation-list", "aria-label": "My conversations" });
  ui.queueStats = el("div", { id: "queue-stats", class: "queue-stats" });
  ui.queued = el("ul", { id: "queued", class: "conversation-list", "aria-label": "Waiting conversations" });
  ui.conversation = el("section", { id: "conversation", class: "conversation" }, emptyConversation());
  ui.details = el("aside", { id: "details", class: "details" });
  root.replaceChildren(
    el(
      "header",
      { class: "topbar" },
      el("span", { class: "brand" }, "omniroute"),
      el("span", { id: "agent-name", class: "agent-name" }, state.me.display_name),
      el("label", { class: "status-picker" }, "Status ", ui.status),
      ui.connection,
      el("a", { href: "/console/wall", class: "wall-link" }, "Supervisor wall"),
      el("button", { type: "button", class: "link", onclick: signOut }, "Sign out"),
    ),
    el(
      "main",
      { class: "desk" },
      el(
        "aside",
        { class: "lists" },
        el("h2", {}, "My conversations"),
        ui.mine,
        el("h2", {}, "Queue"),
        ui.queueStats,
        ui.queued,
      ),
      ui.conversation,
      ui.details,
    ),
  );
  ui.status.value = state.me.status;
}

function emptyConversation() {
  return el("p", { class: "placeholder" }, "Pick a conversation on the left.");
}

function showConnection(label) {
  ui.connection.dataset.state = label;
  ui.connection.textContent = label;
}

async function setStatus(status) {
  try {
    state.me = await api("PUT", "/v1/me/status", { status });
    ui.status.value = state.me.status;
    scheduleRefresh();
  } catch (failure) {
    ui.status.value = state.me.status;
    toast(failure.message);
  }
}

function toast(text) {
  const note = el("div", { class: "toast", role: "status" }, text);
  document.body.append(note);
  setTimeout(() => note.remove(), 4000);
}

// ---- lists --------------------------------------------------------------------

async function refreshLists() {
  const [mine, queued, queues] = await Promise.all([
    api("GET", "/v1/conversations?assignee=me&limit=100&sort=last_message_at"),
    api("GET", "/v1/conversations?assignee=none&status=queued&limit=50&sort=created_at&order=asc"),
    api("GET", "/v1/queues"),
  ]);
  state.mine = mine.items.filter((c) => c.status !== "resolved");
  state.queued = queued.items;
  state.queues = queues;
  await renderList(ui.mine, state.mine, "No conversations assigned to you.");
  await renderList(ui.queued, state.queued, "Nobody is waiting.");
  renderQueueStats();
}

function scheduleRefresh() {
  // Many frames can arrive together (a replay after reconnecting): one refresh for all.
  if (state.refreshing) return;
  state.refreshing = setTimeout(async () => {
    state.refreshing = null;
    try {
      await refreshLists();
    } catch (failure) {
      if (!(failure instanceof ApiError && failure.status === 401)) toast(failure.message);
    }
  }, 100);
}

async function renderList(list, conversations, emptyText) {
  const items = await Promise.all(
    conversations.map(async (c) => {
      const name = await contactName(c.contact_id);
      return el(
        "li",
        {
          class: "conversation-item",
          dataset: { id: c.id, status: c.status, unread: state.unread.has(c.id) ? "yes" : "no" },
          "aria-current": state.selected && state.selected.id === c.id ? "true" : false,
        },
        el(
          "button",
          { type: "button", onclick: () => openConversation(c.id) },
          channelBadge(c.channel),
          el("span", { class: "contact" }, name),
          el("span", { class: "meta" }, `T${c.tier} · ${c.status} · ${formatTime(c.last_message_at)}`),
        ),
      );
    }),
  );
  list.replaceChildren(...(items.length ? items : [el("li", { class: "empty" }, emptyText)]));
}

function renderQueueStats() {
  const queues = state.queues;
  const rows = [
    ...queues.tiers.map((q) => ({ name: `Tier ${q.tier}`, ...q })),
    ...queues.teams.map((q) => ({ ...q, name: `Team ${q.name}` })),
  ];
  ui.queueStats.replaceChildren(
    el(
      "table",
      {},
      el("thead", {}, el("tr", {}, el("th", {}, "Queue"), el("th", {}, "Waiting"), el("th", {}, "Oldest"))),
      el(
        "tbody",
        {},
        rows.map((q) =>
          el(
            "tr",
            { dataset: { queue: q.name } },
            el("td", {}, q.name),
            el("td", { class: "depth" }, String(q.depth)),
            el("td", {}, formatWait(q.oldest_wait_seconds)),
          ),
        ),
      ),
    ),
  );
}

// ---- one conversation -----------------------------------------------------------

async function openConversation(conversationId) {
  const [conversation, timeline, routing] = await Promise.all([
    api("GET", `/v1/conversations/${conversationId}`),
    api("GET", `/v1/conversations/${conversationId}/timeline`),
    api("GET", `/v1/conversations/${conversationId}/routing`),
  ]);
  state.selected = conversation;
  state.rendered = new Set();
  state.unread.delete(conversationId);
  const name = await contactName(conversation.contact_id);
  ui.timeline = el("ol", { id: "timeline", class: "timeline", "aria-live": "polite" });
  ui.conversation.replaceChildren(
    el(
      "header",
      { class: "conversation-head" },
      channelBadge(conversation.channel),
      el("h2", { id: "contact-name" }, name),
      el("span", { id: "conversation-status", class: "pill" }, conversation.status),
      el("span", { class: "pill" }, `tier ${conversation.tier}`),
    ),
    ui.timeline,
    composer(conversation),
  );
  for (const message of timeline) appendMessage(message);
  renderDetails(conversation, routing);
  scheduleRefresh();
}

function appendMessage(message) {
  if (!ui.timeline || state.rendered.has(message.id)) return;
  state.rendered.add(message.id);
  const earlier = state.selected && message.conversation_id !== state.selected.id;
  const who = {
    inbound: "Customer",
    outbound: "Agent",
    note: "Internal note",
    system: "System",
  }[message.direction];
  ui.timeline.append(
    el(
      "li",
      {
        class: "message",
        dataset: { direction: message.direction, id: message.id, earlier: earlier ? "yes" : "no" },
      },
      el(
        "div",
        { class: "message-meta" },
        channelBadge(message.channel),
        el("span", {}, who || message.direction),
        el("time", { datetime: message.created_at }, formatTime(message.created_at)),
        earlier ? el("span", { class: "earlier" }, "earlier conversation") : null,
      ),
      el("p", { class: "message-text" }, message.text),
    ),
  );
  ui.timeline.scrollTop = ui.timeline.scrollHeight;
}

function composer(conversation) {
  const text = el("textarea", {
    id: "composer-text",
    name: "text",
    rows: 3,
    maxlength: 4000,
    placeholder: "Write a reply to the customer, or an internal note…",
    "aria-label": "Message",
  });
  const send = async (kind) => {
    const value = text.value.trim();
    if (!value) return;
    text.value = ""; // at once, so what is typed next is not cleared by this send
    try {
      const message = await api("POST", `/v1/conversations/${conversation.id}/${kind}`, { text: value });
      appendMessage(message);
    } catch (failure) {
      if (!text.value) text.value = value;
      toast(failure.message);
    }
  };
  return el(
    "form",
    { id: "composer", class: "composer", onsubmit: (e) => (e.preventDefault(), send("replies")) },
    text,
    el(
      "div",
      { class: "composer-actions" },
      el("button", { type: "submit", id: "send-reply" }, "Reply"),
      el("button", { type: "button", id: "add-note", class: "secondary", onclick: () => send("notes") }, "Add note"),
    ),
  );
}

function renderDetails(conversation, routing) {
  ui.details.replaceChildren(
    el("h2", {}, "Routing"),
    routingExplanation(routing),
    el("h2", {}, "Actions"),
    actionForm("transfer", "Transfer", conversation, [
      el("input", { name: "reason", required: true, placeholder: "Reason", "aria-label": "Transfer reason" }),
      el(
        "select",
        { name: "tier", "aria-label": "Transfer to tier" },
        el("option", { value: "" }, "tier…"),
        [1, 2, 3].map((t) => el("option", { value: t }, `tier ${t}`)),
      ),
      el("input", { name: "team", placeholder: "or team", "aria-label": "Transfer to team" }),
    ]),
    actionForm("escalate", "Escalate", conversation, [
      el("input", { name: "reason", required: true, placeholder: "Reason", "aria-label": "Escalation reason" }),
      el("input", { name: "team", placeholder: "team (optional)", "aria-label": "Escalate to team" }),
    ]),
    actionForm("resolve", "Resolve", conversation, [
      el(
        "select",
        { name: "outcome_code", "aria-label": "Outcome" },
        el("option", { value: "" }, "outcome…"),
        state.outcomes.map((o) => el("option", { value: o.code }, o.label)),
      ),
    ]),
  );
}

function routingExplanation(routing) {
  const intake = routing.intake || {};
  const decision = routing.latest_decision || {};
  const facts = [
    ["Status", routing.status],
    ["Tier", routing.tier],
    ["Priority", routing.priority],
    ["Skills", (routing.required_skills || []).join(", ") || "none"],
    ["SLA due", routing.sla_due_at ? new Date(routing.sla_due_at).toLocaleString() : "no clock"],
    ["Rule", decision.rule || "\u2013"],
    [
      "Candidates",
      `${(decision.candidates || []).length} eligible, ${Object.keys(decision.excluded || {}).length} excluded`,
    ],
  ];
  const assignments = routing.assignments.map((a) =>
    el(
      "li",
      {},
      el("strong", {}, a.reason),
      ` ${formatTime(a.created_at)}`,
      a.closed_reason ? ` \u2192 closed: ${a.closed_reason}` : " (open)",
    ),
  );
  return el(
    "div",
    { id: "routing", class: "routing" },
    el("dl", {}, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))])),
    assignments.length ? el("ol", { class: "assignments" }, assignments) : null,
    el(
      "details",
      {},
      el("summary", {}, "Full explanation"),
      el("pre", {}, JSON.stringify({ intake, latest_decision: decision, assignments: routing.assignments }, null, 2)),
    ),
  );
}

function actionForm(kind, label, conversation, fields) {
  const form = el("form", { class: "action", id: `${kind}-form`, "aria-label": label }, fields, el("button", { type: "submit" }, label));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const raw = Object.fromEntries(new FormData(form).entries());
    const body = {};
    for (const [key, value] of Object.entries(raw)) {
      if (value === "") continue;
      body[key] = key === "tier" ? Number(value) : value;
    }
    const path = {
      transfer: "transfers",
      escalate: "escalations",
      resolve: "resolve",
    }[kind];
    try {
      await api("POST", `/v1/conversations/${conversation.id}/${path}`, body);
      toast(`${label}: done`);
      form.reset();
      await openConversation(conversation.id);
    } catch (failure) {
      toast(failure.message);
    }
  });
  return form;
}

// ---- live frames ----------------------------------------------------------------

function onFrame(frame) {
  const data = frame.data || {};
  switch (frame.type) {
    case "ready":
      scheduleRefresh();
      if (state.selected) reloadSelected();
      break;
    case "message.created":
      if (state.selected && data.conversation_id === state.selected.id) {
        appendMessage({
          id: data.message_id,
          conversation_id: data.conversation_id,
          channel: data.channel,
          direction: data.direction,
          text: data.text,
          created_at: data.created_at,
        });
      } else {
        state.unread.add(data.conversation_id);
      }
      scheduleRefresh();
      break;
    case "conversation.assigned":
    case "conversation.unassigned":
    case "conversation.escalated":
    case "conversation.queued":
    case "conversation.status_changed":
      scheduleRefresh();
      if (state.selected && data.conversation_id === state.selected.id) reloadSelected();
      break;
    case "agent.mentioned":
    case "consultation.requested":
      toast("You were asked to help on a conversation.");
      break;
    default:
      break;
  }
}

async function reloadSelected() {
  // After a reconnect the replay covers the selected conversation's messages; the
  // status and routing are re-read so the side panel is current too.
  const id = state.selected.id;
  try {
    const [conversation, routing] = await Promise.all([
      api("GET", `/v1/conversations/${id}`),
      api("GET", `/v1/conversations/${id}/routing`),
    ]);
    if (!state.selected || state.selected.id !== id) return;
    state.selected = conversation;
    document.getElementById("conversation-status").textContent = conversation.status;
    renderDetails(conversation, routing);
  } catch (failure) {
    toast(failure.message);
  }
}

async function start() {
  if (!savedToken()) await signIn(root, { title: "Agent console" });
  try {
    state.me = await api("GET", "/v1/me");
  } catch (failure) {
    forgetToken();
    await signIn(root, { title: "Agent console" });
    state.me = await api("GET", "/v1/me");
  }
  const outcomes = await api("GET", "/v1/outcome-codes").catch(() => ({ items: [] }));
  state.outcomes = outcomes.items;
  layout();
  await refreshLists();
  state.socket = new LiveSocket({ onFrame, onState: showConnection, onRejected: signOut });
  state.socket.connect();
  setInterval(scheduleRefresh, 15000); // waits keep growing between events
}

start();
