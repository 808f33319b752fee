// The web chat page: a small UI on the TypeScript SDK (served by the edge under /sdk/).
// Everything a peer sends is shown as text (textContent), never as markup.

import { Client, IndexedDbBackend, Store } from "/sdk/index.js";

const $ = (id) => document.getElementById(id);
const MEMBER_PAGE = 50;

let client = null;
let open = null;
let membersShown = MEMBER_PAGE;

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

function showError(e) {
  $("error").textContent = e ? String(e.message ?? e) : "";
}

function text(body) {
  if (body === null || body === undefined) return "(deleted)";
  if (typeof body === "string") return body;
  if (typeof body === "object" && typeof body.text === "string") return body.text;
  return JSON.stringify(body);
}

function list(value) {
  return value
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
}

async function tokenFor(user, device, typed) {
  if (typed) return typed;
  const r = await fetch("/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user, device }),
  });
  if (r.status === 404) {
    $("token-field").hidden = false;
    throw new Error("This edge has no development sign-in: paste a device token.");
  }
  if (!r.ok) throw new Error((await r.text()).trim());
  return (await r.json()).token;
}

$("signin").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const user = form.get("user").trim();
  const device = form.get("device").trim();
  const typed = form.get("token").trim();
  try {
    await tokenFor(user, device, typed);
  } catch (e) {
    $("signin-error").textContent = e.message;
    return;
  }
  $("signin").hidden = true;
  $("app").hidden = false;
  $("me").textContent = `${user} · ${device}`;
  const store = await Store.open(new IndexedDbBackend(`anchorage-${location.host}-${user}-${device}`));
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  client = await Client.start({ url, store, token: () => tokenFor(user, device, typed) });
  window.anchorage = client;
  wire(client);
  renderConversations();
});

function setStatus(state) {
  const s = $("status");
  s.textContent = state;
  s.className = state === "online" ? "online" : "offline";
}

function wire(c) {
  c.on("connected", () => {
    setStatus("online");
    renderConversations();
  });
  c.on("disconnected", () => setStatus("offline"));
  c.on("stopped", (e) => {
    setStatus("signed out");
    showError(`Signed out by the server (${e.code})`);
  });
  c.on("messages", (e) => {
    renderConversations();
    if (e.conv === open) renderMessages();
  });
  c.on("acked", (e) => e.conv === open && renderMessages());
  c.on("failed", (e) => {
    showError(`Not sent: ${e.message}`);
    if (e.conv === open) renderMessages();
  });
  c.on("read", () => renderConversations());
  c.on("membership", (e) => {
    if (!e.joined && e.conv === open) closeConversation();
    renderConversations();
  });
  c.on("members", (e) => e.group === open && renderMembers());
}

function renderConversations() {
  const ul = $("conversations");
  ul.replaceChildren(
    ...client.conversations().map((s) =>
      el(
        "li",
        { class: s.conv === open ? "open" : "", "data-conv": s.conv, onclick: () => openConversation(s.conv) },
        el("div", {}, el("div", { class: "name" }, s.conv), el("div", { class: "preview" }, s.lastMessage ? `${s.lastMessage.sender}: ${text(s.lastMessage.body)}` : "")),
        s.unread > 0 ? el("span", { class: "unread", "data-testid": "unread" }, String(s.unread)) : "",
      ),
    ),
  );
}

function openConversation(conv) {
  open = conv;
  membersShown = MEMBER_PAGE;
  $("conversation").hidden = false;
  $("conv-title").textContent = conv;
  client.openConversation(conv);
  renderMessages();
  renderConversations();
  // Member lists load when a group opens, not at sign-in; 1:1s have none to show.
  const group = !conv.startsWith("dm-");
  $("members").hidden = !group;
  if (group) {
    $("member-list").replaceChildren();
    $("member-count").textContent = "(loading)";
    client.syncMembers(conv).then(() => conv === open && renderMembers());
  }
}

function closeConversation() {
  open = null;
  $("conversation").hidden = true;
  $("members").hidden = true;
}

function renderMessages() {
  if (!open) return;
  const me = client.user;
  const stored = client.messages(open);
  const shownIds = new Set(stored.map((m) => `${m.sender}/${m.client_msg_id}`));
  const pending = client.store
    .pending(1000)
    .filter((e) => e.conv === open && !shownIds.has(`${me}/${e.clientMsgId}`));
  const ol = $("messages");
  const stick = ol.scrollTop + ol.clientHeight >= ol.scrollHeight - 20;
  ol.replaceChildren(
    ...stored.map((m) =>
      el("li", { class: m.sender === me ? "mine" : "", "data-seq": String(m.seq) }, el("span", { class: "sender" }, m.sender), el("span", { class: "body" }, text(m.body))),
    ),
    ...pending.map((e) => el("li", { class: "mine pending", "data-pending": e.clientMsgId }, el("span", { class: "sender" }, me), el("span", { class: "body" }, text(e.body)))),
  );
  if (stick) ol.scrollTop = ol.scrollHeight;
  const last = stored.at(-1);
  if (last && document.visibilityState !== "hidden") {
    client.markRead(open, last.seq).catch(showError);
  }
}

function renderMembers() {
  const list = client.memberList(open);
  $("member-count").textContent = list ? `(${list.members.size})` : "";
  const page = client.members(open, 0, membersShown);
  $("member-list").replaceChildren(...page.map((m) => el("li", {}, m.nickname ? `${m.nickname} (${m.user})` : m.user, m.role && m.role !== "member" ? el("span", { class: "role" }, m.role) : "")));
  $("more-members").hidden = !list || list.members.size <= membersShown;
}

$("more-members").addEventListener("click", () => {
  membersShown += MEMBER_PAGE;
  renderMembers();
});

$("compose").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = ev.target.elements.text;
  const body = input.value;
  if (!open || !body) return;
  input.value = "";
  await client.send(open, body);
  renderMessages();
});

$("new-direct").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const peer = ev.target.elements.peer.value.trim();
  try {
    const conv = await client.openDirect(peer);
    ev.target.reset();
    openConversation(conv);
  } catch (e) {
    showError(e);
  }
});

$("new-group").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target.elements;
  const group = f.group.value.trim();
  try {
    await client.createGroup(group, f.title.value.trim() || group, list(f.members.value));
    ev.target.reset();
    openConversation(group);
  } catch (e) {
    showError(e);
  }
});

$("add-members").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    await client.addMembers(open, list(ev.target.elements.members.value));
    ev.target.reset();
    showError(null);
  } catch (e) {
    showError(e);
  }
});

document.addEventListener("visibilitychange", () => renderMessages());
