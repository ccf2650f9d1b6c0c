// The studio page: the generation form, the frames streaming in as the hierarchy fills, and the attention inspector.
// Plain JavaScript and canvas, served by the studio itself; nothing loads from the internet. The server checks every
// field: the page sends what the user typed and shows the server's message when it refuses.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null,        // GET /api/info
  video: null,       // the finished video's summary
  images: {},        // video frame index -> decoded <img>
  frame: null,       // the inspected frame
  row: 0, col: 0,    // the inspected code
  maps: null,        // POST /api/attention's answer
  steps: 0,          // generation steps of the running job
  controller: null,  // aborts the running generation's stream
  asked: 0,          // the latest inspection asked for (older answers are dropped)
};
const KNOB_LABELS = {
  temperature: "temperature", top_k: "top-k", interp_top_k: "top-k of rounds", top_p: "top-p",
  cfg: "guidance (cfg)", expert_weight: "expert weight", interp_expert_weight: "expert weight of rounds",
};
const KNOB_PLACEHOLDERS = { top_k: "all codes", interp_top_k: "as top-k", interp_expert_weight: "as expert weight" };

// ---------------------------------------------------------------------------------------------------- colours
// Matplotlib's "inferno", sampled at 8 stops: dark for little attention, bright for much; readable in grey too.
const INFERNO = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                 [250, 193, 39], [252, 255, 164]];
const clamp = (value) => Math.min(1, Math.max(0, value));
function colour(t) {
  const x = clamp(t) * (INFERNO.length - 1);
  const i = Math.min(Math.floor(x), INFERNO.length - 2);
  return INFERNO[i].map((c, k) => Math.round(c + (x - i) * (INFERNO[i + 1][k] - c)));
}
const rgba = (c, alpha = 1) => `rgba(${c[0]}, ${c[1]}, ${c[2]}, ${alpha})`;
const percent = (value) => `${(100 * value).toFixed(value < 0.1 ? 1 : 0)}%`;

// ---------------------------------------------------------------------------------------------------- start
async function start() {
  const info = await (await fetch("/api/info")).json();
  state.info = info;
  $("bundle-info").textContent = `${info.bundle} · ${info.frame_size}×${info.frame_size} frames as ` +
    `${info.grid[0]}×${info.grid[1]} codes · ${info.layers} layers × ${info.heads} heads · text of ` +
    `${info.text_length} tokens`;
  // Which stage draws frame 0 depends on the bundle: a key-frame model trained with learn_first_frame draws it too.
  $("first-frame-by").textContent = info.first_frame_by === "image"
    ? "Frame 0 comes from the image model, the other key frames from the key-frame model"
    : "All key frames, frame 0 included, come from the key-frame model (trained to draw frame 0 too)";
  const defaults = info.defaults;
  $("prompt").value = defaults.prompt;
  $("seed").value = defaults.seed;
  for (const rate of info.rates) $("fps").add(new Option(`${rate} fps`, rate, false, rate === defaults.fps));
  $("fps").addEventListener("change", () => fillRounds(info.max_rounds[$("fps").value]));
  fillRounds(defaults.rounds);
  for (const name of info.knobs) {
    if (!info.has_expert && name.includes("expert")) continue;  // the bundle has no image expert to weigh
    const label = document.createElement("label");
    label.textContent = KNOB_LABELS[name] || name;
    const input = document.createElement("input");
    Object.assign(input, { id: `knob-${name}`, type: "text", inputMode: "decimal", autocomplete: "off",
                           value: defaults[name] === null ? "" : defaults[name],
                           placeholder: KNOB_PLACEHOLDERS[name] || "" });
    label.append(input);
    $("knobs").append(label);
  }
  $("generate-form").addEventListener("submit", generate);
  $("query-canvas").addEventListener("click", pickCode);
  $("frame").addEventListener("change", () => selectFrame(Number($("frame").value)));
  for (const id of ["layer", "head"]) $(id).addEventListener("change", render);
  fillChoices($("layer"), info.layers, "layer");
  fillChoices($("head"), info.heads, "head");
}

