// The magvlt page: plain JS over the JSON API (/docs). Streams are server-sent events read from fetch().
"use strict";

const $ = (id) => document.getElementById(id);
const FRAME_MS = 110; // refinement frames are shown at least this long each
let lastGenerated = null; // Blob of the latest generated image, for "use generated image"

function settings() {
  return { seed: Number($("seed").value) || 0, steps: Number($("steps").value), candidates: Number($("candidates").value) };
}

function form(fields) {
  const data = new FormData();
  for (const [name, value] of Object.entries(fields)) data.append(name, value);
  return data;
}

async function errorText(response) {
  try {
    const { detail } = await response.json();
    return Array.isArray(detail) ? detail.map((d) => `${d.loc.at(-1)}: ${d.msg}`).join("; ") : String(detail);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function post(url, body) {
  const options = body instanceof FormData ? { method: "POST", body }
    : { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } };
  const response = await fetch(url, options);
  if (!response.ok) throw new Error(await errorText(response));
  return response;
}

// Calls onEvent(event, data) for each server-sent event of a POST.
async function stream(url, body, onEvent) {
  const reader = (await post(url, body)).body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const fields = Object.fromEntries(buffer.slice(0, end).split("\n").map((l) => [l.slice(0, l.indexOf(":")), l.slice(l.indexOf(":") + 2)]));
      buffer = buffer.slice(end + 2);
      onEvent(fields.event, JSON.parse(fields.data));
    }
  }
}

// Shows frames in order, each for at least FRAME_MS, whether they arrive live or all at once.
function player(show) {
  let chain = Promise.resolve();
  return {
    push: (frame) => { chain = chain.then(() => { show(frame); return new Promise((r) => setTimeout(r, FRAME_MS)); }); },
    done: () => chain,
  };
}

