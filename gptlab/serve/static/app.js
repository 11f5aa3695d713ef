// gptlab web chat: one page, no build step. Talks to the OpenAI-compatible API for replies
// (/v1/models, /v1/chat/completions with stream: true) and to /api/* for history,
// personalization, thumbs and A/B votes (see gptlab/serve/web.py), and, when the server's
// operator enabled tools, to /api/tools to run a tool call the person confirmed
// (gptlab/serve/web_tools.py).
"use strict";

const MAX_TOOL_ROUNDS = 3;   // rounds of tool calls per message, as in `gptlab chat`
const DECLINED = '{"error": "the user declined to run this call"}';   // what a skipped call tells the model

const $ = (sel) => document.querySelector(sel);
const store = window.localStorage;

const state = {
  user: store.getItem("gptlab.user") || "",
  apiKey: store.getItem("gptlab.apiKey") || "",
  models: [],
  contexts: {},        // model id -> context_length (GET /v1/models)
  customInstructions: "",
  defaultSystem: "",
  conv: null,          // {id, title, system, messages: [{role, content, model, sampling, rating, response_id, ab,
                       //   dropped (older messages left out of its prompt), error (a user turn not answered)}]}
  pending: null,       // an A/B pair waiting for a vote: {prompt, answers: [{text, model, sampling}], blind}
  busy: null,          // AbortController of the reply being streamed
  tools: [],           // definitions of the tools the server runs (GET /api/tools; [] when off)
  awaiting: null,      // the tool call waiting for Run / Skip: {id, decide(run)}
  running: null,       // the id of the tool call running on the server
};

// ------------------------------------------------------------------ markdown (untrusted model output)

const md = new marked.Marked({ gfm: true, breaks: true });
// Raw HTML in the markdown is shown as text, never rendered; DOMPurify cleans what is left.
md.use({ renderer: { html: (token) => escapeHtml(token.text || token.raw || "") } });

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function renderMarkdown(text) {
  const div = document.createElement("div");
  div.className = "markdown";
  div.innerHTML = DOMPurify.sanitize(md.parse(text || ""), { USE_PROFILE: { html: true } });
  div.querySelectorAll("pre code").forEach((el) => hljs.highlightElement(el));
  div.querySelectorAll("a").forEach((a) => { a.target = "_blank"; a.rel = "noopener noreferrer"; });
  return div;
}

// ------------------------------------------------------------------ HTTP

function headers() {
  // Header values are latin-1: percent-encode the name so any script works (web.py decodes it).
  const h = { "Content-Type": "application/json", "X-Gptlab-User": encodeURIComponent(state.user) };
  if (state.apiKey) h["Authorization"] = "Bearer " + state.apiKey;
  return h;
}

async function errorMessage(res) {
  const text = await res.text();
  try {
    const body = JSON.parse(text);
    if (body.error && body.error.message) return body.error.message;
    if (body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) { /* not JSON */ }
  return `${res.status} ${res.statusText}: ${text.slice(0, 300)}`;
}

async function api(method, path, body) {
  const res = await fetch(path, { method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body) });
  if (!res.ok) throw new Error(await errorMessage(res));
  return res.json();
}

// POST /v1/chat/completions with stream: true; calls onDelta(choiceIndex, text) per SSE chunk.
// Returns {finish: {choiceIndex: finish_reason}, clamped: the max_tokens the server lowered
// the request to (it may: we ask for the clamp policy), or null, calls: {choiceIndex: the
// tool calls, in OpenAI's message shape}}. Throws on any error, including one sent
// mid-stream and a stream that ends without [DONE].
async function streamChat(body, onDelta, signal) {
  const res = await fetch("v1/chat/completions", {
    method: "POST", headers: { ...headers(), "X-Gptlab-Max-Tokens": "clamp" }, signal,
    body: JSON.stringify({ ...body, stream: true }),
  });
  if (!res.ok) throw new Error(await errorMessage(res));
  const clamped = parseInt(res.headers.get("X-Gptlab-Max-Tokens-Clamped"), 10) || null;
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  const finish = {};
  const calls = {};
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return { finish, clamped, calls };
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
        for (const choice of chunk.choices || []) {
          const delta = choice.delta || {};
          if (delta.content) onDelta(choice.index || 0, delta.content);
          for (const piece of delta.tool_calls || []) addCallPiece(calls, choice.index || 0, piece);
          if (choice.finish_reason) finish[choice.index || 0] = choice.finish_reason;
        }
      }
    }
  }
  throw new Error("The connection closed before the reply was finished.");
}