function fillRounds(selected) {
  const allowed = state.info.max_rounds[$("fps").value];
  const frames = (rounds) => (state.info.key_frames - 1) * 2 ** rounds + 1;
  $("rounds").replaceChildren(...Array.from({ length: allowed + 1 }, (_, rounds) =>
    new Option(`${rounds} → ${frames(rounds)}`, rounds, false, rounds === Math.min(selected, allowed))));
}

function fillChoices(select, count, noun) {
  select.replaceChildren(new Option(`mean of ${count} ${noun}s`, "mean"),
    ...Array.from({ length: count }, (_, i) => new Option(`${noun} ${i + 1}`, i)));
}

// ---------------------------------------------------------------------------------------------------- generate
function typed(text) {
  // A number where the text is one, else the text itself: the server says what is wrong with it.
  const number = Number(text);
  return text !== "" && Number.isFinite(number) ? number : text;
}

function requestBody() {
  const body = { prompt: $("prompt").value, fps: Number($("fps").value), rounds: Number($("rounds").value),
                 seed: typed($("seed").value.trim()) };
  for (const name of state.info.knobs) {
    const input = $(`knob-${name}`);
    if (!input) continue;
    const text = input.value.trim();
    if (text !== "") body[name] = typed(text);
    else if (state.info.nullable_knobs.includes(name)) body[name] = null;
  }
  return body;
}

async function generate(event) {
  event.preventDefault();
  if (state.controller) { state.controller.abort(); return; }  // the button reads "Stop" while generating
  showMessage(null);
  const body = requestBody();
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  try {
    const response = await fetch("/api/generate/stream", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      signal: controller.signal });
    if (!response.ok) {
      const answer = await response.json().catch(() => ({}));
      showMessage(answer.error || `the studio answered ${response.status} ${response.statusText}`);
      setStatus("Refused.");
      return;
    }
    startVideo(body.fps, body.rounds);
    await readEvents(response, handleEvent);
  } catch (error) {
    if (error.name === "AbortError") setStatus("Stopped.");
    else { showMessage(`the studio did not answer (${error.message})`); setStatus("Failed."); }
  } finally {
    state.controller = null;
    setBusy(false);
  }
}

async function readEvents(response, handle) {
  // Server-Sent Events over a POST: blocks separated by a blank line, each with an "event:" and a "data:" line.
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((line) => line.startsWith("data: ")).map((line) => line.slice(6));
      if (data.length) await handle(JSON.parse(data.join("\n")));
    }
  }
}

async function handleEvent(event) {
  if (event.event === "queued") {
    setStatus(event.ahead ? `Waiting: ${event.ahead} generation(s) ahead of this one…` : "Starting…");
  } else if (event.event === "started") {
    state.steps = event.steps;
    setStatus(state.info.first_frame_by === "image" ? "Generating frame 0…" : "Generating the key frames…");
  } else if (event.event === "step") {
    for (const frame of event.frames) await addFrame(frame.index, frame.png);
    $("bar").style.width = percent(event.done / (state.steps + 1));
    setStatus(`${event.name} done (${event.done} of ${state.steps} steps); ` +
              (event.done < state.steps ? "next: " + nextStep(event) + "…" : "writing the mp4 and gif…"));
  } else if (event.event === "done") {
    $("bar").style.width = "100%";
    finishVideo(event.video);
  } else if (event.event === "failed") {
    showMessage(event.error);
    setStatus("Failed.");
  } else if (event.event === "cancelled") {
    setStatus("Cancelled.");
  }
}

function nextStep(event) {
  return event.name === "frame 0" ? "key frames" : `interpolation round ${event.round + 1}`;
}

function setBusy(busy) {
  $("generate").textContent = busy ? "Stop" : "Generate";
  $("generate").classList.toggle("stop", busy);
}