// Runs task() with the button disabled and its errors shown in the card.
async function busy(button, errorBox, task) {
  button.disabled = true;
  errorBox.textContent = "";
  try {
    await task();
  } catch (e) {
    errorBox.textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

const pngUrl = (b64) => `data:image/png;base64,${b64}`;

function remember(blob) {
  lastGenerated = blob;
  document.querySelectorAll(".use-generated").forEach((b) => { b.disabled = false; });
}

// A caption with masked tokens ("_") drawn as shimmering blocks.
function renderText(box, text) {
  box.replaceChildren(...text.split(" ").flatMap((word, i) => {
    const gap = i ? [" "] : [];
    if (word !== "_") return [...gap, word];
    const block = document.createElement("span");
    block.className = "tok-masked";
    return [...gap, block];
  }));
}

// ---------------------------------------------------------------- text -> image

async function textToImage() {
  const { seed, steps, candidates } = settings();
  const image = $("t2i-image");
  const show = player(({ step, steps: of, src }) => {
    image.src = src;
    $("t2i-progress").value = step / of;
    $("t2i-step").textContent = step === of ? `done in ${of} steps` : `step ${step} / ${of}`;
  });
  let final = null;
  await stream("/v1/t2i/stream", { prompt: $("t2i-prompt").value, seed, steps, candidates }, (event, data) => {
    if (event === "step") show.push({ step: data.step, steps: data.steps, src: pngUrl(data.image) });
    if (event === "done") final = data.image;
    if (event === "error") throw new Error(data.detail);
  });
  await show.done();
  if (final) {
    image.src = pngUrl(final);
    remember(await (await fetch(pngUrl(final))).blob());
  }
}

// ---------------------------------------------------------------- image pickers

const picked = {}; // picker name -> Blob

function setupPicker(picker, onPick) {
  const name = picker.dataset.name;
  const pick = (blob) => { picked[name] = blob; onPick(blob); };
  picker.querySelector("input[type=file]").addEventListener("change", (e) => e.target.files[0] && pick(e.target.files[0]));
  const use = picker.querySelector(".use-generated");
  use.disabled = true;
  use.addEventListener("click", () => lastGenerated && pick(lastGenerated));
}

function needImage(name) {
  if (!picked[name]) throw new Error("choose an image first (or generate one above)");
  return picked[name];
}

// ---------------------------------------------------------------- image -> text

async function imageToText() {
  const { seed, steps, candidates } = settings();
  const box = $("i2t-caption");
  const show = player(({ step, steps: of, text }) => {
    renderText(box, text);
    $("i2t-step").textContent = step === of ? `done in ${of} steps` : `step ${step} / ${of}`;
  });
  let final = null;
  await stream("/v1/i2t/stream", form({ image: needImage("i2t"), seed, steps, candidates }), (event, data) => {
    if (event === "step") show.push(data);
    if (event === "done") final = data.caption;
    if (event === "error") throw new Error(data.detail);
  });
  await show.done();
  if (final !== null) box.textContent = final;
}

// ---------------------------------------------------------------- inpainting

const paint = { image: null, mask: document.createElement("canvas"), drawing: false };

function loadPaintImage(blob) {
  const img = new Image();
  img.onload = () => {
    paint.image = img;
    for (const c of [$("inp-base"), $("inp-canvas"), paint.mask]) {
      c.width = img.naturalWidth;
      c.height = img.naturalHeight;
    }
    document.querySelector(".canvas-stack").style.setProperty("--aspect", `${img.naturalWidth} / ${img.naturalHeight}`);
    $("inp-result").style.setProperty("--aspect", `${img.naturalWidth} / ${img.naturalHeight}`);
    $("inp-base").getContext("2d").drawImage(img, 0, 0);
    clearMask();
  };
  img.src = URL.createObjectURL(blob);
}

function clearMask() {
  const m = paint.mask.getContext("2d");
  m.fillStyle = "#000";
  m.fillRect(0, 0, paint.mask.width, paint.mask.height);
  const o = $("inp-canvas");
  o.getContext("2d").clearRect(0, 0, o.width, o.height);
}

// Paints a disc at the pointer, white on the mask and tinted on the visible overlay.
function brush(event) {
  const overlay = $("inp-canvas");
  const rect = overlay.getBoundingClientRect();
  const x = (event.clientX - rect.left) * (overlay.width / rect.width);
  const y = (event.clientY - rect.top) * (overlay.height / rect.height);
  const radius = (Number($("inp-brush").value) / 200) * Math.max(overlay.width, overlay.height);
  for (const [canvas, color] of [[paint.mask, "#fff"], [overlay, "#ff4d8d"]]) {
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = color;
    ctx.beginPath();
    ctx.arc(x, y, radius, 0, 2 * Math.PI);
    ctx.fill();
  }
}

function setupBrush() {
  const overlay = $("inp-canvas");
  overlay.addEventListener("pointerdown", (e) => {
    if (!paint.image) return;
    paint.drawing = true;
    overlay.setPointerCapture(e.pointerId);
    brush(e);
  });
  overlay.addEventListener("pointermove", (e) => paint.drawing && brush(e));
  for (const end of ["pointerup", "pointercancel"]) overlay.addEventListener(end, () => { paint.drawing = false; });
  $("inp-clear").addEventListener("click", clearMask);
}

async function inpaint() {
  const { seed, steps, candidates } = settings();
  const image = needImage("inp");
  const mask = await new Promise((resolve) => paint.mask.toBlob(resolve, "image/png"));
  const response = await post("/v1/inpaint", form({ image, mask, prompt: $("inp-prompt").value, seed, steps, candidates }));
  const blob = await response.blob();
  $("inp-result").src = URL.createObjectURL(blob);
  remember(blob);
}

// ---------------------------------------------------------------- infilling and pairs

function insertMask() {
  const input = $("inf-text");
  const at = input.selectionStart ?? input.value.length;
  input.value = `${input.value.slice(0, at)}[MASK]${input.value.slice(input.selectionEnd ?? at)}`;
  input.focus();
}

async function infill() {
  const { seed, steps, candidates } = settings();
  const text = $("inf-text").value;
  const response = await post("/v1/infill", form({ image: needImage("inf"), text, seed, steps, candidates }));
  $("inf-result").textContent = (await response.json()).text;
}

async function pairs() {
  const { seed, steps } = settings();
  const response = await post("/v1/pairs", { n: Number($("pairs-n").value), seed, steps });
  $("pairs-list").replaceChildren(...(await response.json()).map(({ image, caption }) => {
    const item = document.createElement("li");
    const img = Object.assign(document.createElement("img"), { src: pngUrl(image), alt: caption, className: "pixels" });
    const text = Object.assign(document.createElement("span"), { textContent: caption || "(no caption)" });
    item.append(img, text);
    return item;
  }));
}

// ---------------------------------------------------------------- wiring

async function describeModel() {
  try {
    const health = await (await fetch("/health")).json();
    const [h, w] = health.image_size;
    $("model").textContent = `${health.model} · ${w}×${h} images · up to ${health.max_prompt_tokens} text tokens`;
    $("steps").max = Math.min(health.limits.max_steps, 32);
    $("candidates").max = health.limits.max_candidates;
    for (const task of ["inpaint", "infill", "pairs"]) $(task).hidden = !health.tasks.includes(task);
  } catch {
    $("model").textContent = "the server is not answering";
  }
}

function submit(formId, button, errorBox, task) {
  $(formId).addEventListener("submit", (e) => { e.preventDefault(); busy($(button), $(errorBox), task); });
}

function init() {
  for (const name of ["steps", "candidates"]) {
    $(name).addEventListener("input", () => { $(`${name}-value`).textContent = $(name).value; });
  }
  $("dice").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 2 ** 31); });
  setupPicker(document.querySelector('[data-name="i2t"]'), (blob) => { $("i2t-preview").src = URL.createObjectURL(blob); });
  setupPicker(document.querySelector('[data-name="inf"]'), (blob) => { $("inf-preview").src = URL.createObjectURL(blob); });
  setupPicker(document.querySelector('[data-name="inp"]'), loadPaintImage);
  setupBrush();
  submit("t2i-form", "t2i-go", "t2i-error", textToImage);
  $("i2t-go").addEventListener("click", () => busy($("i2t-go"), $("i2t-error"), imageToText));
  submit("inp-form", "inp-go", "inp-error", inpaint);
  $("inf-mask").addEventListener("click", insertMask);
  submit("inf-form", "inf-go", "inf-error", infill);
  submit("pairs-form", "pairs-go", "pairs-error", pairs);
  describeModel();
}

init();