// One delta.tool_calls entry into calls[choice]: gptlab's server sends each call whole,
// OpenAI's API may send the arguments in pieces (joined here by the call's index).
function addCallPiece(calls, choice, piece) {
  const list = calls[choice] || (calls[choice] = []);
  const k = piece.index ?? list.length;
  const call = list[k] || (list[k] = { id: "", type: "function", function: { name: "", arguments: "" } });
  const fn = piece.function || {};
  if (piece.id) call.id = piece.id;
  if (fn.name) call.function.name = fn.name;
  if (fn.arguments) call.function.arguments += fn.arguments;
}

// ------------------------------------------------------------------ settings

function sampling() {
  const stop = $("#stop-seqs").value.split("\n").filter((s) => s.length > 0);
  const out = { temperature: parseFloat($("#temperature").value), max_tokens: parseInt($("#max-tokens").value, 10) || 256 };
  if (stop.length) out.stop = stop.slice(0, 4);
  return out;
}

function abMode() {
  return $("#ab-toggle").checked ? document.querySelector("input[name=ab-mode]:checked").value : "off";
}

// The tool definitions to send: only when the operator enabled tools and the person ticked
// Tools (A/B pairs are answered without tools).
function toolsOn() {
  return state.tools.length > 0 && $("#tools-toggle").checked && abMode() === "off" ? state.tools : null;
}

// The system message the model sees: this chat's system message + the user's custom instructions.
function systemText() {
  return [state.conv.system.trim(), state.customInstructions.trim()].filter(Boolean).join("\n\n");
}

// The chat messages for a reply to messages[0..upto): role/content only, system first.
// `system` defaults to the current one; a rating uses the one its reply was written under,
// and leaves out the `dropped` oldest messages its prompt left out.
function promptMessages(upto, system = systemText(), dropped = 0) {
  const history = state.conv.messages.slice(dropped, upto).map(wireMessage);
  return system ? [{ role: "system", content: system }, ...history] : history;
}

// A stored message as the API takes it: role and content, an assistant's tool calls, and the
// call a tool result answers (not the page's own marks).
function wireMessage(m) {
  const out = { role: m.role, content: m.content };
  if (m.tool_calls) out.tool_calls = m.tool_calls;
  if (m.role === "tool") out.tool_call_id = m.tool_call_id;
  return out;
}

// ------------------------------------------------------------------ fitting the model's context

// What to send `model` so the prompt fits its context with room for a reply: the oldest
// turns are left out when they no longer fit (never the system message; the stored chat
// keeps them), and max_tokens never asks for more than the context has left.
// `tools`: the definitions the request will carry (they take prompt tokens too), or null.
// -> {messages, sampling, dropped, context}
async function fitPrompt(model, messages, samp, tools = null) {
  const ctx = state.contexts[model];
  if (!ctx) return { messages, sampling: samp, dropped: 0, context: null };   // unknown model: the server says why
  // Room kept for the reply when older turns must go: max tokens, but at most a quarter of the context.
  const room = Math.min(samp.max_tokens, Math.max(16, Math.floor(ctx / 4)));
  const fit = await api("POST", "api/fit", { model, messages, reply_tokens: room, ...(tools ? { tools } : {}) });
  const maxTokens = Math.max(1, Math.min(samp.max_tokens, ctx - fit.prompt_tokens));
  return { messages: dropOldest(messages, fit.dropped), sampling: { ...samp, max_tokens: maxTokens },
           dropped: fit.dropped, context: ctx };
}

function dropOldest(messages, n) {
  const sys = messages.length && messages[0].role === "system" ? 1 : 0;
  return [...messages.slice(0, sys), ...messages.slice(sys + n)];
}

// Two models see the same prompt (one A/B comparison): leave out as many turns as the
// smaller context needs, then fit max_tokens to each.
async function fitBoth(models, messages, samp) {
  const fits = await Promise.all(models.map((m) => fitPrompt(m, messages, samp)));
  const most = Math.max(...fits.map((f) => f.dropped));
  if (fits.every((f) => f.dropped === most)) return fits;
  const kept = dropOldest(messages, most);
  const refits = await Promise.all(models.map((m) => fitPrompt(m, kept, samp)));
  return refits.map((f) => ({ ...f, dropped: most }));
}

