// pulse-sr web app: plain JavaScript, no build step, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = ["#2f5fd0", "#d0452f", "#1d7a3a", "#a0520a", "#7b3fb5", "#0a8a8a", "#b5377b", "#555"];
const state = { config: null, generators: [], input: null, face: null, job: null, source: null,
                curve: [], total: 0, result: null, chosen: 0 };

function showError(text) {
  const box = $("error");
  box.textContent = text || "";
  box.hidden = !text;
  if (text) box.scrollIntoView({ block: "nearest" });
}

async function api(url, options) {
  let resp;
  try {
    resp = await fetch(url, options);
  } catch (e) {
    throw new Error("cannot reach the pulse-sr server (is it still running?)");
  }
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) throw new Error((body && body.error) || `request failed (${resp.status})`);
  return body;
}

function fmt(x) {
  return x === null || x === undefined ? "–" : Number(x).toExponential(2);
}

// -- set-up ------------------------------------------------------------------------------
async function init() {
  try {
    const [config, gens, examples] = await Promise.all([
      api("/api/config"), api("/api/generators"), api("/api/examples")]);
    state.config = config;
    state.generators = gens;
    $("n").max = config.max_candidates; $("n").value = config.defaults.n;
    $("steps").max = config.max_steps; $("steps").value = config.defaults.steps;
    $("eps").value = config.defaults.eps; $("seed").value = config.defaults.seed;
    $("upload-help").textContent += ` At most ${config.max_upload_mb} MB.`;
    const sel = $("generator");
    for (const g of gens) {
      const opt = document.createElement("option");
      opt.value = g.name;
      opt.textContent = g.available ? `${g.name} (${g.resolution}×${g.resolution})` : `${g.name} (not available)`;
      opt.disabled = !g.available;
      if (g.default) opt.selected = true;
      sel.appendChild(opt);
    }
    sel.addEventListener("change", onGeneratorChange);
    onGeneratorChange();
    for (const ex of examples) {
      const b = document.createElement("button");
      b.type = "button"; b.title = ex.name; b.dataset.example = ex.name;
      b.innerHTML = `<img alt="example ${ex.name}" src="${ex.image}">`;
      b.addEventListener("click", () => useExample(ex.name, b));
      $("examples").appendChild(b);
    }
  } catch (e) {
    showError(e.message);
  }
}

function currentGenerator() {
  return state.generators.find((g) => g.name === $("generator").value);
}

// the size nearest to `side` in log scale, ties to the larger (as pulse_sr.io.images.nearest_size)
function nearestSize(side, sizes) {
  let best = sizes[0];
  for (const s of sizes) {
    const r = Math.max(s, side) / Math.min(s, side), rb = Math.max(best, side) / Math.min(best, side);
    if (r < rb || (r === rb && s > best)) best = s;
  }
  return best;
}

function onGeneratorChange() {
  const g = currentGenerator();
  if (!g) return;
  $("generator-help").textContent = `${g.description}.`;
  const note = $("card-note");
  note.textContent = g.card_text + " ";
  if (g.model_card) {
    const a = document.createElement("a");
    a.href = g.model_card; a.target = "_blank"; a.rel = "noopener"; a.id = "card-link";
    a.textContent = "Model card";
    note.appendChild(a);
  }
  const size = $("size");
  size.innerHTML = "";
  for (const s of g.input_sizes) {
    const opt = document.createElement("option");
    opt.value = s; opt.textContent = `${s}×${s}`;
    if (s === nearestSize(16, g.input_sizes)) opt.selected = true;
    size.appendChild(opt);
  }
  describeInput();
}

// -- input -------------------------------------------------------------------------------
function setupDrop() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) uploadFile(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", () => { if ($("file").files.length) uploadFile($("file").files[0]); });
}

