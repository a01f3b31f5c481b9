// The vidseg page: open a video, click objects, propagate, correct, export.
// Plain JavaScript against the JSON API (see /docs); no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const view = $("view");
const ctx = view.getContext("2d");

const state = {
  session: null,      // GET /api/sessions/{id}
  frame: 0,
  selected: null,     // object id
  prompts: [],        // GET .../prompts
  areas: {},          // object id -> mask pixels on the shown frame
  done: new Set(),    // frames with propagated masks
  maskVersion: 0,     // bumped whenever masks change, so the browser fetches them again
  playing: false,
  events: null,       // EventSource of a running propagation
  renderToken: 0,
};
const frameImages = new Map();  // frame index -> loaded <img>, a bounded cache for playback
const FRAME_CACHE = 150;

// -- helpers ----------------------------------------------------------------------------------
async function api(method, url, body) {
  const options = { method, headers: {} };
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    throw new Error(detail);
  }
  return response.status === 204 ? null : response.json();
}

function say(text, kind = "error") {
  const message = $("message");
  message.textContent = text;
  message.className = kind;
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`could not load ${url}`));
    image.src = url;
  });
}

const sessionUrl = (path = "") => `/api/sessions/${state.session.id}${path}`;

// -- start page -------------------------------------------------------------------------------
async function showStart() {
  stopPlaying();
  closeEvents();
  state.session = null;
  $("start").hidden = false;
  $("editor").hidden = true;
  $("session-name").textContent = "";
  const [videos, sessions] = await Promise.all([api("GET", "/api/videos"), api("GET", "/api/sessions")]);
  $("video-list").replaceChildren(...videos.map((v) => {
    const option = document.createElement("option");
    option.value = v.path;
    option.textContent = v.name;
    return option;
  }));
  const list = $("session-list");
  if (!sessions.length) {
    list.innerHTML = '<li class="muted">none yet</li>';
    return;
  }
  list.replaceChildren(...sessions.map((s) => {
    const item = document.createElement("li");
    item.dataset.id = s.id;
    const label = document.createElement("span");
    label.textContent = `${s.name} · ${new Date(s.updated * 1000).toLocaleString()}`;
    label.onclick = () => openSession(s.id).catch((error) => say(error.message));
    const remove = document.createElement("button");
    remove.className = "remove";
    remove.title = "forget this session (its prompts and masks)";
    remove.textContent = "×";
    remove.onclick = async () => {
      if (!confirm(`Forget the session of ${s.name}?`)) return;
      try {
        await api("DELETE", `/api/sessions/${s.id}`);
        await showStart();
      } catch (error) { say(error.message); }
    };
    item.append(label, " ", remove);
    return item;
  }));
}

$("open-path").onsubmit = async (event) => {
  event.preventDefault();
  try {
    say("opening…", "info");
    const session = await api("POST", "/api/sessions", { path: $("video-path").value.trim() });
    await openSession(session.id);
  } catch (error) { say(error.message); }
};

$("video-file").onchange = async () => {
  const file = $("video-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  try {
    say(`uploading ${file.name}…`, "info");
    const session = await api("POST", "/api/sessions/upload", form);
    await openSession(session.id);
  } catch (error) { say(error.message); }
};

// -- editor -----------------------------------------------------------------------------------
async function openSession(id) {
  const session = await api("GET", `/api/sessions/${id}`);
  state.session = session;
  state.done = new Set(session.done_frames);
  state.selected = session.objects.length ? session.objects[0].id : null;
  frameImages.clear();
  location.hash = `session=${id}`;
  $("start").hidden = true;
  $("editor").hidden = false;
  $("session-name").textContent = `${session.name} · ${session.width}×${session.height} · ${session.num_frames} frames`;
  say("", "info");
  view.width = session.width;
  view.height = session.height;
  $("scrub").max = session.num_frames - 1;
  $("timeline").width = Math.min(2000, session.num_frames * 4);
  for (const [kind, link] of [["masks.zip", "export-zip"], ["coco.json", "export-coco"], ["overlay.mp4", "export-mp4"]]) {
    $(link).href = sessionUrl(`/export/${kind}`);
  }
  await refreshPrompts();
  renderObjects();
  const first = session.prompted_frames.length ? session.prompted_frames[0] : 0;
  await showFrame(first);
  if (session.job && session.job.state === "running") followPropagation();
  else showJob(session.job);
}

