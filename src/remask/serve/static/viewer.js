// remask denoising viewer: posts to this server's OpenAI routes with stream_steps and draws every
// denoising step on a grid of answer positions. Plain JavaScript, no library, nothing fetched
// from anywhere but this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  model: null, causal: false, pins: [], history: [],
  run: null,  // the current answer: {length, steps, pinned: Map(col -> text), frames: [step events]}
  abort: null,
};
window.remaskViewer = state;  // for the browser test and the curious

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function load() {
  try {
    const models = await (await fetch("/v1/models", { headers: headers() })).json();
    if (models.error) throw new Error(models.error.message);
    const card = models.data[0];
    state.model = card.id;
    state.causal = card.sampler === "ar";
    $("model").textContent = `${card.id} · ${state.causal ? "autoregressive" : "masked diffusion"} · context ${card.max_model_len}`;
  } catch (err) {
    $("model").textContent = "model unavailable";
    showError(String(err.message || err));
  }
  const schema = await (await fetch("/openapi.json")).json();
  const props = schema.paths["/v1/completions"].post.requestBody.content["application/json"].schema.properties;
  for (const name of ["max_tokens", "steps", "block_length", "temperature"]) {
    const d = props[name] && props[name].default;
    if (d !== undefined && d !== null) $(name).value = d;
  }
  for (const rule of (props.remasking && props.remasking.enum) || ["low_confidence"]) {
    const opt = new Option(rule, rule, false, rule === props.remasking.default);
    $("remasking").add(opt);
  }
  for (const el of document.querySelectorAll(".diffusion")) el.hidden = state.causal;
  if (state.causal) {
    $("pins-note").textContent = "Pinning words needs a masked diffusion checkpoint; this one writes left to right.";
    for (const el of $("pins-box").querySelectorAll("input, button")) el.disabled = true;
  }
  document.body.dataset.ready = "1";  // the settings hold the server's defaults: safe to edit them now
}

// ----------------------------------------------------------------------------- pins

function addPin() {
  const text = $("pin-text").value;
  const position = parseInt($("pin-pos").value, 10);
  if (!text || !(position >= 0)) return showError("a pin needs a word and a position >= 0");
  state.pins = state.pins.filter((p) => p.position !== position);
  state.pins.push({ position, text });
  state.pins.sort((a, b) => a.position - b.position);
  $("pin-text").value = "";
  drawPins();
}

function drawPins() {
  const list = $("pin-list");
  list.replaceChildren();
  state.pins.forEach((pin, k) => {
    const li = document.createElement("li");
    li.textContent = `${JSON.stringify(pin.text)} @ ${pin.position}`;
    const x = document.createElement("button");
    x.type = "button";
    x.textContent = "×";
    x.title = "remove";
    x.onclick = () => { state.pins.splice(k, 1); drawPins(); };
    li.append(x);
    list.append(li);
  });
}

// ----------------------------------------------------------------------------- requests

function mode() { return document.querySelector("input[name=mode]:checked").value; }

function requestBody() {
  const num = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  const body = { model: state.model, max_tokens: num("max_tokens"), temperature: num("temperature"),
                 seed: num("seed"), stream: true, stream_steps: true };
  if (!state.causal) {
    Object.assign(body, { steps: num("steps"), block_length: num("block_length"), remasking: $("remasking").value });
    if (state.pins.length) body.pins = state.pins;
  }
  const text = $("prompt").value;
  if (mode() === "chat") body.messages = [...state.history, { role: "user", content: text }];
  else body.prompt = text;
  return body;
}

async function generate(event) {
  event.preventDefault();
  hideError();
  const body = requestBody();
  if (!body.prompt && !(body.messages && body.messages.at(-1).content)) return showError("write a prompt first");
  const route = mode() === "chat" ? "/v1/chat/completions" : "/v1/completions";
  state.run = { length: body.max_tokens, steps: body.steps || body.max_tokens, pinned: new Map(), frames: [],
                text: "" };
  $("answer").textContent = "";
  Object.assign($("replay"), { disabled: true, max: 0, value: 0 });
  showFrame(0);
  setBusy(true, "generating…");
  state.abort = new AbortController();
  try {
    const response = await fetch(route, { method: "POST", headers: headers(), body: JSON.stringify(body),
                                          signal: state.abort.signal });
    if (!response.ok) {
      const err = await response.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || `HTTP ${response.status}`);
    }
    await readEvents(response.body.getReader(), onEvent);
    if (mode() === "chat") {
      state.history.push(body.messages.at(-1), { role: "assistant", content: state.run.text });
      drawChat();
      $("prompt").value = "";
    }
    setBusy(false, `done: ${state.run.frames.length} steps`);
  } catch (err) {
    setBusy(false, err.name === "AbortError" ? "stopped" : "failed");
    if (err.name !== "AbortError") showError(String(err.message || err));
  }
}

// Server-sent events from a fetch body: blocks separated by a blank line, "event:" and "data:" lines.
async function readEvents(reader, handle) {
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data === "[DONE]") return;
      if (data) handle(name, JSON.parse(data));
    }
  }
}

