// The model-serve playground. It uses only the public HTTP API: GET models, GET models/{name}
// and POST predict?model=... with one multipart part named "file" per image. URLs are
// relative, so the page also works behind a proxy that mounts the server under a prefix.

const OVERLAY_ALPHA = 0.55;
// Class 0 is the background in the demo and in most segmentation datasets: left uncoloured so
// the image shows through. Beyond this list, colours come from golden-angle hues.
const PALETTE = [
  null, [230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [245, 130, 48],
  [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [0, 128, 128],
  [170, 110, 40], [128, 0, 0], [0, 0, 128], [128, 128, 0], [250, 190, 212],
];

const byId = (id) => document.getElementById(id);
const models = new Map(); // name -> the model's description from GET models/{name}

/** An HTTP error answer, its message taken from the contract's {"error": {code, message}}. */
class ApiError extends Error {
  constructor(status, statusText, body) {
    const detail = body && typeof body === "object" && body.error
      ? `${body.error.code}: ${body.error.message}`
      : String(body || statusText).slice(0, 300);
    super(`HTTP ${status}: ${detail}`);
  }
}

/** The parsed JSON answer; any non-2xx answer or network failure throws with a readable message. */
async function apiJson(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new Error(`the server did not answer (${error.message})`);
  }
  const text = await response.text();
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON (e.g. a proxy's HTML error page): shown as text
  }
  if (!response.ok) throw new ApiError(response.status, response.statusText, body);
  return body;
}

function showPageError(message) {
  const box = byId("page-error");
  box.textContent = message;
  box.hidden = !message;
}

function classColour(index) {
  if (index === 0) return null;
  if (index < PALETTE.length) return PALETTE[index];
  return hslToRgb((index * 137.508) % 360, 0.7, 0.5);
}

function hslToRgb(hue, saturation, lightness) {
  const chroma = (1 - Math.abs(2 * lightness - 1)) * saturation;
  const channel = (n) => {
    const k = (n + hue / 30) % 12;
    const value = lightness - chroma / 2 * Math.max(-1, Math.min(k - 3, 9 - k, 1));
    return Math.round(255 * value);
  };
  return [channel(0), channel(8), channel(4)];
}

async function loadModels() {
  const select = byId("model");
  try {
    const { models: listed } = await apiJson("models");
    if (listed.length === 0) throw new Error("the server has no models loaded");
    for (const model of listed) {
      models.set(model.name, model);
      select.append(new Option(`${model.name} (${model.task})`, model.name));
    }
    await selectModel(select.value);
  } catch (error) {
    showPageError(`Could not list the models: ${error.message}`);
  }
}

/** Refreshes the chosen model's description (version, labels) from GET models/{name}. */
async function selectModel(name) {
  const model = await apiJson(`models/${encodeURIComponent(name)}`);
  models.set(name, model);
  byId("top-k-field").hidden = !model.playground.top_k;  // the server's hints, never the task's name
  byId("model-info").textContent =
    `${model.name}: ${model.architecture} · version ${model.version ?? "loading"} · ${placement(model.devices)}`;
  showPageError("");
}

/** Where the replicas run: "on cpu", "2 replicas on cpu", "2 replicas on cuda:0, cuda:1". */
function placement(devices) {
  const counts = new Map();
  for (const device of devices) counts.set(device, (counts.get(device) ?? 0) + 1);
  const places = [...counts].map(([device, count]) =>
    counts.size > 1 && count > 1 ? `${device} (${count})` : device);
  const replicas = devices.length === 1 ? "" : `${devices.length} replicas `;
  return `${replicas}on ${places.join(", ")}`;
}

async function predictOne(file, model, topK) {
  const form = new FormData();
  form.append("file", file, file.name);
  const params = new URLSearchParams({ model: model.name });
  if (model.playground.top_k) params.set("top_k", String(topK));
  const started = performance.now();
  const answer = await apiJson(`predict?${params}`, { method: "POST", body: form });
  return { answer, elapsedMs: performance.now() - started };
}

function newCard(file) {
  const root = byId("result-template").content.firstElementChild.cloneNode(true);
  root.querySelector(".file-name").textContent = file.name;
  byId("results").prepend(root);
  return {
    root,
    meta: root.querySelector(".meta"),
    error: root.querySelector(".error"),
    body: root.querySelector(".body"),
  };
}

async function handleFile(file, model, topK) {
  const card = newCard(file);
  try {
    const { answer, elapsedMs } = await predictOne(file, model, topK);
    card.meta.textContent =
      `${answer.model} · version ${answer.version} · ${Math.round(elapsedMs)} ms`;
    const prediction = answer.predictions[0];
    if (model.playground.mask) {
      await renderSegmentation(card.body, file, prediction, model.labels);
    } else {
      renderClassification(card.body, file, prediction);
    }
    card.root.dataset.state = "done";
  } catch (error) {
    card.meta.textContent = `${model.name} · failed`;
    card.error.textContent = error.message;
    card.error.hidden = false;
    card.root.dataset.state = "error";
  }
}

async function handleFiles(files) {
  const model = models.get(byId("model").value);
  if (!model) {
    showPageError("Choose a model first.");
    return;
  }
  const topK = Number(byId("top-k").value) || 5;
  await Promise.all([...files].map((file) => handleFile(file, model, topK)));
}

function thumbnail(file) {
  const img = document.createElement("img");
  img.className = "picture";
  img.alt = file.name;
  img.src = URL.createObjectURL(file);
  img.addEventListener("error", () => {
    img.replaceWith(note("(this browser cannot show this image format)"));
  });
  return img;
}

function note(text) {
  const p = document.createElement("p");
  p.className = "muted";
  p.textContent = text;
  return p;
}

function renderClassification(container, file, prediction) {
  const list = document.createElement("ol");
  list.className = "bars";
  prediction.top_k.forEach((entry, rank) => {
    const item = document.createElement("li");
    item.className = "bar";
    item.dataset.rank = String(rank);
    item.dataset.classIndex = String(entry.class_index);
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = entry.label;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(entry.score * 100).toFixed(1)}%`;
    track.append(fill);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `${(entry.score * 100).toFixed(1)}%`;
    item.append(label, track, score);
    list.append(item);
  });
  container.append(thumbnail(file), list);
}

function base64Blob(text, type) {
  const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

/** Class index per pixel: the mask PNG's grey value, decoded without colour management. */
async function maskClasses(prediction) {
  const { width, height } = prediction;
  const bitmap = await createImageBitmap(base64Blob(prediction.mask_png_base64, "image/png"), {
    colorSpaceConversion: "none",
    premultiplyAlpha: "none",
  });
  const scratch = new OffscreenCanvas(width, height).getContext("2d", { willReadFrequently: true });
  scratch.drawImage(bitmap, 0, 0);
  const rgba = scratch.getImageData(0, 0, width, height).data;
  const classes = new Uint8Array(width * height);
  for (let i = 0; i < classes.length; i += 1) classes[i] = rgba[4 * i];
  return classes;
}

async function renderSegmentation(container, file, prediction, labels) {
  const { width, height } = prediction;
  const classes = await maskClasses(prediction);
  const canvas = document.createElement("canvas");
  canvas.className = "overlay";
  canvas.width = width;
  canvas.height = height;
  canvas.dataset.alpha = String(OVERLAY_ALPHA);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.fillStyle = "#808080"; // shown where the browser cannot decode the image (e.g. TIFF)
  context.fillRect(0, 0, width, height);
  let shown = true;
  try {
    context.drawImage(await createImageBitmap(file), 0, 0, width, height);
  } catch {
    shown = false;
  }
  const pixels = context.getImageData(0, 0, width, height);
  blendMask(pixels.data, classes);
  context.putImageData(pixels, 0, 0);
  container.append(canvas, legend(prediction.class_pixel_counts, labels, width * height));
  if (!shown) container.append(note("(this browser cannot show this image format: mask on grey)"));
}

function blendMask(rgba, classes) {
  for (let i = 0; i < classes.length; i += 1) {
    const colour = classColour(classes[i]);
    if (!colour) continue;
    for (let c = 0; c < 3; c += 1) {
      rgba[4 * i + c] = Math.round(rgba[4 * i + c] * (1 - OVERLAY_ALPHA) + colour[c] * OVERLAY_ALPHA);
    }
  }
}

function legend(counts, labels, total) {
  const table = document.createElement("table");
  table.className = "legend";
  table.createTHead().insertRow().append(...["", "class", "pixels"].map((text) => {
    const th = document.createElement("th");
    th.textContent = text;
    return th;
  }));
  const body = table.createTBody();
  for (const [key, count] of Object.entries(counts)) {
    const index = Number(key);
    const colour = classColour(index);
    const row = body.insertRow();
    row.dataset.classIndex = key;
    const swatch = row.insertCell().appendChild(document.createElement("span"));
    swatch.className = colour ? "swatch" : "swatch none";
    if (colour) {
      swatch.style.background = `rgb(${colour.join(",")})`;
      swatch.dataset.rgb = colour.join(",");
    }
    row.insertCell().textContent = labels?.[index] ?? `class ${index}`;
    row.insertCell().textContent = `${(100 * count / total).toFixed(1)}%`;
  }
  return table;
}

function wireInputs() {
  const zone = byId("drop-zone");
  const input = byId("files");
  input.addEventListener("change", () => {
    const files = [...input.files];
    input.value = ""; // choosing the same file again is a new change
    handleFiles(files);
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    handleFiles(event.dataTransfer.files);
  });
  byId("model").addEventListener("change", (event) => {
    selectModel(event.target.value).catch((error) => {
      showPageError(`Could not read model ${event.target.value}: ${error.message}`);
    });
  });
}

wireInputs();
loadModels();