function droppedNote(m) {
  if (!m.dropped) return null;
  const note = document.createElement("div");
  note.className = "context-note";
  note.textContent = `${m.dropped} earlier message${m.dropped > 1 ? "s" : ""} left out of this reply's prompt: ` +
    `they no longer fit the model's ${m.context ? m.context + "-token " : ""}context (they stay in this chat).`;
  return note;
}

// ------------------------------------------------------------------ conversations

function newConversation() {
  return { id: null, title: "", system: state.defaultSystem, messages: [] };
}

async function saveConversation() {
  const c = state.conv;
  const saved = await api("POST", "api/conversations", {
    id: c.id, title: c.title, system: c.system, messages: c.messages, model: $("#model").value,
    settings: { ...sampling(), ab: abMode() },
  });
  c.id = saved.id;
  c.title = saved.title;
  if (c === state.conv) rememberOpen(c.id);   // (the user may have opened another chat meanwhile)
  await refreshConversationList();
}

// The chat open in this browser, per user name, so a reload reopens it.
function rememberOpen(id) {
  const key = "gptlab.open." + state.user;
  if (id) store.setItem(key, id);
  else store.removeItem(key);
}

async function refreshConversationList() {
  const { data } = await api("GET", "api/conversations");
  const nav = $("#conversations");
  nav.replaceChildren();
  for (const item of data) {
    const row = document.createElement("div");
    row.className = "conv" + (state.conv && item.id === state.conv.id ? " active" : "");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "conv-open";
    open.textContent = item.title || "New chat";
    open.title = item.title;
    open.onclick = () => openConversation(item.id);
    const del = document.createElement("button");
    del.type = "button";
    del.className = "conv-delete";
    del.textContent = "×";
    del.title = "Delete this chat";
    del.onclick = () => deleteConversation(item.id);
    row.append(open, del);
    nav.append(row);
  }
}

async function openConversation(id) {
  if (state.busy) return;
  const c = await api("GET", "api/conversations/" + encodeURIComponent(id));
  state.conv = { id: c.id, title: c.title, system: c.system, messages: c.messages };
  state.pending = null;
  rememberOpen(c.id);
  $("#system").value = c.system;
  if (c.model && state.models.includes(c.model)) $("#model").value = c.model;
  showContext();
  renderMessages();
  await refreshConversationList();
}

async function deleteConversation(id) {
  await api("DELETE", "api/conversations/" + encodeURIComponent(id));
  if (state.conv && state.conv.id === id) startNewChat();
  await refreshConversationList();
}

function startNewChat() {
  if (state.busy) return;
  state.conv = newConversation();
  state.pending = null;
  rememberOpen(null);
  $("#system").value = state.conv.system;
  renderMessages();
  refreshConversationList().catch(showError);
  $("#input").focus();
}

// ------------------------------------------------------------------ rendering

function renderMessages() {
  const box = $("#messages");
  box.querySelectorAll(".msg, .ab-pair, .actions.retry").forEach((el) => el.remove());
  $("#empty").hidden = state.conv.messages.length > 0 || !!state.pending;
  state.conv.messages.forEach((m, i) => {
    const view = m.ab ? pairView(m, i) : messageView(m, i);
    if (view) box.append(view);
  });
  const last = state.conv.messages[state.conv.messages.length - 1];
  const unanswered = last && (last.role === "user" || last.role === "tool");
  if (unanswered && !state.busy && !state.pending) box.append(retryView());
  if (state.pending) box.append(pendingView());
  updateComposer();
  box.scrollTop = box.scrollHeight;
}

function messageView(m, i) {
  if (m.role === "tool") return null;   // a tool result is shown in its call's card
  const el = document.createElement("article");
  el.className = "msg " + m.role;
  const body = document.createElement("div");
  body.className = "body";
  if (m.role === "assistant") body.append(renderMarkdown(m.content));
  else body.textContent = m.content;
  el.append(body);
  for (const call of m.tool_calls || []) el.append(callCard(call, i));
  if (m.role === "user" && m.error) {
    const failed = document.createElement("div");
    failed.className = "failed";
    failed.textContent = "Not answered: " + m.error;
    el.append(failed);
  }
  const note = m.role === "assistant" && droppedNote(m);
  if (note) el.prepend(note);
  const last = i === state.conv.messages.length - 1;
  if (m.role === "assistant" && !m.tool_calls && !(state.busy && last)) el.append(actionsView(m, i));
  return el;
}

// ------------------------------------------------------------------ tool calls