function onEvent(name, data) {
  const run = state.run;
  if (data.error) throw new Error(data.error.message);
  if (name === "pins") {
    for (const [col, , text] of data.pinned) run.pinned.set(col, text);
    run.length = data.length;
    showFrame(0);
  } else if (name === "step") {
    if (data.index !== 0) return;
    run.length = data.length;
    run.frames.push(data);
    const slider = $("replay");
    const following = slider.disabled || Number(slider.value) === Number(slider.max);
    slider.disabled = false;
    slider.max = run.frames.length;
    if (following) { slider.value = run.frames.length; showFrame(run.frames.length); }
  } else if (data.choices && data.choices.length) {
    const c = data.choices[0];
    const piece = c.text !== undefined ? c.text : (c.delta && c.delta.content) || "";
    run.text += piece;
    $("answer").textContent = run.text;
  }
}

// ----------------------------------------------------------------------------- the canvas

// The answer after the first k steps: per column its token text, step and confidence (null: masked).
function frame(k) {
  const run = state.run;
  const cells = Array.from({ length: run.length }, () => null);
  for (const [col, text] of run.pinned) cells[col] = { text, pinned: true };
  for (const ev of run.frames.slice(0, k)) {
    for (const col of ev.remasked) cells[col] = null;
    for (const [col, , text, conf] of ev.commits) cells[col] = { text, step: ev.step, conf, fresh: ev === run.frames[k - 1] };
  }
  return cells;
}

function colour(cell) {
  const run = state.run;
  if (document.querySelector("input[name=colour]:checked").value === "confidence") {
    if (cell.conf === null || cell.conf === undefined) return "hsl(220, 10%, 88%)";
    const c = Math.max(0, Math.min(1, cell.conf));
    return `hsl(${Math.round(120 * c)}, 70%, 78%)`;  // red (doubtful) to green (sure)
  }
  const last = Math.max(1, run.steps - 1, ...run.frames.map((f) => f.step));
  return `hsl(${Math.round(230 - 200 * (cell.step / last))}, 70%, 80%)`;  // blue (early) to orange (late)
}

function visible(text) {
  return text.replace(/ /g, "·").replace(/\n/g, "↵").replace(/\t/g, "→") || "∅";
}

function showFrame(k) {
  const run = state.run;
  const grid = $("canvas");
  const cells = frame(k);
  while (grid.children.length > cells.length) grid.lastChild.remove();
  while (grid.children.length < cells.length) {
    const div = document.createElement("div");
    const col = grid.children.length;
    div.onclick = () => { $("pin-pos").value = col; $("pin-text").focus(); };
    grid.append(div);
  }
  cells.forEach((cell, col) => {
    const div = grid.children[col];
    const kind = cell === null ? "masked" : cell.pinned ? "pinned" : "committed";
    div.className = `cell ${kind}${cell && cell.fresh ? " fresh" : ""}`;
    div.textContent = cell === null ? "" : visible(cell.text);
    div.style.background = kind === "committed" ? colour(cell) : "";
    div.title = cell === null ? `position ${col}: masked` : cell.pinned ? `position ${col}: pinned`
      : `position ${col}: step ${cell.step}` + (cell.conf !== null ? `, confidence ${cell.conf.toFixed(3)}` : "");
  });
  $("frame").textContent = `step ${k} / ${run.frames.length}`;
}

function drawRamp() {
  const byConf = document.querySelector("input[name=colour]:checked").value === "confidence";
  $("ramp").style.background = byConf ? "linear-gradient(90deg, hsl(0,70%,78%), hsl(120,70%,78%))"
    : "linear-gradient(90deg, hsl(230,70%,80%), hsl(30,70%,80%))";
  $("ramp-label").textContent = byConf ? "low → high confidence" : "early → late step";
}

// ----------------------------------------------------------------------------- the rest of the page

function drawChat() {
  const log = $("chat-log");
  log.replaceChildren(...state.history.map((m) => {
    const div = document.createElement("div");
    div.className = `msg ${m.role}`;
    div.textContent = m.content;
    return div;
  }));
  log.scrollTop = log.scrollHeight;
}

function setBusy(busy, status) {
  $("generate").disabled = busy;
  $("stop").disabled = !busy;
  $("status").textContent = status;
}

function showError(message) { $("error").textContent = message; $("error").hidden = false; }
function hideError() { $("error").hidden = true; }

function setMode() {
  const chat = mode() === "chat";
  $("chat-log").hidden = !chat;
  $("prompt-label").textContent = chat ? "Message" : "Prompt";
  if (!chat) { state.history = []; drawChat(); }
}

$("form").addEventListener("submit", generate);
$("stop").addEventListener("click", () => state.abort && state.abort.abort());
$("pin-add").addEventListener("click", addPin);
$("replay").addEventListener("input", (e) => state.run && showFrame(Number(e.target.value)));
for (const r of document.querySelectorAll("input[name=mode]")) r.addEventListener("change", setMode);
for (const r of document.querySelectorAll("input[name=colour]")) {
  r.addEventListener("change", () => { drawRamp(); if (state.run) showFrame(Number($("replay").value)); });
}
drawRamp();
load();