function setStatus(text) { $("status").textContent = text; }

function showMessage(text) {
  $("message").hidden = !text;
  $("message").textContent = text || "";
}

// ---------------------------------------------------------------------------------------------------- the video
function madeIn(index, rounds) {
  // 0 for frame 0 and the key frames, k for a frame of interpolation round k (as the server's frame_origin).
  if (index % 2 ** rounds === 0) return 0;
  return rounds - Math.log2(index & -index);
}

function startVideo(keyRate, rounds) {
  const frames = (state.info.key_frames - 1) * 2 ** rounds + 1;
  state.video = null;
  state.images = {};
  $("bar").style.width = "0";
  $("player").removeAttribute("src");
  for (const id of ["mp4-link", "gif-link"]) $(id).setAttribute("aria-disabled", "true");
  $("video-facts").textContent = "Generating…";
  const grid = $("hierarchy");
  grid.style.gridTemplateColumns = `auto repeat(${frames}, minmax(0, 1fr))`;
  const rows = [];
  for (let round = 0; round <= rounds; round++) {
    const label = document.createElement("div");
    label.className = "label";
    const rate = keyRate * 2 ** round;
    label.textContent = round === 0 ? `key frames · ${rate} fps` : `round ${round} → ${rate} fps`;
    rows.push(label);
    for (let index = 0; index < frames; index++) {
      const cell = document.createElement("div");
      if (madeIn(index, rounds) === round) {
        cell.className = "cell pending" + (round === 0 ? " key" : "");
        cell.id = `cell-${index}`;
        cell.title = `frame ${index}`;
        cell.addEventListener("click", () => state.video && selectFrame(index));
      } else cell.className = "cell empty";
      rows.push(cell);
    }
  }
  grid.replaceChildren(...rows);
  $("inspector").hidden = true;
  $("inspector-empty").hidden = false;
}

async function addFrame(index, url) {
  const image = new Image();
  image.src = url;
  image.alt = `frame ${index}`;
  await image.decode();
  state.images[index] = image;
  const cell = $(`cell-${index}`);
  if (cell) { cell.classList.remove("pending"); cell.replaceChildren(image.cloneNode()); }
}

function finishVideo(video) {
  state.video = video;
  $("player").src = video.mp4;
  $("mp4-link").href = video.mp4;
  $("gif-link").href = video.gif;
  for (const id of ["mp4-link", "gif-link"]) $(id).setAttribute("aria-disabled", "false");
  $("video-facts").innerHTML = "";
  const prompt = document.createElement("b");
  prompt.textContent = `“${video.prompt}”`;
  $("video-facts").append(prompt, document.createElement("br"),
    `${video.num_frames} frames at ${video.fps} fps`, document.createElement("br"),
    `key frames at ${video.key_rate} fps, ${video.rounds} round(s)`, document.createElement("br"),
    `seed ${video.seed} · ${video.seconds.generating.toFixed(1)} s`);
  setStatus(`Done: ${video.num_frames} frames in ${video.seconds.generating.toFixed(1)} s.`);
  $("frame").max = video.num_frames - 1;
  state.row = Math.floor(state.info.grid[0] / 2);
  state.col = Math.floor(state.info.grid[1] / 2);
  $("inspector").hidden = false;
  $("inspector-empty").hidden = true;
  selectFrame(video.num_frames > 1 ? 1 : 0);
}

// ---------------------------------------------------------------------------------------------------- inspector
function selectFrame(index) {
  if (!state.video || !(index >= 0 && index < state.video.num_frames)) return;
  state.frame = index;
  $("frame").value = index;
  document.querySelectorAll("#hierarchy .selected").forEach((cell) => cell.classList.remove("selected"));
  $(`cell-${index}`)?.classList.add("selected");
  inspect();
}