// A call the model made (in message i): its name and arguments, then Run / Skip while it
// waits for the person, and its result (or that it was skipped) once there is one.
function callCard(call, i) {
  const card = document.createElement("div");
  card.className = "tool-call";
  card.dataset.callId = call.id;
  const head = document.createElement("div");
  head.className = "tool-head";
  head.textContent = "Tool call: " + call.function.name;
  const args = document.createElement("pre");
  args.className = "tool-args";
  args.textContent = prettyJson(call.function.arguments);
  card.append(head, args);
  const result = toolResult(i, call.id);
  if (result) card.append(resultView(result));
  else if (state.awaiting && state.awaiting.id === call.id) card.append(confirmView(state.awaiting));
  else if (state.running === call.id) card.append(toolNote("Running on the server…"));
  return card;
}

// The tool turn answering call `id` of message i: among the tool turns right after it.
function toolResult(i, id) {
  const messages = state.conv.messages;
  for (let j = i + 1; j < messages.length && messages[j].role === "tool"; j++) {
    if (messages[j].tool_call_id === id) return messages[j];
  }
  return null;
}

function prettyJson(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch (_) {
    return text;   // shown as the model wrote it; the server's run says what is wrong with it
  }
}

function confirmView(awaiting) {
  const bar = document.createElement("div");
  bar.className = "tool-confirm";
  const ask = document.createElement("span");
  ask.textContent = "Run this call on the server?";
  const run = document.createElement("button");
  run.type = "button";
  run.className = "tool-run";
  run.textContent = "Run";
  run.onclick = () => awaiting.decide(true);
  const skip = document.createElement("button");
  skip.type = "button";
  skip.className = "tool-skip";
  skip.textContent = "Skip";
  skip.onclick = () => awaiting.decide(false);
  bar.append(ask, run, skip);
  return bar;
}

function resultView(m) {
  const el = document.createElement("div");
  el.className = "tool-result" + (m.ok || m.skipped ? "" : " failed");
  const label = document.createElement("div");
  label.className = "tool-label";
  label.textContent = m.skipped ? "Skipped: the model is told you declined" : m.ok ? "Result" : "Tool error";
  el.append(label);
  if (!m.skipped) {
    const out = document.createElement("pre");
    out.textContent = m.content;
    el.append(out);
  }
  return el;
}

function toolNote(text) {
  const el = document.createElement("div");
  el.className = "tool-note";
  el.textContent = text;
  return el;
}

// Wait for the person's Run (true) or Skip (false) on `call`; Stop rejects.
function confirmCall(call, signal) {
  return new Promise((resolve, reject) => {
    const stop = () => {
      state.awaiting = null;
      reject(new DOMException("The reply was stopped.", "AbortError"));
    };
    if (signal.aborted) return stop();
    signal.addEventListener("abort", stop, { once: true });
    state.awaiting = { id: call.id, decide: (run) => {
      signal.removeEventListener("abort", stop);
      state.awaiting = null;
      resolve(run);
    } };
    renderMessages();
  });
}

// Show one call, run it on the server if the person says Run, and add its result as a tool turn.
async function runCall(call, signal) {
  const run = await confirmCall(call, signal);
  let result = { ok: false, content: DECLINED };
  if (run) {
    state.running = call.id;
    renderMessages();
    try {
      result = await api("POST", "api/tools/run", { name: call.function.name, arguments: call.function.arguments });
    } finally {
      state.running = null;
    }
  }
  state.conv.messages.push({ role: "tool", tool_call_id: call.id, name: call.function.name,
                             content: result.content, ok: result.ok, skipped: !run });
  renderMessages();
}

// A user turn left without a reply (an error, or Stop before the first token): ask again.
function retryView() {
  const bar = document.createElement("div");
  bar.className = "actions retry";
  const b = document.createElement("button");
  b.type = "button";
  b.title = "Retry";
  b.setAttribute("aria-label", "Retry");
  b.append(icon("redo"), document.createTextNode(" Retry"));
  b.onclick = () => { if (!state.busy) reply(); };
  bar.append(b);
  return bar;
}

