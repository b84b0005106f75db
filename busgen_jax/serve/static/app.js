// The busgen serve page: draws the box, sends the request, follows the job. The server
// validates every field; the page shows its message rather than checking twice.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("box-canvas");
const ctx = canvas.getContext("2d");
const coordInputs = ["x1", "y1", "x2", "y2"].map($);
const POLL_MS = 250;
let box = null;
let drag = null;
let jobId = null;
let preview = null;  // the last generated image, under the box: where the lesion landed

function showMessage(text, isError) {
  $("message").textContent = text;
  $("message").className = isError ? "message error" : "message";
}

function drawCanvas() {
  const w = canvas.width, h = canvas.height;
  ctx.fillStyle = "#11151c";
  ctx.fillRect(0, 0, w, h);
  if (preview) {
    ctx.imageSmoothingEnabled = false;
    ctx.globalAlpha = 0.55;
    ctx.drawImage(preview, 0, 0, w, h);
    ctx.globalAlpha = 1;
  }
  ctx.strokeStyle = "#2a3140";
  ctx.lineWidth = 1;
  for (let k = 1; k < 10; k++) {
    ctx.beginPath(); ctx.moveTo(k * w / 10, 0); ctx.lineTo(k * w / 10, h); ctx.stroke();
    ctx.beginPath(); ctx.moveTo(0, k * h / 10); ctx.lineTo(w, k * h / 10); ctx.stroke();
  }
  if (box) {
    const [x1, y1, x2, y2] = box;
    ctx.fillStyle = "rgba(255, 196, 0, 0.18)";
    ctx.fillRect(x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h);
    ctx.strokeStyle = "#ffc400";
    ctx.lineWidth = 2;
    ctx.strokeRect(x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h);
  }
}

function setBox(value) {
  box = value;
  coordInputs.forEach((input, k) => { input.value = box ? box[k].toFixed(3) : ""; });
  drawCanvas();
}

function boxFromInputs() {
  const texts = coordInputs.map((input) => input.value.trim());
  if (texts.every((t) => t === "")) return null;
  // Empty or non-numeric fields go to the server as null, which names the problem.
  return texts.map((t) => (t === "" || !Number.isFinite(Number(t)) ? null : Number(t)));
}

function canvasPoint(event) {
  const rect = canvas.getBoundingClientRect();
  const clamp = (v) => Math.min(1, Math.max(0, v));
  return [clamp((event.clientX - rect.left) / rect.width),
          clamp((event.clientY - rect.top) / rect.height)];
}

canvas.addEventListener("pointerdown", (event) => {
  canvas.setPointerCapture(event.pointerId);
  drag = canvasPoint(event);
});
canvas.addEventListener("pointermove", (event) => {
  if (!drag) return;
  const [x, y] = canvasPoint(event);
  setBox([Math.min(drag[0], x), Math.min(drag[1], y), Math.max(drag[0], x), Math.max(drag[1], y)]);
});
canvas.addEventListener("pointerup", () => {
  drag = null;
  // A click without a drag would be an empty box: keep none.
  if (box && (box[2] - box[0] < 0.01 || box[3] - box[1] < 0.01)) setBox(null);
});
coordInputs.forEach((input) => input.addEventListener("input", () => {
  const value = boxFromInputs();
  box = value && value.every((v) => v !== null) ? value : null;
  drawCanvas();
}));

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function fillSelect(select, names, chosen) {
  select.replaceChildren(...names.map((name) => new Option(name, name, false, name === chosen)));
}

async function loadInfo() {
  const info = await api("/api/info");
  fillSelect($("class"), info.classes, info.defaults.class);
  fillSelect($("device"), info.devices, info.defaults.device);
  fillSelect($("sampler"), info.samplers, info.defaults.sampler);
  $("steps").value = info.defaults.steps;
  $("steps").min = 1; $("steps").max = info.limits.max_steps;
  $("guidance").value = info.defaults.guidance;
  $("guidance").min = 0; $("guidance").max = info.limits.max_guidance;
  $("seed").value = info.defaults.seed;
  $("num-images").value = info.defaults.num_images;
  $("num-images").max = info.limits.max_images;
  $("generator-name").textContent = `Generator: ${info.generator}` +
    (info.adapter ? `, adapter: ${info.adapter}` : "");
  $("status-text").textContent = info.ready ? "Ready." : "Ready (the first image compiles the sampler).";
}