async function refreshSession() {
  const session = await api("GET", sessionUrl());
  state.session = session;
  state.done = new Set(session.done_frames);
}

async function refreshPrompts() {
  state.prompts = await api("GET", sessionUrl("/prompts"));
}

function objectById(id) {
  return state.session.objects.find((o) => o.id === id);
}

function renderObjects() {
  const list = $("objects");
  list.replaceChildren(...state.session.objects.map((obj) => {
    const item = document.createElement("li");
    item.dataset.id = obj.id;
    item.className = obj.id === state.selected ? "selected" : "";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = obj.color;
    const name = document.createElement("input");
    name.value = obj.name;
    name.className = "name";
    name.onchange = async () => {
      try {
        Object.assign(obj, await api("PATCH", sessionUrl(`/objects/${obj.id}`), { name: name.value }));
      } catch (error) { say(error.message); }
    };
    const area = document.createElement("span");
    area.className = "area";
    const pixels = state.areas[obj.id] || 0;
    area.textContent = pixels ? `${pixels.toLocaleString("en")} px` : "–";
    const remove = document.createElement("button");
    remove.className = "remove";
    remove.title = "remove this object everywhere";
    remove.textContent = "×";
    remove.onclick = async (event) => {
      event.stopPropagation();
      if (!confirm(`Remove ${obj.name} and all its masks?`)) return;
      try {
        await api("DELETE", sessionUrl(`/objects/${obj.id}`));
        await afterMaskChange();
        if (state.selected === obj.id) state.selected = state.session.objects.length ? state.session.objects[0].id : null;
        renderObjects();
      } catch (error) { say(error.message); }
    };
    item.onclick = () => { state.selected = obj.id; renderObjects(); };
    item.append(swatch, name, area, remove);
    return item;
  }));
}

async function addObject() {
  const obj = await api("POST", sessionUrl("/objects"), {});
  state.session.objects.push(obj);
  state.selected = obj.id;
  renderObjects();
  return obj;
}

// -- drawing ----------------------------------------------------------------------------------
async function frameImage(index) {
  let image = frameImages.get(index);
  if (!image) {
    image = await loadImage(sessionUrl(`/frames/${index}.jpg`));
    frameImages.set(index, image);
    if (frameImages.size > FRAME_CACHE) frameImages.delete(frameImages.keys().next().value);
  }
  return image;
}

async function showFrame(index) {
  const session = state.session;
  index = Math.max(0, Math.min(session.num_frames - 1, index));
  state.frame = index;
  $("scrub").value = index;
  $("frame-label").textContent = `${index} / ${session.num_frames - 1}`;
  view.dataset.ready = "0";
  const token = ++state.renderToken;
  try {
    const [image, masks] = await Promise.all([
      frameImage(index),
      api("GET", sessionUrl(`/frames/${index}/masks`)),
    ]);
    const areas = {};
    for (const obj of masks.objects) areas[obj.obj_id] = obj.area;
    const overlay = masks.objects.some((o) => o.area > 0)
      ? await loadImage(sessionUrl(`/frames/${index}/masks?format=png&v=${state.maskVersion}`))
      : null;
    if (token !== state.renderToken) return;  // a later frame was asked for meanwhile
    state.areas = areas;
    state.overlay = overlay;
    state.image = image;
    draw();
    renderObjects();
    renderTimeline();
    view.dataset.frame = String(index);
    view.dataset.maskPixels = String(Object.values(areas).reduce((a, b) => a + b, 0));
    view.dataset.ready = "1";
  } catch (error) {
    if (token === state.renderToken) say(error.message);
  }
}