// Icons as inline SVG (system fonts often lack emoji). Paths from Feather Icons (MIT).
const ICONS = {
  up: "M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3zM7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3",
  down: "M10 15v4a3 3 0 0 0 3 3l4-9V2H5.72a2 2 0 0 0-2 1.7l-1.38 9a2 2 0 0 0 2 2.3zm7-13h2.67A2.31 2.31 0 0 1 22 4v7a2.31 2.31 0 0 1-2.33 2H17",
  copy: "M20 9h-9a2 2 0 0 0-2 2v9a2 2 0 0 0 2 2h9a2 2 0 0 0 2-2v-9a2 2 0 0 0-2-2zM5 15H4a2 2 0 0 1-2-2V4a2 2 0 0 1 2-2h9a2 2 0 0 1 2 2v1",
  redo: "M23 4v6h-6M1 20v-6h6M3.51 9a9 9 0 0 1 14.85-3.36L23 10M1 14l4.64 4.36A9 9 0 0 0 20.49 15",
};

function icon(name) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", ICONS[name]);
  svg.append(path);
  return svg;
}

function actionsView(m, i) {
  const bar = document.createElement("div");
  bar.className = "actions";
  const button = (label, title, onclick, active) => {
    const b = document.createElement("button");
    b.type = "button";
    b.append(icon(label));
    b.title = title;
    b.setAttribute("aria-label", title);
    if (active) b.classList.add("active");
    b.onclick = onclick;
    bar.append(b);
    return b;
  };
  button("up", "Good answer", () => rate(i, 1), m.rating === 1);
  button("down", "Bad answer", () => rate(i, -1), m.rating === -1);
  button("copy", "Copy", () => navigator.clipboard && navigator.clipboard.writeText(m.content));
  if (i === state.conv.messages.length - 1 && !state.busy) button("redo", "Regenerate", regenerate);
  if (m.model) {
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = m.model + (m.finish === "length" ? " · cut at max tokens" : m.finish === "stopped" ? " · stopped" :
      m.finish === "tool_limit" ? ` · stopped after ${MAX_TOOL_ROUNDS} rounds of tool calls` : "") +
      (m.clamped ? " · max tokens lowered to fit the context" : "");
    bar.append(tag);
  }
  return bar;
}

function answerColumn(label, answer, extraClass) {
  const col = document.createElement("div");
  col.className = "ab-answer " + (extraClass || "");
  const head = document.createElement("div");
  head.className = "ab-head";
  head.textContent = label;
  const body = document.createElement("div");
  body.className = "body";
  body.append(renderMarkdown(answer.text));
  col.append(head, body);
  return col;
}

// What the pending and the voted A/B views share: the pair's box, the note on turns the
// context dropped, then the two answer columns side by side.
function abPair(m, className, columns) {
  const el = document.createElement("div");
  el.className = className;
  const dropped = droppedNote(m);
  if (dropped) el.append(dropped);
  const cols = document.createElement("div");
  cols.className = "ab-cols";
  cols.append(...columns);
  el.append(cols);
  return el;
}

function pendingView() {
  const p = state.pending;
  const el = abPair(p, "ab-pair pending", p.answers.map((a, k) => answerColumn(
    (k ? "B" : "A") + (p.blind ? "" : " · " + a.model), a, "streaming-" + k)));
  const vote = document.createElement("div");
  vote.className = "ab-vote";
  if (!state.busy) {
    for (const [winner, text] of [["a", "A is better"], ["tie", "Tie"], ["b", "B is better"]]) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = text;
      b.dataset.winner = winner;
      b.onclick = () => vote_(winner);
      vote.append(b);
    }
  } else {
    vote.textContent = "Writing two answers…";
  }
  el.append(vote);
  return el;
}

function pairView(m, i) {
  const w = m.ab.winner;
  const el = abPair(m, "ab-pair voted", [
    answerColumn("A · " + m.ab.a.model + (w === "a" ? " ✓ preferred" : ""), m.ab.a, w === "b" ? "loser" : "winner"),
    answerColumn("B · " + m.ab.b.model + (w === "b" ? " ✓ preferred" : ""), m.ab.b, w === "a" ? "loser" : "winner"),
  ]);
  const note = document.createElement("div");
  note.className = "ab-note";
  note.textContent = w === "tie" ? "You voted: tie (A continues the chat)" : `You voted: ${w.toUpperCase()} is better`;
  el.append(note, actionsView(m, i));
  return el;
}

function updateComposer() {
  const busy = !!state.busy;
  $("#send").hidden = busy;
  $("#stop").hidden = !busy;
  $("#input").disabled = !!state.pending;
  $("#hint").textContent = state.pending && !busy ? "Pick the better answer to continue."
    : state.awaiting ? "Run or skip the tool call to continue." : "";
}

function showError(err) {
  const box = $("#error");
  box.textContent = String(err && err.message ? err.message : err);
  box.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { box.hidden = true; }, 8000);
}