async function uploadFile(file) {
  showError("");
  const limit = state.config ? state.config.max_upload_mb * 1024 * 1024 : Infinity;
  if (file.size > limit) {
    showError(`${file.name} is larger than this server's limit of ${state.config.max_upload_mb} MB.`);
    return;
  }
  markExample(null);
  $("input-text").textContent = `uploading ${file.name} …`;
  $("input-info").hidden = false;
  try {
    const rec = await api("/api/inputs", { method: "POST", body: file,
      headers: { "Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(file.name) } });
    setInput(rec);
  } catch (e) {
    setInput(null);
    showError(`${file.name}: ${e.message}`);
  }
}

function markExample(button) {
  document.querySelectorAll(".examples button").forEach((b) => b.classList.toggle("chosen", b === button));
}

async function useExample(name, button) {
  showError("");
  markExample(button);
  try {
    setInput(await api(`/api/examples/${encodeURIComponent(name)}`, { method: "POST",
      headers: { "Content-Type": "application/json" } }));
  } catch (e) {
    setInput(null);
    showError(e.message);
  }
}

function setInput(rec) {
  state.input = rec;
  state.face = null;
  $("faces").innerHTML = "";
  // a new input starts unticked: nothing carried over from the previous one
  $("center_crop").checked = false; $("resize").checked = false; $("force").checked = false;
  $("input-info").hidden = !rec;
  if (!rec) { $("start").disabled = true; return; }
  const img = $("input-preview");
  img.src = rec.preview;
  img.classList.toggle("pixel", rec.kind === "small");
  rec.faces.forEach((f) => {
    const b = document.createElement("button");
    b.type = "button"; b.title = `face ${f.index}`; b.dataset.face = f.index;
    b.innerHTML = `<img alt="detected face ${f.index}" src="${f.image}"><span class="gain"></span>`;
    b.addEventListener("click", () => chooseFace(f.index, b));
    $("faces").appendChild(b);
  });
  markFaces();
  // the first face with something to gain (else the first one)
  const first = rec.faces.find((f) => faceGain(f).decision !== "skip") || rec.faces[0];
  if (first) chooseFace(first.index, $("faces").querySelector(`button[data-face="${first.index}"]`));
  describeInput();
  $("start").disabled = false;
}

// the io/face_gain verdict of a face for the chosen generator: restore, warn or skip
function faceGain(f) {
  const g = currentGenerator();
  return (g && f.gain && f.gain[g.name]) || { decision: "restore", reason: "" };
}

function markFaces() {
  const rec = state.input;
  if (!rec) return;
  for (const f of rec.faces) {
    const b = $("faces").querySelector(`button[data-face="${f.index}"]`);
    if (!b) continue;
    const gain = faceGain(f);
    const tag = b.querySelector(".gain");
    tag.className = `gain ${gain.decision}`;
    tag.textContent = gain.decision === "skip" ? `skipped: ${Math.round(gain.size)} px`
      : gain.decision === "warn" ? `${Math.round(gain.size)} px: no gain` : "";
    tag.hidden = !tag.textContent;
    b.classList.toggle("skipped", gain.decision === "skip");
    b.title = gain.reason || `face ${f.index}`;
  }
}

function chooseFace(index, button) {
  state.face = index;
  document.querySelectorAll(".faces button").forEach((b) => b.classList.toggle("chosen", b === button));
  describeInput();
}

function describeInput() {
  const rec = state.input;
  const g = currentGenerator();
  $("size-field").hidden = !(rec && state.face !== null);
  $("fit-field").hidden = !!(rec && state.face !== null);
  if (!rec || !g) return;
  const msg = $("input-message");
  markFaces();
  let text = `${rec.name}: ${rec.width}×${rec.height} pixels`;
  let warn = rec.message || "";
  const face = state.face !== null ? rec.faces.find((f) => f.index === state.face) : null;
  const gain = face ? faceGain(face) : null;
  $("force-label").hidden = !(gain && gain.decision === "skip");
  if (rec.kind === "photo" && !rec.faces.length && rec.align_available) {
    const ticked = $("center_crop").checked && $("resize").checked;
    warn = ticked ? "No face found in this photo: “centre-crop” and “resize” are ticked, so the whole image is squashed into one tiny input."
      : "No face found in this photo. To use the whole image anyway, tick “centre-crop” and “resize”, or upload a small face crop.";
  }
  if (rec.kind === "small") {
    const square = rec.width === rec.height;
    const fits = square && g.input_sizes.includes(rec.width);
    if (fits) text += ` — ready for ${g.name} (${g.resolution}×${g.resolution} faces).`;
    else if (!square) warn = `Not square: tick “centre-crop” to use the central ${Math.min(rec.width, rec.height)}×${Math.min(rec.width, rec.height)} pixels.`;
    else warn = `${g.name} takes ${g.input_sizes.join(", ")} pixel squares: tick “resize” to resize to the nearest.`;
  } else if (state.face !== null) {
    text += ` — a photo; face ${state.face} selected.`;
    if (gain.decision === "skip") {
      warn = $("force").checked ? `Skipped by default: ${gain.reason}. “Restore anyway” is ticked.`
        : `Skipped: ${gain.reason}. Tick “restore anyway” to restore it all the same.`;
    } else if (gain.decision === "warn") {
      warn = `Warning: ${gain.reason}.`;
    }
  } else {
    text += " — a photo.";
  }
  $("input-text").textContent = text;
  msg.textContent = warn;
  msg.hidden = !warn;
}

// -- search ------------------------------------------------------------------------------
async function start(e) {
  e.preventDefault();
  showError("");
  if (!state.input) { showError("Choose an image or an example first."); return; }
  const body = {
    input_id: state.input.input_id, generator: $("generator").value,
    n: parseInt($("n").value, 10), steps: parseInt($("steps").value, 10),
    eps: parseFloat($("eps").value), seed: parseInt($("seed").value, 10),
    center_crop: $("center_crop").checked, resize: $("resize").checked,
  };
  if (state.face !== null) {
    body.face = state.face; body.size = parseInt($("size").value, 10); body.force = $("force").checked;
  }
  for (const k of ["n", "steps", "eps", "seed"]) {
    if (Number.isNaN(body[k])) { showError(`${k}: enter a number`); return; }
  }
  $("start").disabled = true;
  try {
    const job = await api("/api/jobs", { method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json" } });
    state.eps = body.eps;
    watch(job.job_id, body.n, body.steps);
  } catch (err) {
    showError(err.message);
    $("start").disabled = false;
  }
}

function watch(jobId, n, steps) {
  if (state.source) state.source.close();
  state.job = jobId; state.curve = []; state.total = steps; state.result = null;
  $("results-section").hidden = true;
  $("live-section").hidden = false;
  $("cancel").disabled = false;
  $("cancel").hidden = false;
  $("progress").value = 0; $("progress").max = steps;
  const faces = $("live-faces");
  faces.innerHTML = "";
  for (let k = 0; k < n; k++) {
    faces.insertAdjacentHTML("beforeend",
      `<figure><div class="placeholder" id="live-box-${k}">waiting</div><figcaption style="color:${COLORS[k % COLORS.length]}">candidate ${k} <span id="live-l2-${k}"></span></figcaption></figure>`);
  }
  drawCurve();
  const es = new EventSource(`/api/jobs/${jobId}/events`);
  state.source = es;
  es.addEventListener("update", (ev) => onUpdate(JSON.parse(ev.data)));
  es.addEventListener("end", () => { es.close(); finish(jobId); });
  es.onerror = () => { if (es.readyState === EventSource.CLOSED) finish(jobId); };
  $("live-section").scrollIntoView({ behavior: "smooth", block: "start" });
}

function onUpdate(s) {
  if (s.job_id !== state.job) return;
  for (const point of s.curve || []) state.curve.push(point);
  if (s.previews) {
    s.previews.forEach((url, k) => {
      let img = $(`live-${k}`);
      const box = $(`live-box-${k}`);
      if (!img && box) {  // the first picture replaces the placeholder: no <img> without a src
        img = document.createElement("img");
        img.id = `live-${k}`; img.alt = `candidate ${k} now`; img.src = url;
        box.replaceWith(img);
      } else if (img) img.src = url;
    });
  }
  (s.l2 || []).forEach((v, k) => {
    const el = $(`live-l2-${k}`);
    if (el) el.textContent = (s.converged[k] ? "✓ " : "") + "L2 " + fmt(s.best_l2[k]);
  });
  $("progress").value = s.step;
  let text;
  if (s.state === "queued") text = `waiting in the queue: position ${s.position}`;
  else if (s.state === "running" && s.step === 0) text = "loading the generator …";
  if (s.state === "queued" || (s.state === "running" && s.step === 0)) {
    document.querySelectorAll(".live-faces .placeholder").forEach((p) => {
      p.textContent = s.state === "queued" ? "queued" : "loading"; });
  }
  else if (s.state === "running") text = `step ${s.step} of ${s.total_steps} — ${s.converged.filter(Boolean).length}/${s.converged.length} within eps`;
  else text = s.state;
  $("status-text").textContent = text;
  drawCurve();
}

function drawCurve() {
  const canvas = $("curve");
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 48, R = 10, T = 10, B = 26;
  ctx.clearRect(0, 0, W, H);
  const eps = state.eps || parseFloat($("eps").value) || 2e-3;
  let lo = Math.log10(eps) - 0.5, hi = lo + 1;
  for (const [, l2s] of state.curve) for (const v of l2s) if (v > 0) {
    lo = Math.min(lo, Math.log10(v)); hi = Math.max(hi, Math.log10(v));
  }
  lo = Math.floor(lo); hi = Math.ceil(hi);
  const x = (step) => L + (W - L - R) * (step / Math.max(1, state.total));
  const y = (v) => T + (H - T - B) * (1 - (Math.log10(v) - lo) / Math.max(1e-9, hi - lo));
  ctx.strokeStyle = "#ccc"; ctx.fillStyle = "#666"; ctx.font = "11px system-ui, sans-serif"; ctx.lineWidth = 1;
  const every = Math.ceil((hi - lo) / 6);
  for (let p = lo; p <= hi; p++) {
    if ((p - lo) % every) continue;
    ctx.beginPath(); ctx.moveTo(L, y(10 ** p)); ctx.lineTo(W - R, y(10 ** p)); ctx.stroke();
    ctx.fillText(`1e${p}`, 4, y(10 ** p) + 4);
  }
  ctx.textAlign = "center";
  ctx.fillText("0", L, H - 8);
  ctx.fillText("step", (L + W - R) / 2, H - 8);
  ctx.textAlign = "right";
  ctx.fillText(String(state.total), W - R, H - 8);
  ctx.textAlign = "left";
  ctx.setLineDash([5, 4]); ctx.strokeStyle = "#333";
  ctx.beginPath(); ctx.moveTo(L, y(eps)); ctx.lineTo(W - R, y(eps)); ctx.stroke();
  ctx.setLineDash([]); ctx.lineWidth = 2;
  const n = state.curve.length ? state.curve[0][1].length : 0;
  for (let k = 0; k < n; k++) {
    ctx.strokeStyle = COLORS[k % COLORS.length];
    ctx.beginPath();
    let open = false;
    for (const [step, l2s] of state.curve) {
      const v = l2s[k];
      if (!(v > 0)) { open = false; continue; }
      if (open) ctx.lineTo(x(step), y(v)); else { ctx.moveTo(x(step), y(v)); open = true; }
    }
    ctx.stroke();
  }
}

async function cancelJob() {
  if (!state.job) return;
  $("cancel").disabled = true;
  try {
    await api(`/api/jobs/${state.job}/cancel`, { method: "POST",
      headers: { "Content-Type": "application/json" } });
    $("status-text").textContent = "cancelling …";
  } catch (e) {
    showError(e.message);
  }
}

async function finish(jobId) {
  if (jobId !== state.job || state.result) return;
  $("cancel").disabled = true;
  $("cancel").hidden = true;
  $("start").disabled = false;
  let s;
  try { s = await api(`/api/jobs/${jobId}`); } catch (e) { showError(e.message); return; }
  $("progress").value = s.step;
  if (s.state === "done") {
    $("status-text").textContent = `done in ${s.seconds.toFixed(1)} s`;
    showResults(jobId, s.result, s);
  } else if (s.state === "cancelled") {
    $("status-text").textContent = `cancelled at step ${s.step} of ${s.total_steps}`;
    if (s.result) showResults(jobId, s.result, s);
  } else if (s.state === "failed") {
    $("status-text").textContent = "failed";
    showError(`The search failed: ${s.error}`);
  }
}

// -- results -----------------------------------------------------------------------------
function fileUrl(jobId, name) { return `/api/jobs/${jobId}/files/${encodeURIComponent(name)}`; }

function showResults(jobId, r, s) {
  state.result = r;
  const box = $("candidates");
  box.innerHTML = "";
  const conv = r.candidates.filter((c) => c.converged).length;
  $("results-summary").textContent = (r.cancelled
    ? `Cancelled: the ${r.candidates.length} face(s) already within eps = ${s.params.eps} are kept; the others were stopped. `
    : `${conv} of ${r.candidates.length} faces downscale to your input within eps = ${s.params.eps}. `) +
    (r.warning ? `Warning: ${r.warning}. ` : "") +
    "Each card shows the face, your input and the face's own downscale: they should look the same." +
    (r.detected ? ` Detected: ${r.detected}.` : "");
  for (const c of r.candidates) {
    const card = document.createElement("div");
    card.className = "card"; card.dataset.index = c.index;
    card.innerHTML = `
      <img class="hr" alt="candidate ${c.index}" src="${fileUrl(jobId, c.hr)}">
      <div class="pair">
        <figure><img alt="your input" src="${fileUrl(jobId, r.target || r.input)}"><figcaption>your input${r.target && r.target !== r.input ? " (as matched)" : ""}</figcaption></figure>
        <figure><img alt="downscale of candidate ${c.index}" src="${fileUrl(jobId, c.lr)}"><figcaption>its downscale</figcaption></figure>
      </div>
      <p>candidate ${c.index} · seed ${c.seed}</p>
      <p>L2 ${fmt(c.final_l2)} <span class="badge ${c.converged ? "ok" : "no"}">${c.converged ? "within eps" : "not within eps"}</span>${c.cancelled ? ' <span class="badge cancelled">cancelled</span>' : ""}</p>
      <p>${c.left_range ? `left the generator's range (extended search, radius ${(100 * c.radius_used).toFixed(1)}% of the activation)` : "the generator's own face"}</p>
      <p><a href="${fileUrl(jobId, c.hr)}" download="${c.hr}">download</a>${c.restored ? ` · <a href="${fileUrl(jobId, c.restored)}" download="${c.restored}">photo</a>` : ""}</p>`;
    card.addEventListener("click", () => chooseCandidate(jobId, c.index));
    box.appendChild(card);
  }
  $("spread").src = fileUrl(jobId, r.spread);
  $("spread-max").textContent = r.candidates.length > 1 ? `${r.spread_max.toFixed(3)} (brightest)` : "one candidate: nothing to compare";
  $("zip").href = r.zip;
  $("zip").setAttribute("download", `pulse-sr-${jobId.slice(0, 8)}.zip`);
  $("compare-block").hidden = !r.photo;
  if (r.photo) $("before").src = fileUrl(jobId, r.photo);
  chooseCandidate(jobId, r.best_index ?? r.candidates[0].index);
  updateSlider();
  $("results-section").hidden = false;
  $("results-section").scrollIntoView({ behavior: "smooth", block: "start" });
}

function chooseCandidate(jobId, k) {
  state.chosen = k;
  document.querySelectorAll(".card").forEach((c) => c.classList.toggle("chosen", Number(c.dataset.index) === k));
  const r = state.result;
  if (r && r.photo) {
    const c = r.candidates.find((x) => x.index === k);
    if (c && c.restored) $("after").src = fileUrl(jobId, c.restored);
    $("compare-k").textContent = String(k);
  }
}

// Before/after: "after" is clipped to the right of the divider. Zoomed, the inner box is scaled
// about the face centre and the slider spans what is visible.
function updateSlider() {
  const r = state.result;
  const box = r && r.face_box;
  const zoom = !!(box && $("zoom").checked);
  const s = zoom ? Math.min(4, Math.max(1, 0.45 / Math.max(box[2] - box[0], box[3] - box[1]))) : 1;
  // visible part [a, a + 1/s] x [b, b + 1/s] of the photo: centred on the face, inside the photo
  const clamp = (x) => Math.min(1 - 1 / s, Math.max(0, x));
  const a = zoom ? clamp((box[0] + box[2]) / 2 - 0.5 / s) : 0;
  const b = zoom ? clamp((box[1] + box[3]) / 2 - 0.5 / s) : 0;
  const inner = $("compare-inner");
  inner.style.transformOrigin = "0 0";
  inner.style.transform = s > 1 ? `scale(${s}) translate(${-a * 100}%, ${-b * 100}%)` : "";
  const u = a + Number($("slider").value) / 100 / s;
  $("after").style.clipPath = `inset(0 0 0 ${u * 100}%)`;
  $("divider").style.left = `${u * 100}%`;
  $("divider").style.borderLeftWidth = `${2 / s}px`;
}

function setupSlider() {
  $("slider").addEventListener("input", updateSlider);
  $("zoom").addEventListener("change", updateSlider);
  updateSlider();
}

document.addEventListener("DOMContentLoaded", () => {
  setupDrop();
  setupSlider();
  $("settings").addEventListener("submit", start);
  $("cancel").addEventListener("click", cancelJob);
  for (const id of ["center_crop", "resize", "force"]) $(id).addEventListener("change", describeInput);
  init();
});