function pickCode(event) {
  const canvas = $("query-canvas");
  const box = canvas.getBoundingClientRect();
  const [rows, cols] = state.info.grid;
  state.row = Math.min(rows - 1, Math.floor((event.clientY - box.top) / box.height * rows));
  state.col = Math.min(cols - 1, Math.floor((event.clientX - box.left) / box.width * cols));
  inspect();
}

async function inspect() {
  const asked = ++state.asked;
  drawQuery();
  let response, answer;
  try {
    response = await fetch("/api/attention", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ video: state.video.id, frame: state.frame, position: [state.row, state.col] }) });
    answer = await response.json();
  } catch (error) {
    showMessage(`the studio did not answer (${error.message})`);
    return;
  }
  if (asked !== state.asked) return;  // a later pick is on its way
  if (!response.ok) { showMessage(answer.error); return; }
  state.maps = answer;
  render();
}

function drawQuery() {
  const canvas = $("query-canvas");
  drawFrame(canvas, state.frame, null, null, 0);
  outlineCell(canvas, state.row, state.col);
  $("query-info").textContent = `frame ${state.frame} · code (row ${state.row}, col ${state.col}); ` +
    "click another code";
}

function describeOrigin(maps) {
  const given = maps.slots.filter((slot) => slot.role === "given").map((slot) => slot.frame);
  const order = maps.slots.map((slot) => slot.frame).join(", ");
  const query = `The query is the position that predicts code (${maps.row}, ${maps.col}): the code before it in ` +
    "raster order (the frame's BOI for the first code), which sees neither that code nor the ones after it.";
  if (maps.stage === "image") {
    return `Frame ${maps.frame} was drawn by the <b>image model</b> (text → image, fps token of ${maps.rate} fps): ` +
      `the spatial channel alone; there is no temporal channel and no gate. ${query}`;
  }
  if (maps.stage === "keyframe") {
    const slot = maps.slots.findIndex((s) => s.role === "this frame");
    return `Frame ${maps.frame} is key frame ${slot + 1} of ${maps.slots.length}, drawn by the <b>key-frame ` +
      `model</b> at ${maps.rate} fps over frames ${order}; its temporal channel sees ` +
      (slot ? "the key frames before it" : "no frame before it (this bundle's key-frame model draws frame 0)") +
      `. ${query}`;
  }
  return `Frame ${maps.frame} was drawn in <b>interpolation round ${maps.round}</b> (to ${maps.rate} fps). The ` +
    `interpolation model's sequence held frames ${order}: frames ${given.join(", ")} given, then the new ones ` +
    `drawn in that order. ${query}`;
}

function pick(values) {
  // values[layer][head] is a number or an array: the selected one, or the mean over "mean" choices.
  const choose = (value, count) => (value === "mean" ? [...Array(count).keys()] : [Number(value)]);
  const layers = choose($("layer").value, state.maps.layers);
  const heads = choose($("head").value, state.maps.heads);
  let sum = null;
  for (const layer of layers) {
    for (const head of heads) {
      const value = values[layer][head];
      sum = sum === null ? (Array.isArray(value) ? value.slice() : value)
        : Array.isArray(value) ? sum.map((s, i) => s + value[i]) : sum + value;
    }
  }
  const count = layers.length * heads.length;
  return Array.isArray(sum) ? sum.map((s) => s / count) : sum / count;
}

function render() {
  const maps = state.maps;
  if (!maps) return;
  $("origin").innerHTML = describeOrigin(maps);
  let largest = 0;
  const channels = {};
  for (const name of ["spatial", "temporal"]) {
    if (!maps[name]) continue;
    const channel = maps[name];
    const picked = { text: pick(channel.text), fps: pick(channel.fps),
                     frames: channel.frames.map((frame) => ({ ...frame, boi: pick(frame.boi),
                                                                codes: pick(frame.codes) })) };
    picked.max = Math.max(...picked.text, picked.fps,
                          ...picked.frames.flatMap((frame) => [frame.boi, ...frame.codes]));
    largest = Math.max(largest, picked.max);
    channels[name] = picked;
  }
  drawScale(largest);
  renderChannel($("spatial"), channels.spatial);
  renderChannel($("temporal"), channels.temporal);
  renderGates(maps.gate);
}