// Re-render a streaming bubble at most once per frame (markdown + highlighting are not free).
function liveRenderer(getTarget) {
  let scheduled = false;
  return (text) => {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      const target = getTarget();
      if (!target) return;
      target.replaceChildren(renderMarkdown(text()));
      const box = $("#messages");
      box.scrollTop = box.scrollHeight;
    });
  };
}

// ------------------------------------------------------------------ actions

async function send(text) {
  if (state.busy || state.pending || !text.trim()) return;
  state.conv.messages.push({ role: "user", content: text });
  renderMessages();
  // Stored before the reply: what was typed survives a failed reply and a reload.
  try { await saveConversation(); } catch (err) { showError(err); }
  await reply();
}

async function regenerate() {
  if (state.busy) return;
  const messages = state.conv.messages;
  const last = messages[messages.length - 1];
  if (!last || last.role !== "assistant") return;
  // The whole answer goes, with any tool calls made on the way to it.
  while (messages.length && messages[messages.length - 1].role !== "user") messages.pop();
  await reply();
}

// Answer the last user turn. A failure keeps that turn, marked with the error, under a Retry
// button; no failed (or half) reply is kept, so none can be rated or voted on.
async function reply() {
  const mode = abMode();
  const turn = state.conv.messages[state.conv.messages.length - 1];
  delete turn.error;
  state.busy = new AbortController();
  $("#error").hidden = true;
  try {
    if (mode === "off") await replyOne();
    else await replyPair(mode);
  } catch (err) {
    state.busy.abort();     // the other stream of a pair, if one is still running
    state.pending = null;   // a pair is voted on only when both answers are complete
    if (err.name !== "AbortError") {
      showError(err);
      if (state.conv.messages[state.conv.messages.length - 1] === turn) turn.error = errorText(err);
    }
  } finally {
    state.busy = null;
    renderMessages();
  }
  try {
    await saveConversation();
  } catch (err) {
    showError(err);
  }
}

function errorText(err) {
  return String(err && err.message ? err.message : err);
}

// One answer. With tools on, a reply that calls tools shows each call for Run / Skip, the
// results go back to the model, and it replies again, for at most MAX_TOOL_ROUNDS rounds.
async function replyOne() {
  const model = $("#model").value;
  const samp = sampling();
  const signal = state.busy.signal;
  const tools = toolsOn();
  const start = state.conv.messages.length;
  let msg = null;
  try {
    for (let round = 0; ; round++) {
      msg = null;   // set as soon as this round's reply is shown, so a failure can drop it
      msg = await streamReply(model, samp, tools, signal, (m) => { msg = m; });
      if (!msg.tool_calls) return;
      if (round >= MAX_TOOL_ROUNDS) {   // bounded: the calls of one round too many are not run
        delete msg.tool_calls;
        msg.finish = "tool_limit";
        return;
      }
      for (const call of msg.tool_calls) await runCall(call, signal);
    }
  } catch (err) {
    // Stop keeps an answer written so far; an error, or a stop among tool calls, drops this
    // reply's turns (the user turn stays, to retry).
    if (msg) msg.finish = "stopped";
    const keep = err.name === "AbortError" && msg && msg.content && !msg.tool_calls;
    if (!keep) state.conv.messages.splice(start);
    throw err;
  }
}

// Stream one reply to the conversation so far and append it (`started` gets it as soon as
// it is shown): {role: "assistant", content, tool_calls (when it called tools), ...}.
async function streamReply(model, samp, tools, signal, started) {
  const fit = await fitPrompt(model, promptMessages(state.conv.messages.length), samp, tools);
  const msg = { role: "assistant", content: "", model, sampling: fit.sampling, system: systemText(),
                dropped: fit.dropped, context: fit.context };
  state.conv.messages.push(msg);
  started(msg);
  renderMessages();
  const bubbles = $("#messages").querySelectorAll(".msg.assistant .body");
  const target = bubbles[bubbles.length - 1];
  target.parentElement.classList.add("streaming");
  const draw = liveRenderer(() => target);
  const body = { model, messages: fit.messages, ...fit.sampling, ...(tools ? { tools } : {}) };
  const { finish, clamped, calls } = await streamChat(body,
    (_, delta) => { msg.content += delta; draw(() => msg.content); }, signal);
  msg.finish = finish[0] || "stop";
  if (clamped) Object.assign(msg, { clamped: true, sampling: { ...msg.sampling, max_tokens: clamped } });
  if (calls[0] && calls[0].length) msg.tool_calls = calls[0];
  return msg;
}