function draw(box) {
  if (!state.image) return;
  ctx.globalAlpha = 1;
  ctx.drawImage(state.image, 0, 0);
  if (state.overlay) {
    ctx.globalAlpha = 0.55;
    ctx.drawImage(state.overlay, 0, 0);
    ctx.globalAlpha = 1;
  }
  const scale = Math.max(1, state.session.width / 640);
  for (const prompt of state.prompts) {
    if (prompt.frame_index !== state.frame) continue;
    const color = (objectById(prompt.obj_id) || {}).color || "#fff";
    if (prompt.box) {
      const [x1, y1, x2, y2] = prompt.box;
      ctx.strokeStyle = color;
      ctx.lineWidth = 2 * scale;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    }
    prompt.points.forEach(([x, y], i) => {
      ctx.beginPath();
      ctx.arc(x, y, 6 * scale, 0, 2 * Math.PI);
      ctx.fillStyle = prompt.labels[i] ? "#2ecc71" : "#e74c3c";
      ctx.fill();
      ctx.lineWidth = 2 * scale;
      ctx.strokeStyle = color;
      ctx.stroke();
    });
  }
  if (box) {
    ctx.setLineDash([8 * scale, 6 * scale]);
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 2 * scale;
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    ctx.setLineDash([]);
  }
}

function renderTimeline() {
  const canvas = $("timeline");
  const context = canvas.getContext("2d");
  const n = state.session.num_frames;
  const step = canvas.width / n;
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.fillStyle = "#4a6fa5";
  for (const frame of state.done) context.fillRect(frame * step, 2, Math.max(1, step), 6);
  context.fillStyle = "#f1c40f";
  for (const frame of state.session.prompted_frames) context.fillRect(frame * step, 0, Math.max(2, step), 8);
  context.fillStyle = "#fff";
  context.fillRect(state.frame * step, 0, Math.max(2, step), 8);
}

async function afterMaskChange() {
  state.maskVersion += 1;
  await Promise.all([refreshPrompts(), refreshSession()]);
  await showFrame(state.frame);
}

// -- prompts ----------------------------------------------------------------------------------
function canvasPoint(event) {
  const rect = view.getBoundingClientRect();
  // The canvas keeps its aspect ratio inside the element (object-fit: contain).
  const scale = Math.min(rect.width / view.width, rect.height / view.height);
  const left = rect.left + (rect.width - view.width * scale) / 2;
  const top = rect.top + (rect.height - view.height * scale) / 2;
  const x = Math.min(view.width - 1, Math.max(0, (event.clientX - left) / scale));
  const y = Math.min(view.height - 1, Math.max(0, (event.clientY - top) / scale));
  return [Math.round(x), Math.round(y)];
}

let drag = null;
view.addEventListener("contextmenu", (event) => event.preventDefault());
view.addEventListener("mousedown", (event) => {
  if (!state.session) return;
  view.focus();
  drag = { start: canvasPoint(event), negative: event.shiftKey || event.button === 2, moved: false };
});
view.addEventListener("mousemove", (event) => {
  if (!drag) return;
  const [x, y] = canvasPoint(event);
  const [x0, y0] = drag.start;
  if (Math.abs(x - x0) + Math.abs(y - y0) > 8 * Math.max(1, view.width / view.clientWidth)) drag.moved = true;
  if (drag.moved) draw([Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)]);
});
window.addEventListener("mouseup", async (event) => {
  if (!drag) return;
  const { start, negative, moved } = drag;
  drag = null;
  const end = canvasPoint(event);
  const body = moved
    ? { box: [Math.min(start[0], end[0]), Math.min(start[1], end[1]), Math.max(start[0], end[0]), Math.max(start[1], end[1])] }
    : { points: [start], labels: [negative ? 0 : 1] };
  await prompt(body);
});

async function prompt(body) {
  try {
    stopPlaying();
    if (state.selected === null || !objectById(state.selected)) await addObject();
    say("…", "info");
    await api("POST", sessionUrl(`/frames/${state.frame}/prompts`), { obj_id: state.selected, ...body });
    say("", "info");
    await afterMaskChange();
  } catch (error) {
    say(error.message);
    draw();
  }
}

$("add-object").onclick = () => addObject().catch((error) => say(error.message));
$("clear-frame").onclick = async () => {
  try {
    const suffix = state.selected === null ? "" : `?obj_id=${state.selected}`;
    await api("DELETE", sessionUrl(`/frames/${state.frame}/prompts${suffix}`));
    await afterMaskChange();
  } catch (error) { say(error.message); }
};

