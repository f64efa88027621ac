// The chat playground: streams /v1/chat/completions (SSE) with fetch and renders tokens as they come.
// Plain browser JavaScript, no build step and no third-party code; text is only ever set as textContent.
"use strict";

const STORE = "ragtime.playground";
const FIELDS = ["system", "temperature", "top_p", "max_tokens", "seed", "api_key"];

const $ = (id) => document.getElementById(id);

/** The conversation so far, as sent to the API (without the system prompt). */
const conversation = [];
/** The request in flight, if any. */
let controller = null;

function loadSettings() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(STORE) ?? "{}") ?? {};
  } catch {
    // a damaged entry is replaced on the next save
  }
  for (const f of FIELDS) if (typeof saved[f] === "string") $(f).value = saved[f];
}

function saveSettings() {
  const out = {};
  for (const f of FIELDS) out[f] = $(f).value;
  try {
    localStorage.setItem(STORE, JSON.stringify(out));
  } catch {
    // storage may be disabled; the fields still work for this page
  }
}

function headers() {
  const h = { "content-type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

function setStatus(s) {
  $("status").textContent = s;
  document.body.dataset.status = s;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

/** A clear sentence for a failed response; a 401 says where the key goes. */
async function describeFailure(res) {
  let message = "";
  try {
    message = (await res.json())?.error?.message ?? "";
  } catch {
    // not JSON: the status says enough
  }
  if (res.status === 401) {
    const key = $("api_key").value.trim();
    return (key ? "The API key was refused" : "This server needs an API key") +
      ": enter it in the API key field on the right (401" + (message ? `: ${message}` : "") + ").";
  }
  return `The server answered ${res.status}${message ? `: ${message}` : ""}.`;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("messages").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function numberField(id, parse) {
  const raw = $(id).value.trim();
  if (raw === "") return undefined;
  const v = parse(raw);
  return Number.isFinite(v) ? v : undefined;
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...conversation);
  return {
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: numberField("temperature", Number),
    top_p: numberField("top_p", Number),
    max_tokens: numberField("max_tokens", (s) => parseInt(s, 10)),
    seed: numberField("seed", (s) => parseInt(s, 10)),
  };
}

/** Yields the JSON of each `data:` event of an SSE body; ends at [DONE] or the end of the body. */
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).replace(/\r$/, "");
        buf = buf.slice(nl + 1);
        if (line === "") {
          // a blank line ends an event
          if (data.length === 0) continue;
          const payload = data.join("\n");
          data = [];
          if (payload === "[DONE]") return;
          yield JSON.parse(payload);
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        } // comments (": ping") and other fields are ignored
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function showStats(t0, tFirst, tLast, tokens) {
  $("ttft").textContent = tFirst === null ? "–" : `${Math.round(tFirst - t0)} ms`;
  $("tokens").textContent = String(tokens);
  // Decode speed: tokens after the first over the time since it came (TTFT is shown on its own).
  $("tps").textContent = tokens > 1 && tLast > tFirst
    ? ((tokens - 1) / ((tLast - tFirst) / 1000)).toFixed(1)
    : "–";
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("clear").disabled = busy;
}

async function send() {
  const text = $("input").value.trim();
  if (!text || controller) return;
  saveSettings();
  showError("");
  $("input").value = "";
  conversation.push({ role: "user", content: text });
  const userDiv = addMessage("user", text);
  const out = addMessage("assistant", "");
  const ctl = new AbortController();
  controller = ctl;
  setBusy(true);
  setStatus("waiting");
  const t0 = performance.now();
  let tFirst = null;
  let tLast = t0;
  let chunks = 0;
  let usageTokens = null;
  showStats(t0, null, t0, 0);
  let reply = "";
  let finish = null;
  /** Drops the failed turn, so a retry sends the same conversation. */
  const undo = () => {
    conversation.pop();
    userDiv.remove();
    out.remove();
    if (!$("input").value) $("input").value = text;
  };

  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(requestBody()),
      signal: ctl.signal,
    });
    if (!res.ok) {
      showError(await describeFailure(res));
      setStatus("error");
      undo();
      return;
    }
    for await (const ev of sseEvents(res.body)) {
      if (ev.error) throw new Error(ev.error.message ?? "the stream ended with an error");
      if (ev.usage) usageTokens = ev.usage.completion_tokens;
      const choice = ev.choices?.[0];
      if (!choice) continue;
      const piece = choice.delta?.content ?? "";
      if (piece) {
        const now = performance.now();
        if (tFirst === null) {
          tFirst = now;
          setStatus("streaming");
        }
        tLast = now;
        chunks++;
        reply += piece;
        out.textContent = reply;
        out.scrollIntoView({ block: "end" });
        showStats(t0, tFirst, tLast, chunks);
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    showStats(t0, tFirst, tLast, usageTokens ?? chunks);
    conversation.push({ role: "assistant", content: reply });
    if (finish) addNote(out, `finish: ${finish}`);
    setStatus("done");
  } catch (err) {
    showStats(t0, tFirst, tLast, chunks);
    if (ctl.signal.aborted) {
      // Keep what came: the conversation goes on from the partial reply.
      conversation.push({ role: "assistant", content: reply });
      addNote(out, "stopped");
      setStatus("stopped");
    } else {
      showError(`The request failed: ${err instanceof Error ? err.message : String(err)}`);
      setStatus("error");
      if (reply) conversation.push({ role: "assistant", content: reply });
      else undo();
    }
  } finally {
    controller = null;
    setBusy(false);
    $("input").focus();
  }
}

function addNote(div, text) {
  const note = document.createElement("span");
  note.className = "note";
  note.textContent = text;
  div.append(note);
}

async function loadModel() {
  try {
    const res = await fetch("/v1/models", { headers: headers() });
    if (!res.ok) {
      $("model").textContent = res.status === 401 ? "(API key needed)" : `(models: ${res.status})`;
      return;
    }
    const body = await res.json();
    $("model").textContent = body.data?.[0]?.id ?? "";
  } catch {
    $("model").textContent = "(server unreachable)";
  }
}

function init() {
  loadSettings();
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  $("stop").addEventListener("click", () => controller?.abort());
  $("clear").addEventListener("click", () => {
    conversation.length = 0;
    $("messages").replaceChildren();
    showError("");
    setStatus("idle");
  });
  for (const f of FIELDS) $(f).addEventListener("change", saveSettings);
  $("api_key").addEventListener("change", loadModel);
  setStatus("idle");
  loadModel();
}

init();