async function replyPair(mode) {
  const samp = sampling();
  // Two samples of one model only differ when sampling: raise temperature 0 to 1.
  const pairSampling = { ...samp, temperature: samp.temperature > 0 ? samp.temperature : 1.0 };
  let models = [$("#model").value, $("#model").value];
  let blind = false;
  if (mode === "models") {
    models = [$("#model").value, $("#model-b").value];
    blind = true;   // show model names only after the vote, and shuffle sides against position bias
    if (Math.random() < 0.5) models.reverse();
  }
  const signal = state.busy.signal;
  const history = promptMessages(state.conv.messages.length);
  const fits = mode === "models" ? await fitBoth(models, history, samp)
                                 : [await fitPrompt(models[0], history, pairSampling)];
  const prompt = fits[0].messages;   // what both answers reply to: the prompt the vote stores
  const answers = models.map((model, k) => ({ text: "", model, sampling: fits[fits.length > 1 ? k : 0].sampling }));
  const context = Math.min(...fits.map((f) => f.context || Infinity));   // the smaller one decided the cut
  state.pending = { prompt, answers, blind, dropped: fits[0].dropped, context: context === Infinity ? null : context };
  renderMessages();
  const draws = answers.map((a, k) => liveRenderer(() => document.querySelector(`.ab-pair.pending .streaming-${k} .body`)));
  const onDelta = (offset) => (k, delta) => { answers[k + offset].text += delta; draws[k + offset](() => answers[k + offset].text); };
  if (mode === "models") {
    await Promise.all(models.map((model, k) =>
      streamChat({ model, messages: prompt, ...answers[k].sampling }, onDelta(k), signal)));
  } else {
    await streamChat({ model: models[0], messages: prompt, ...answers[0].sampling, n: 2 }, onDelta(0), signal);
  }
}

async function vote_(winner) {
  const p = state.pending;
  if (!p || state.busy) return;
  const [a, b] = p.answers;
  if (a.text === b.text && winner !== "tie") {
    showError("The two answers are identical: vote Tie.");
    return;
  }
  try {
    const res = await api("POST", "api/compare", { messages: p.prompt, a, b, winner });
    const kept = winner === "b" ? b : a;
    state.conv.messages.push({
      role: "assistant", content: kept.text, model: kept.model, sampling: kept.sampling,
      system: p.prompt[0].role === "system" ? p.prompt[0].content : "",
      dropped: p.dropped, context: p.context,
      ab: { a, b, winner, comparison_id: res.comparison_id },
      response_id: res.response_ids[winner === "b" ? "b" : "a"],   // thumbs on it rate that row
    });
    state.pending = null;
    renderMessages();
    await saveConversation();
  } catch (err) {
    showError(err);
  }
}

async function rate(i, value) {
  const m = state.conv.messages[i];
  if (!m || m.role !== "assistant" || state.busy) return;
  try {
    const res = await api("POST", "api/rate", {
      messages: promptMessages(i, m.system ?? systemText(), m.dropped || 0), response: m.content, value,
      model: m.model || "", sampling: m.sampling || {}, response_id: m.response_id ?? null,
    });
    m.response_id = res.response_id;
    m.rating = value;
    renderMessages();
    await saveConversation();
  } catch (err) {
    showError(err);
  }
}

// ------------------------------------------------------------------ startup

async function loadModels() {
  const { data } = await api("GET", "v1/models");
  state.models = data.map((m) => m.id);
  state.contexts = Object.fromEntries(data.map((m) => [m.id, m.context_length]));
  for (const sel of [$("#model"), $("#model-b")]) {
    sel.replaceChildren(...state.models.map((id) => new Option(id, id)));
  }
  const saved = store.getItem("gptlab.model");
  if (saved && state.models.includes(saved)) $("#model").value = saved;
  const two = state.models.length > 1;
  if (two) $("#model-b").value = state.models.find((id) => id !== $("#model").value);
  // "Two models" needs a second model being served.
  document.querySelector("input[name=ab-mode][value=models]").disabled = !two;
  $("#model-b").disabled = !two;
  $("#model-b").title = two ? "" : "the server runs only one model";
  showContext();
}

// The settings panel says how much the model can take: max tokens is held within it.
function showContext() {
  const ctx = state.contexts[$("#model").value];
  $("#context-note").textContent = ctx ? `(model context: ${ctx} tokens, prompt included)` : "";
}