function drawScale(largest) {
  const canvas = $("scale");
  const context = canvas.getContext("2d");
  for (let x = 0; x < canvas.width; x++) {
    context.fillStyle = rgba(colour(x / (canvas.width - 1)));
    context.fillRect(x, 0, 1, canvas.height);
  }
  $("scale-max").textContent = "max";
  $("scale-max").title = `largest weight shown: ${largest.toFixed(4)}`;
}

const MAP_SIZE = 176;  // pixels of a heat map canvas; the page shrinks them to keep one channel's maps on one row

function renderChannel(element, channel) {
  const tokens = element.querySelector(".tokens");
  const maps = element.querySelector(".maps");
  if (!channel) {
    tokens.replaceChildren();
    const none = document.createElement("p");
    none.className = "none";
    none.textContent = "The image model that drew this frame has no temporal channel.";
    maps.replaceChildren(none);
    return;
  }
  const chips = state.maps.text.map((word, i) => chip(word, channel.text[i], channel.max));
  chips.push(chip(`fps ${state.maps.rate}`, channel.fps, channel.max, true));
  tokens.replaceChildren(...chips);
  maps.style.gridTemplateColumns = `repeat(${channel.frames.length}, minmax(0, ${MAP_SIZE}px))`;
  maps.replaceChildren(...channel.frames.map((frame) => {
    const figure = document.createElement("div");
    figure.className = "map" + (frame.role === "this frame" ? " self" : "");
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = MAP_SIZE;
    const query = frame.role === "this frame" ? [state.row, state.col] : null;
    drawFrame(canvas, frame.frame, frame.codes, frame.visible, channel.max);
    if (query) outlineCell(canvas, ...query);
    const share = frame.boi + frame.codes.reduce((a, b) => a + b, 0);
    const caption = document.createElement("div");
    caption.className = "caption";
    caption.innerHTML = `<b>frame ${frame.frame}</b> · ${frame.role}<br>weight ${percent(share)} · ` +
      `BOI ${percent(frame.boi)}`;
    figure.append(canvas, caption);
    return figure;
  }));
}

function chip(text, weight, largest, special = false) {
  const element = document.createElement("span");
  element.className = "token" + (special ? " special" : "");
  const c = colour(weight / largest);
  element.style.background = rgba(c);
  element.style.color = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] > 140 ? "#111827" : "#f9fafb";
  const weightText = document.createElement("small");
  weightText.textContent = percent(weight);
  element.append(text, weightText);
  element.title = `${text}: ${weight.toFixed(4)}`;
  return element;
}

function drawFrame(canvas, index, codes, visible, largest) {
  // The frame, dimmed where a heat map lies over it; per code a colour for its weight, hatched where masked.
  const context = canvas.getContext("2d");
  const [rows, cols] = state.info.grid;
  const size = canvas.width;
  context.imageSmoothingEnabled = false;
  context.fillStyle = "#111827";
  context.fillRect(0, 0, size, size);
  const image = state.images[index];
  if (image) context.drawImage(image, 0, 0, size, size);
  if (!codes) return;
  context.fillStyle = "rgba(0, 0, 0, 0.35)";
  context.fillRect(0, 0, size, size);
  const cell = size / cols;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      const x = c * cell, y = r * (size / rows);
      if (!visible[i]) {  // masked: this query cannot see that code
        context.fillStyle = maskedPattern(context);
        context.fillRect(x, y, cell, size / rows);
        continue;
      }
      const t = largest > 0 ? codes[i] / largest : 0;
      context.fillStyle = rgba(colour(t), 0.3 + 0.65 * t);
      context.fillRect(x, y, cell, size / rows);
    }
  }
  context.strokeStyle = "rgba(255, 255, 255, 0.12)";
  context.lineWidth = 1;
  for (let k = 1; k < cols; k++) line(context, k * cell, 0, k * cell, size);
  for (let k = 1; k < rows; k++) line(context, 0, k * size / rows, size, k * size / rows);
}