function numberField(id) {
  const text = $(id).value.trim();
  return text === "" || !Number.isFinite(Number(text)) ? text || null : Number(text);
}

function request() {
  return {
    class: $("class").value, device: $("device").value, box: boxFromInputs(),
    sampler: $("sampler").value, steps: numberField("steps"), guidance: numberField("guidance"),
    seed: numberField("seed"), num_images: numberField("num-images"),
  };
}

function outlined(img, result) {
  const copy = document.createElement("canvas");
  copy.width = copy.height = 192;
  copy.className = "outlined";
  const c = copy.getContext("2d");
  c.imageSmoothingEnabled = false;
  c.drawImage(img, 0, 0, 192, 192);
  if (result.box) {
    const [x1, y1, x2, y2] = result.box;
    c.strokeStyle = "#ffc400";
    c.lineWidth = 2;
    c.strokeRect(x1 * 192, y1 * 192, (x2 - x1) * 192, (y2 - y1) * 192);
  }
  return copy;
}

function link(href, text, filename) {
  const a = document.createElement("a");
  a.href = href; a.textContent = text; a.download = filename;
  return a;
}

function addResult(result, seed) {
  const figure = document.createElement("figure");
  figure.dataset.index = result.index;
  const pair = document.createElement("div");
  pair.className = "pair";
  const img = new Image();
  img.className = "sample";
  img.alt = `synthetic image ${result.index}`;
  img.addEventListener("load", () => {
    pair.append(outlined(img, result));
    if (result.index === 0) { preview = img; drawCanvas(); }
  }, {once: true});
  img.src = result.png;
  pair.append(img);
  const caption = document.createElement("figcaption");
  caption.append(`seed ${seed} · #${result.index}`,
    link(result.png, "Download", `${result.filename}.png`),
    link(result.json, "Provenance", `${result.filename}.json`));
  figure.append(pair, caption);
  $("grid").append(figure);
}

function showStatus(status) {
  const percent = Math.round(100 * status.progress);
  const text = {
    queued: `Queued: position ${status.position}`,
    running: `Generating image ${status.images + 1} of ${status.num_images}… ${percent}%`,
    done: `Done: ${status.images} image${status.images === 1 ? "" : "s"}.`,
    cancelled: `Cancelled after ${status.images} image${status.images === 1 ? "" : "s"}.`,
    failed: status.error,
  }[status.state];
  $("status-text").textContent = text;
  $("progress").value = status.progress;
  $("cancel").disabled = !["queued", "running"].includes(status.state);
  const active = ["queued", "running"].includes(status.state);
  $("generate").disabled = active;
  if (status.state === "failed") showMessage(status.error, true);
}

async function follow(id, seed) {
  let shown = 0;
  while (id === jobId) {
    const status = await api(`/api/jobs/${id}`);
    status.results.slice(shown).forEach((result) => addResult(result, seed));
    shown = status.results.length;
    showStatus(status);
    if (!["queued", "running"].includes(status.state)) return;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

$("generate").addEventListener("click", async () => {
  showMessage("", false);
  try {
    const body = request();
    const status = await api("/api/generate", body);
    jobId = status.id;
    $("grid").replaceChildren();
    showStatus(status);
    await follow(status.id, body.seed);
  } catch (error) {
    showMessage(error.message, true);
    $("generate").disabled = false;
  }
});

$("cancel").addEventListener("click", async () => {
  if (jobId) {
    try { showStatus(await api(`/api/jobs/${jobId}/cancel`, {})); }
    catch (error) { showMessage(error.message, true); }
  }
});

$("random-box").addEventListener("click", async () => {
  showMessage("", false);
  try {
    const seed = Math.floor(Math.random() * 2 ** 31);
    const {box: drawn} = await api("/api/box", {class: $("class").value, seed: seed});
    setBox(drawn);
    if (!drawn) showMessage(`'${$("class").value}' images have no lesion box.`, false);
  } catch (error) {
    showMessage(error.message, true);
  }
});
$("clear-box").addEventListener("click", () => setBox(null));
$("new-seed").addEventListener("click", () => {
  $("seed").value = Math.floor(Math.random() * 2 ** 31);
});

drawCanvas();
loadInfo().catch((error) => showMessage(`Cannot load the generator's settings: ${error.message}`, true));