// The Tools toggle is there only when the server's operator enabled tools (off by default).
async function loadTools() {
  const { tools } = await api("GET", "api/tools");
  state.tools = tools;
  $("#tools-label").hidden = !tools.length;
  $("#tools-names").textContent = tools.length ? "(" + tools.map((t) => t.function.name).join(", ") + ")" : "";
  if (!tools.length) $("#tools-toggle").checked = false;
}

async function loadSettings() {
  const s = await api("GET", "api/settings");
  state.customInstructions = s.custom_instructions;
  state.defaultSystem = s.system;
  $("#custom").value = s.custom_instructions;
  $("#who-name").textContent = s.user;
}

async function putSettings() {
  await api("PUT", "api/settings", { custom_instructions: state.customInstructions, system: state.defaultSystem });
  const note = $("#saved-note");
  note.hidden = false;
  setTimeout(() => { note.hidden = true; }, 1500);
}

function askForUser() {
  const dialog = $("#login");
  $("#user-name").value = state.user;
  $("#login-key").value = state.apiKey;
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", resolve, { once: true });
  });
}

async function start() {
  if (!state.user) await askForUser();
  try {
    await loadModels();
    await loadSettings();
    await loadTools();
    if (!state.conv) await reopenOrStart();
    else await refreshConversationList();
  } catch (err) {
    showError(err);
  }
  document.body.dataset.ready = "1";
}

// After a reload: the chat that was open, else a new one.
async function reopenOrStart() {
  const id = store.getItem("gptlab.open." + state.user);
  if (id) {
    try {
      await openConversation(id);
      return;
    } catch (_) { /* deleted meanwhile, or another key's: start afresh */ }
  }
  startNewChat();
}

function bindControls() {
  $("#composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("#input").value;
    if (!text.trim()) return;
    $("#input").value = "";
    autosize();
    send(text);
  });
  $("#input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("#composer").requestSubmit();
    }
  });
  $("#input").addEventListener("input", autosize);
  $("#stop").onclick = () => state.busy && state.busy.abort();
  // A/B pairs are answered without tools: the toggle says so by being greyed out.
  $("#ab-toggle").addEventListener("change", () => { $("#tools-toggle").disabled = $("#ab-toggle").checked; });
  $("#new-chat").onclick = startNewChat;
  $("#system").addEventListener("input", () => { state.conv.system = $("#system").value; });
  $("#save-system-default").onclick = () => { state.defaultSystem = $("#system").value; putSettings().catch(showError); };
  $("#save-custom").onclick = () => { state.customInstructions = $("#custom").value; putSettings().catch(showError); };
  $("#temperature").addEventListener("input", () => { $("#temperature-value").textContent = $("#temperature").value; });
  $("#model").addEventListener("change", () => { store.setItem("gptlab.model", $("#model").value); showContext(); });
  $("#api-key").value = state.apiKey;
  $("#api-key").addEventListener("change", () => {
    state.apiKey = $("#api-key").value.trim();
    store.setItem("gptlab.apiKey", state.apiKey);
    start();   // the models and settings the new key may see
  });
  $("#settings-close").onclick = () => $("#settings-toggle").click();
  $("#settings-toggle").onclick = () => {
    // Wide screens show the panel until closed; narrow ones hide it until opened.
    const narrow = window.matchMedia("(max-width: 900px)").matches;
    const shown = narrow ? document.body.classList.toggle("settings-open")
                         : !document.body.classList.toggle("settings-closed");
    $("#settings-toggle").setAttribute("aria-expanded", String(shown));
  };
  $("#change-user").onclick = async () => {
    await askForUser();
    state.conv = null;   // another user's history
    await start();
  };
  // Escape must not leave the page without a user name.
  $("#login").addEventListener("cancel", (e) => { if (!state.user) e.preventDefault(); });
  $("#login-form").addEventListener("submit", () => {
    state.user = $("#user-name").value.trim();
    state.apiKey = $("#login-key").value.trim();
    store.setItem("gptlab.user", state.user);
    store.setItem("gptlab.apiKey", state.apiKey);
    $("#api-key").value = state.apiKey;
  });
}

function autosize() {
  const el = $("#input");
  el.style.height = "auto";
  el.style.height = Math.min(el.scrollHeight, 240) + "px";
}

window.gptlab = { state, renderMarkdown, streamChat };
bindControls();
start();
