// The chat page inside the widget's iframe. It opens a web-chat session on first
// message (kept in localStorage, so a reload continues the conversation), posts
// messages with a client_message_id (a retry is stored once), receives agents' replies
// over the session WebSocket and, whenever the socket is (re)opened, reads the history
// for replies it missed. Every text is set as text, never parsed as HTML.

const params = new URLSearchParams(location.search);
const workspace = params.get("workspace") || "";
const storageKey = `omniroute.chat.${workspace}`;

const list = document.getElementById("messages");
const form = document.getElementById("chat-form");
const input = document.getElementById("chat-text");
const nameInput = document.getElementById("chat-name");
const stateLabel = document.getElementById("chat-state");

const shown = new Set();
let session = loadSession();
let socket = null;
let retry = 0;

function loadSession() {
  try {
    const saved = JSON.parse(localStorage.getItem(storageKey) || "null");
    if (saved && new Date(saved.expires_at) > new Date()) return saved;
  } catch {
    // unreadable: start a new session
  }
  return null;
}

function setState(text, state) {
  stateLabel.textContent = text;
  stateLabel.dataset.state = state;
}

function bubble({ id, direction, text, who, pending }) {
  if (id && shown.has(id)) return null;
  if (id) shown.add(id);
  const item = document.createElement("li");
  item.className = "bubble";
  item.dataset.direction = direction;
  if (id) item.dataset.id = id;
  if (pending) item.dataset.pending = "yes";
  if (who) {
    const label = document.createElement("span");
    label.className = "who";
    label.textContent = who;
    item.append(label);
  }
  item.append(document.createTextNode(text));
  list.append(item);
  list.scrollTop = list.scrollHeight;
  return item;
}

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (session) headers.Authorization = `Bearer ${session.session_token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const payload = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error((payload && (payload.detail || payload.title)) || `HTTP ${response.status}`);
    error.status = response.status;
    error.retryAfter = Number(response.headers.get("Retry-After")) || 0;
    throw error;
  }
  return payload;
}

async function openSession() {
  const name = nameInput.value.trim();
  const created = await call("POST", `/v1/webchat/${encodeURIComponent(workspace)}/sessions`, name ? { display_name: name } : {});
  session = {
    session_id: created.session_id,
    session_token: created.session_token,
    expires_at: created.expires_at,
  };
  localStorage.setItem(storageKey, JSON.stringify(session));
  form.dataset.hasSession = "yes";
  connect();
}

async function readHistory({ onlyReplies }) {
  const history = await call("GET", `/v1/webchat/sessions/${session.session_id}/messages`);
  for (const message of history.messages) {
    // Agents' replies and system notices (queue position, handoffs) are both "ours".
    const ours = message.direction !== "inbound";
    if (onlyReplies && !ours) continue;
    bubble({
      id: message.message_id,
      direction: ours ? "outbound" : "inbound",
      text: message.text,
      who: ours ? "Support" : null,
    });
  }
}

function connect() {
  if (!session) return;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/v1/webchat/sessions/${session.session_id}/ws`);
  socket = ws;
  setState("Connecting…", "connecting");
  ws.addEventListener("open", () => ws.send(JSON.stringify({ type: "auth", token: session.session_token })));
  ws.addEventListener("message", async (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    if (frame.type === "ready") {
      retry = 0;
      setState("Connected \u2014 we usually answer in a few minutes", "live");
      // Replies sent before this socket was up (a queue notice right after the first
      // message, or anything during a reconnect) are read back; shown ones are skipped.
      await readHistory({ onlyReplies: true }).catch(() => {});
    } else if (frame.type === "message") {
      bubble({ id: frame.message_id, direction: "outbound", text: frame.text, who: frame.agent_name || "Support" });
    }
  });
  ws.addEventListener("close", (event) => {
    if (ws !== socket) return;
    if (event.code === 4401 || event.code === 4404) {
      // The session expired or is unknown: the next message opens a new one.
      localStorage.removeItem(storageKey);
      session = null;
      form.dataset.hasSession = "no";
      setState("Write to start a new chat", "idle");
      return;
    }
    setState("Reconnecting…", "reconnecting");
    const delay = Math.min(10000, 500 * 2 ** retry) * (0.75 + Math.random() / 2);
    retry += 1;
    setTimeout(connect, delay);
  });
}

// Offline, the socket is closed at once (it might otherwise look open for a long time);
// back online, it reconnects and the history fills in what was missed.
window.addEventListener("offline", () => {
  const open = socket;
  socket = null;
  if (open) open.close();
  if (session) setState("Offline \u2014 we will reconnect", "offline");
});
window.addEventListener("online", () => {
  if (session && !socket) {
    retry = 0;
    connect();
  }
});

async function send(text) {
  const clientId = crypto.randomUUID();
  const item = bubble({ direction: "inbound", text, pending: true });
  for (let attempt = 0; attempt < 4; attempt += 1) {
    try {
      if (!session) await openSession();
      await call("POST", `/v1/webchat/sessions/${session.session_id}/messages`, { text, client_message_id: clientId });
      delete item.dataset.pending;
      return;
    } catch (failure) {
      if (failure.status && failure.status < 500 && failure.status !== 429) {
        item.dataset.failed = "yes";
        item.title = failure.message;
        return;
      }
      // 429, 503 or a network error: the same client_message_id makes the retry safe.
      const wait = Math.max(500 * 2 ** attempt, (failure.retryAfter || 0) * 1000);
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
  item.dataset.failed = "yes";
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  send(text);
});

input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    form.requestSubmit();
  }
});

if (!workspace) {
  setState("This widget has no workspace", "error");
  form.hidden = true;
} else if (session) {
  form.dataset.hasSession = "yes";
  readHistory({ onlyReplies: false })
    .then(connect)
    .catch(() => {
      localStorage.removeItem(storageKey);
      session = null;
      form.dataset.hasSession = "no";
    });
}
