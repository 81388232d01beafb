// The demo page: draws or uploads digits and calls the public /v1 API (no framework, no CDN).
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
let apiKey = sessionStorage.getItem("mnist-api-key") || "";
let drawing = false;
let last = null;
let requestSeq = 0;

function resetCanvas() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#000";
  ctx.lineWidth = 18;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
}

function headers() {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { box.hidden = true; }, 8000);
}

async function predict(files) {
  const form = new FormData();
  for (const [blob, name] of files) form.append("files", blob, name);
  const response = await fetch("/v1/predict?top_k=3&return_image=true", {
    method: "POST", body: form, headers: headers(),
  });
  let body;
  try { body = await response.json(); } catch { body = { error: `HTTP ${response.status}` }; }
  if (response.status === 401) $("key-panel").hidden = false;
  if (!response.ok) {
    const error = new Error(body.error || `HTTP ${response.status}`);
    error.details = body.details || [];
    throw error;
  }
  return body;
}

function renderResult(target, name, p, source) {
  target.className = `result ${p.kind}`;
  target.replaceChildren();
  const title = document.createElement("h3");
  title.textContent = name;
  const head = document.createElement("div");
  const answer = document.createElement("span");
  answer.className = "digit";
  if (p.kind === "not_a_digit") {
    answer.textContent = "not a digit";
    const why = document.createElement("p");
    why.className = "reason muted";
    why.textContent = p.reason;
    head.append(answer);
    target.append(title, head, why);
    return;
  }
  if (p.kind === "number") {
    answer.textContent = p.number.replace(/\n/g, " / ");
    head.append(answer);
    target.append(title, head);
    if (source) target.append(drawBoxes(source, p.digits, name));
    return;
  }
  answer.textContent = String(p.digit);
  const seen = document.createElement("img");
  seen.className = "seen";
  seen.alt = `28×28 image the model saw for ${name}`;
  seen.src = `data:image/png;base64,${p.processed_image}`;
  head.append(answer, seen);
  const bars = document.createElement("div");
  bars.className = "bars";
  bars.setAttribute("role", "list");
  bars.setAttribute("aria-label", `probabilities for ${name}`);
  p.probabilities.slice(0, 10).forEach((prob, d) => {
    const label = document.createElement("span");
    label.textContent = String(d);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(prob * 100, 0.5)}%`;
    bar.title = `${d}: ${(prob * 100).toFixed(1)}%`;
    bar.setAttribute("role", "listitem");
    bar.setAttribute("aria-label", `${d}: ${(prob * 100).toFixed(1)} percent`);
    bars.append(label, bar);
  });
  target.append(title, head, bars);
}

// The uploaded image with a labelled box around each digit of a number.
function drawBoxes(source, digits, name) {
  const view = document.createElement("canvas");
  view.className = "boxes";
  view.setAttribute("role", "img");
  view.setAttribute("aria-label", `${name} with ${digits.length} digits boxed`);
  const img = new Image();
  img.onload = () => {
    const scale = Math.min(1, 240 / img.naturalWidth);
    view.width = Math.round(img.naturalWidth * scale);
    view.height = Math.round(img.naturalHeight * scale);
    const g = view.getContext("2d");
    g.drawImage(img, 0, 0, view.width, view.height);
    g.strokeStyle = "#d33";
    g.fillStyle = "#d33";
    g.lineWidth = 2;
    g.font = "bold 14px sans-serif";
    for (const d of digits) {
      const [x0, y0, x1, y1] = d.box.map((v) => v * scale);
      g.strokeRect(x0, y0, x1 - x0, y1 - y0);
      g.fillText(String(d.digit), x0 + 2, Math.max(12, y0 - 2));
    }
    URL.revokeObjectURL(img.src);
  };
  img.src = URL.createObjectURL(source);
  return view;
}

function setPrediction(p) {
  const text = p.kind === "not_a_digit" ? "not a digit"
    : p.kind === "number" ? p.number.replace(/\n/g, " / ")
    : String(p.digit);
  const sure = p.confidence == null ? "" : ` (${(p.confidence * 100).toFixed(1)}%)`;
  $("prediction").textContent = `${text}${sure}`;
}

async function predictCanvas() {
  const seq = ++requestSeq;
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  try {
    const body = await predict([[blob, "drawing.png"]]);
    if (seq !== requestSeq) return; // a newer stroke already asked again
    const p = body.predictions[0];
    setPrediction(p);
    const box = $("draw-result");
    box.hidden = false;
    renderResult(box, "your drawing", p, blob);
  } catch (error) {
    if (seq === requestSeq) showError(error.message);
  }
}

async function predictFiles(fileList) {
  const files = Array.from(fileList);
  if (!files.length) return;
  const grid = $("grid");
  grid.replaceChildren();
  const cells = files.map((file) => {
    const cell = document.createElement("div");
    cell.className = "result";
    cell.textContent = `${file.name}…`;
    grid.append(cell);
    return cell;
  });
  try {
    const body = await predict(files.map((f) => [f, f.name]));
    body.predictions.forEach((p, i) => {
      if (p.kind === "error") {
        // This file could not be read; the others were.
        cells[i].className = "result failed";
        cells[i].textContent = `${files[i].name}: ${p.error}`;
      } else {
        renderResult(cells[i], files[i].name, p, files[i]);
      }
    });
    const read = body.predictions.filter((p) => p.kind !== "error");
    if (read.length) setPrediction(read[read.length - 1]);
  } catch (error) {
    showError(error.message);
    const failed = new Map((error.details || []).map((d) => [d.index, d.error]));
    cells.forEach((cell, i) => {
      cell.className = "result failed";
      cell.textContent = `${files[i].name}: ${failed.get(i) || error.message}`;
    });
  }
}

function point(event) {
  const rect = canvas.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) / rect.width) * canvas.width,
    y: ((event.clientY - rect.top) / rect.height) * canvas.height,
  };
}

canvas.addEventListener("pointerdown", (event) => {
  drawing = true;
  last = point(event);
  canvas.setPointerCapture(event.pointerId);
  ctx.beginPath();
  ctx.arc(last.x, last.y, ctx.lineWidth / 2, 0, Math.PI * 2);
  ctx.fillStyle = "#000";
  ctx.fill();
});
canvas.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const p = point(event);
  ctx.beginPath();
  ctx.moveTo(last.x, last.y);
  ctx.lineTo(p.x, p.y);
  ctx.stroke();
  last = p;
});
function endStroke() {
  if (!drawing) return;
  drawing = false;
  predictCanvas();
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

$("clear").addEventListener("click", () => {
  requestSeq++;
  resetCanvas();
  $("prediction").textContent = "–";
  $("draw-result").hidden = true;
});

$("upload").addEventListener("change", (event) => predictFiles(event.target.files));
const drop = $("drop");
["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (event) => {
  event.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("over")));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  predictFiles(event.dataTransfer.files);
});

$("save-key").addEventListener("click", () => {
  apiKey = $("api-key").value.trim();
  sessionStorage.setItem("mnist-api-key", apiKey);
  loadModel();
});

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (response.status === 401) {
    $("key-panel").hidden = false;
    return;
  }
  if (!response.ok) return;
  const body = await response.json();
  $("key-panel").hidden = !apiKey;
  const s = body.served;
  const acc = s.accuracy ? `, ${(s.accuracy * 100).toFixed(2)}% on MNIST test` : "";
  $("model-line").textContent = `Model ${s.name} v${s.version} on ${s.device}${acc}. Draw a digit or upload images.`;
}

resetCanvas();
loadModel();