function maskedPattern(context) {
  // Dark grey with faint diagonal stripes: tells "masked" apart from "visible, little weight" (near black).
  const tile = document.createElement("canvas");
  tile.width = tile.height = 6;
  const t = tile.getContext("2d");
  t.fillStyle = "#1f2937";
  t.fillRect(0, 0, 6, 6);
  t.strokeStyle = "rgba(255, 255, 255, 0.16)";
  t.beginPath();
  t.moveTo(0, 6);
  t.lineTo(6, 0);
  t.stroke();
  return context.createPattern(tile, "repeat");
}

function line(context, x0, y0, x1, y1) {
  context.beginPath();
  context.moveTo(x0 + 0.5, y0 + 0.5);
  context.lineTo(x1 + 0.5, y1 + 0.5);
  context.stroke();
}

function outlineCell(canvas, row, col) {
  const context = canvas.getContext("2d");
  const [rows, cols] = state.info.grid;
  const width = canvas.width / cols, height = canvas.height / rows;
  context.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue("--query").trim();
  context.lineWidth = 2;
  context.strokeRect(col * width + 1, row * height + 1, width - 2, height - 2);
}

function renderGates(gates) {
  const plots = $("gate-plots");
  if (!gates) {
    $("gate-note").textContent = "";
    const none = document.createElement("p");
    none.className = "none";
    none.textContent = "The image model has no gate: its output is the spatial channel's.";
    plots.replaceChildren(none);
    return;
  }
  const stage = state.maps.stage === "keyframe" ? "key-frame" : "interpolation";
  $("gate-note").textContent = `the ${stage} model's gates, ${gates[0].length} dimensions per layer`;
  const current = $("layer").value;
  plots.replaceChildren(...gates.map((values, layer) => {
    const figure = document.createElement("div");
    figure.className = "gate" + (current === String(layer) ? " current" : "");
    const canvas = document.createElement("canvas");
    canvas.width = 240;
    canvas.height = 64;
    drawHistogram(canvas, values);
    const mean = values.reduce((a, b) => a + b, 0) / values.length;
    const caption = document.createElement("div");
    caption.textContent = `layer ${layer + 1} · σ(a) from ${Math.min(...values).toFixed(2)} to ` +
      `${Math.max(...values).toFixed(2)}, mean ${mean.toFixed(2)}`;
    figure.append(canvas, caption);
    return figure;
  }));
}

function drawHistogram(canvas, values) {
  // 50 bins of σ(a) over [0, 1]: left is the temporal channel's side, right the spatial channel's.
  const bins = new Array(50).fill(0);
  for (const value of values) bins[Math.min(bins.length - 1, Math.floor(value * bins.length))]++;
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  const top = Math.max(...bins);
  const barWidth = width / bins.length;
  context.clearRect(0, 0, width, height);
  context.fillStyle = "#e4e7ec";
  context.fillRect(width / 2, 0, 1, height);
  bins.forEach((count, i) => {
    const barHeight = count ? Math.max(2, (height - 12) * count / top) : 0;
    context.fillStyle = "#4f46e5";
    context.fillRect(i * barWidth + 1, height - 10 - barHeight, barWidth - 2, barHeight);
  });
  context.fillStyle = "#667085";
  context.font = "9px system-ui, sans-serif";
  context.fillText("0 temporal", 2, height - 1);
  context.textAlign = "center";
  context.fillText("0.5", width / 2, height - 1);
  context.textAlign = "right";
  context.fillText("spatial 1", width - 2, height - 1);
}

start();