// -- propagation ------------------------------------------------------------------------------
$("propagate").onclick = async () => {
  try {
    stopPlaying();
    const body = { direction: $("direction").value };
    if ($("from-here").checked) body.start_frame = state.frame;
    const job = await api("POST", sessionUrl("/propagation"), body);
    showJob(job);
    followPropagation();
  } catch (error) { say(error.message); }
};

$("cancel").onclick = async () => {
  try { showJob(await api("DELETE", sessionUrl("/propagation"))); } catch (error) { say(error.message); }
};

function showJob(job) {
  const running = Boolean(job && job.state === "running");
  document.body.dataset.job = job ? job.state : "none";
  document.body.dataset.jobId = job ? String(job.id) : "";
  $("propagate").disabled = running;
  $("cancel").disabled = !running;
  $("progress").max = job ? Math.max(1, job.total) : 1;
  $("progress").value = job ? job.done : 0;
  let label = "";
  if (job) {
    label = job.state === "running" ? `${job.done} / ${job.total} frames`
      : job.state === "failed" ? `failed: ${job.error}`
      : `${job.state}: ${job.done} / ${job.total} frames in ${job.seconds.toFixed(1)} s`;
  }
  $("progress-label").textContent = label;
}

function closeEvents() {
  if (state.events) state.events.close();
  state.events = null;
}

function followPropagation() {
  closeEvents();
  const events = new EventSource(sessionUrl("/propagation/events"));
  state.events = events;
  events.addEventListener("progress", async (message) => {
    const job = JSON.parse(message.data);
    showJob(job);
    if (!job || job.state !== "running") {
      closeEvents();
      await afterMaskChange();
      return;
    }
    if (job.last_frame !== null) {
      state.done.add(job.last_frame);
      renderTimeline();
      if (job.last_frame === state.frame && !state.playing) {
        state.maskVersion += 1;
        await showFrame(state.frame);
      }
    }
  });
  events.onerror = () => {  // the server went away: ask again rather than retry forever
    closeEvents();
    setTimeout(async () => {
      try {
        const job = await api("GET", sessionUrl("/propagation"));
        showJob(job);
        if (job && job.state === "running") followPropagation();
        else await afterMaskChange();
      } catch (error) { say(error.message); }
    }, 1000);
  };
}

// -- playback and keys ------------------------------------------------------------------------
function stopPlaying() {
  state.playing = false;
  $("play").textContent = "▶";
}

async function play() {
  if (state.playing) return stopPlaying();
  state.playing = true;
  $("play").textContent = "❚❚";
  if (state.frame >= state.session.num_frames - 1) await showFrame(0);
  const interval = 1000 / (state.session.fps || 24);
  while (state.playing && state.frame < state.session.num_frames - 1) {
    const started = performance.now();
    await showFrame(state.frame + 1);
    await new Promise((r) => setTimeout(r, Math.max(0, interval - (performance.now() - started))));
  }
  stopPlaying();
}

$("prev").onclick = () => { stopPlaying(); showFrame(state.frame - 1); };
$("next").onclick = () => { stopPlaying(); showFrame(state.frame + 1); };
$("play").onclick = () => play();
$("scrub").oninput = () => { stopPlaying(); showFrame(Number($("scrub").value)); };

document.addEventListener("keydown", (event) => {
  if (!state.session || $("editor").hidden) return;
  if (["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName) && event.target.type !== "range") return;
  const actions = {
    ArrowRight: () => { stopPlaying(); showFrame(state.frame + 1); },
    ArrowLeft: () => { stopPlaying(); showFrame(state.frame - 1); },
    ".": () => { stopPlaying(); showFrame(state.frame + 1); },
    ",": () => { stopPlaying(); showFrame(state.frame - 1); },
    " ": () => play(),
    n: () => addObject().catch((error) => say(error.message)),
  };
  const action = actions[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
});

$("home").onclick = (event) => { event.preventDefault(); location.hash = ""; showStart(); };

// -- start ------------------------------------------------------------------------------------
const match = location.hash.match(/session=([\w-]+)/);
(match ? openSession(match[1]) : showStart()).catch((error) => {
  say(error.message);
  showStart();
});
