// Shared by the agent console and the supervisor wall: the API client, a DOM builder
// that only ever sets text (customer text is never parsed as HTML), the sign-in form
// and the live socket that resumes from the last seq after a network loss.

const TOKEN_KEY = "omniroute.console.token";

// 24×24 outline icons (drawn as SVG paths, so no emoji font is needed).
export const CHANNELS = {
  webchat: { label: "Web chat", path: "M4 5h16v11H9l-5 4z" },
  email: { label: "Email", path: "M3 6h18v12H3zM3 6l9 7 9-7" },
  sms: { label: "SMS", path: "M7 2h10v20H7zM10 18h4" },
  social: { label: "Social", path: "M9 11a3 3 0 1 0 0-6 3 3 0 0 0 0 6zM3 20c0-3 3-5 6-5s6 2 6 5M16 5a3 3 0 0 1 0 6M18 15c2 .5 3 2.5 3 5" },
};
const UNKNOWN_CHANNEL = { label: "Other", path: "M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18zM12 16v.5M12 13a2 2 0 1 0-2-2" };
const SVG = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Build an element. Strings become text nodes; attributes are set, never parsed. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function channelBadge(channel) {
  const known = CHANNELS[channel] || UNKNOWN_CHANNEL;
  return el(
    "span",
    { class: "channel", title: known.label, role: "img", "aria-label": known.label, dataset: { channel } },
    svg(
      "svg",
      { viewBox: "0 0 24 24", width: 18, height: 18, fill: "none", stroke: "currentColor", "stroke-width": 1.8, "stroke-linejoin": "round", "stroke-linecap": "round" },
      svg("path", { d: known.path }),
    ),
  );
}

export function formatWait(seconds) {
  if (seconds === null || seconds === undefined) return "\u2013";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function formatTime(iso) {
  const when = new Date(iso);
  return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function savedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** JSON over fetch with the agent token; 401 signs out. */
export function createApi(onUnauthorized) {
  return async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const token = savedToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 204) return null;
    const payload = await response.json().catch(() => null);
    if (!response.ok) {
      if (response.status === 401 && token) onUnauthorized();
      throw new ApiError(response.status, payload);
    }
    return payload;
  };
}

/** Show the sign-in form in ``root`` until the agent signs in; resolves with the token. */
export function signIn(root, { title, workspace = "demo" }) {
  return new Promise((resolve) => {
    const error = el("p", { class: "error", role: "alert" });
    const form = el(
      "form",
      { class: "sign-in", "aria-label": "Sign in" },
      el("h1", {}, title),
      el("label", {}, "Workspace", el("input", { name: "workspace", required: true, value: workspace })),
      el("label", {}, "Email", el("input", { name: "email", type: "email", required: true, autocomplete: "username" })),
      el(
        "label",
        {},
        "Password",
        el("input", { name: "password", type: "password", required: true, autocomplete: "current-password" }),
      ),
      el("button", { type: "submit" }, "Sign in"),
      error,
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      const fields = Object.fromEntries(new FormData(form).entries());
      try {
        const response = await fetch("/v1/auth/token", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(fields),
        });
        const payload = await response.json().catch(() => null);
        if (!response.ok) throw new ApiError(response.status, payload);
        sessionStorage.setItem(TOKEN_KEY, payload.access_token);
        resolve(payload.access_token);
      } catch (failure) {
        error.textContent = failure.message;
      }
    });
    root.replaceChildren(form);
  });
}

/**
 * The agent WebSocket (/v1/ws). Remembers the last seq it saw and reconnects with
 * ?last_seq=… after any drop, so the server replays exactly what was missed; a frame at
 * or below the last seq (a replay overlapping what arrived) is discarded.
 */
export class LiveSocket {
  constructor({ onFrame, onState, onRejected, heartbeatSeconds = 15 }) {
    this.onFrame = onFrame;
    this.onState = onState;
    this.onRejected = onRejected;
    this.lastSeq = null;
    this.socket = null;
    this.retry = 0;
    this.timer = null;
    this.watchdog = null;
    this.silenceMs = heartbeatSeconds * 2500;
    this.stopped = false;
    window.addEventListener("offline", () => this.drop("offline"));
    window.addEventListener("online", () => this.reconnectNow());
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const resume = this.lastSeq === null ? "" : `?last_seq=${this.lastSeq}`;
    return `${scheme}//${location.host}/v1/ws${resume}`;
  }

  connect() {
    this.stopped = false;
    clearTimeout(this.timer);
    const socket = new WebSocket(this.url());
    this.socket = socket;
    this.onState("connecting");
    socket.addEventListener("open", () => {
      socket.send(JSON.stringify({ type: "auth", token: savedToken() }));
      this.touch();
    });
    socket.addEventListener("message", (message) => {
      if (socket !== this.socket) return;
      this.touch();
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return;
      }
      if (frame.type === "ready") {
        this.retry = 0;
        if (typeof frame.seq === "number") this.lastSeq = Math.max(this.lastSeq ?? 0, frame.seq);
        this.onState("live");
        this.onFrame(frame);
        return;
      }
      if (typeof frame.seq === "number") {
        if (this.lastSeq !== null && frame.seq <= this.lastSeq) return;
        this.lastSeq = frame.seq;
      }
      this.onFrame(frame);
    });
    socket.addEventListener("close", (event) => {
      if (socket !== this.socket) return;
      clearTimeout(this.watchdog);
      if (event.code === 4401) {
        this.stopped = true;
        this.onState("signed out");
        this.onRejected();
        return;
      }
      this.schedule();
    });
  }

  touch() {
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => this.drop("silent"), this.silenceMs);
  }

  drop(reason) {
    const socket = this.socket;
    this.socket = null;
    clearTimeout(this.watchdog);
    if (socket) socket.close();
    if (!this.stopped) {
      this.onState(reason === "offline" ? "offline" : "reconnecting");
      this.schedule();
    }
  }

  schedule() {
    if (this.stopped) return;
    this.onState(navigator.onLine ? "reconnecting" : "offline");
    clearTimeout(this.timer);
    const delay = Math.min(10000, 500 * 2 ** this.retry) * (0.75 + Math.random() / 2);
    this.retry += 1;
    this.timer = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.stopped) return;
    this.retry = 0;
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.close();
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.watchdog);
    if (this.socket) this.socket.close();
    this.socket = null;
  }
}
