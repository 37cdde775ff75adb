// The gateway's page: plain JavaScript, no build step, no external assets (works offline).
// It talks to the same HTTP API as every other client; nothing here is privileged.
"use strict";

const state = { models: [], model: null, card: null, level: null, lastFiles: [], keyWaiters: null, objectUrls: [] };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function status(text) { $("status").textContent = text || ""; }

// --- HTTP, with the API key asked for once when the gateway answers 401 -------------------------------

function askKey() {
  if (state.keyWaiters) return new Promise((resolve) => state.keyWaiters.push(resolve));
  state.keyWaiters = [];
  const dialog = $("key-dialog");
  return new Promise((resolve) => {
    state.keyWaiters.push(resolve);
    dialog.addEventListener("close", () => {
      const key = dialog.returnValue === "ok" ? $("key").value : null;
      if (key) sessionStorage.setItem("dcs-api-key", key);
      const waiters = state.keyWaiters;
      state.keyWaiters = null;
      waiters.forEach((w) => w(key));
    }, { once: true });
    dialog.showModal();
    $("key").focus();
  });
}

async function api(path, options = {}, retried = false) {
  const headers = new Headers(options.headers || {});
  const key = sessionStorage.getItem("dcs-api-key");
  if (key) headers.set("X-API-Key", key);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 && !retried) {
    sessionStorage.removeItem("dcs-api-key");
    if (await askKey()) return api(path, options, true);
  }
  return response;
}

async function json(path, options) {
  const response = await api(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = body.error ? body.error.message : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

const q = (params) => new URLSearchParams(Object.entries(params).filter(([, v]) => v !== null && v !== undefined));

// --- models and their cards ------------------------------------------------------------------------

function clusterName(id) {
  return (state.names && state.names[id]) || `cluster ${id}`;
}

const modelPath = (suffix = "") => `models/${encodeURIComponent(state.model)}${suffix}`;
const versioned = (path) => `${path}${path.includes("?") ? "&" : "?"}${q({ version: state.version })}`;

// One entry per exported model; its precisions (NAME, NAME_int8, NAME_fp16: contract.names.precision_model) in
// the second picker, the int8 and fp16 ones with their agreement with fp32.
const PRECISIONS = ["fp32", "int8", "fp16"];
const precisionOf = (m) => m.precision || "fp32";
const baseName = (m) => (precisionOf(m) !== "fp32" && m.name.endsWith(`_${m.precision}`)
  ? m.name.slice(0, -(m.precision.length + 1)) : m.name);

function agreementText(agreement) {
  return agreement ? `${percent(agreement.cluster_agreement)} cluster agreement with fp32` : "";
}

async function loadModels() {
  const { models } = await json("models");
  state.models = models;
  const bases = [...new Set(models.map(baseName))];
  const select = $("model");
  select.replaceChildren(...bases.map((b) => el("option", { value: b }, b)));
  if (!models.length) { status("This gateway serves no model."); return; }
  select.value = bases[0];
  await selectBase(bases[0]);
}

async function selectBase(base) {
  const variants = state.models.filter((m) => baseName(m) === base)
    .sort((a, b) => PRECISIONS.indexOf(precisionOf(a)) - PRECISIONS.indexOf(precisionOf(b)));
  $("precision").replaceChildren(...variants.map((m) => el("option", { value: m.name }, m.agreement
    ? `${precisionOf(m)} (${percent(m.agreement.cluster_agreement)} agreement)` : precisionOf(m))));
  $("precision").value = variants[0].name;
  await selectModel(variants[0].name);
}

async function selectModel(name) {
  state.model = name;
  delete $("model-info").dataset.model;
  const answer = await json(modelPath());
  state.version = answer.version;
  state.names = answer.names || [];
  state.level = answer.clusters || state.names.length;
  state.lastFiles = [];
  $("results").replaceChildren();
  state.card = answer.card;
  state.metadata = answer.metadata || {};
  const card = state.card || {};
  $("model-info").textContent = [state.metadata.method, state.metadata.dataset,
    `${state.names.length} clusters`, answer.version && `version ${answer.version}`,
    answer.precision, agreementText(answer.agreement),
    card.finished === false && "UNFINISHED run"].filter(Boolean).join(" · ");
  state.tree = await json(versioned(modelPath("/tree"))).catch(() => null);
  $("tab-tree").hidden = !state.tree;
  renderLevelControl();
  renderClusters();
  renderTree();
  renderBulk();
  await renderMap();
  $("model-info").dataset.model = name;  // loaded (tests and scripts wait for this)
}

// --- how many clusters: the card's merge hierarchy (contract/levels.py) ---------------------------------

const trained = () => state.names.length;
const hierarchy = () => (state.card && state.card.levels) || null;
// the cluster a head cluster belongs to at the chosen level (its merged cluster's id: the smallest member's)
const groupOf = (c) => (hierarchy() && state.level !== trained() ? hierarchy().assignments[state.level][c] : c);

function renderLevelControl() {
  const levels = hierarchy();
  const select = $("level");
  const k = trained();
  const label = (n) => `${n}${levels && n === levels.suggested ? " (suggested)" : ""}${n === k ? " (trained)" : ""}`;
  const choices = levels ? Array.from({ length: k }, (_, i) => k - i) : [k];
  select.replaceChildren(...choices.map((n) => el("option", { value: n }, label(n))));
  select.value = String(state.level);
  select.disabled = !levels;
  $("level-note").textContent = levels
    ? `suggested: ${levels.suggested} clusters (${levels.suggested_by === "knee" ? "where the merge heights bend" : "best silhouette"}; merged by ${levels.criterion})`
    : "this version answers at its own clusters only (exported before merge hierarchies)";
}

async function selectLevel(level) {
  const answer = await json(versioned(modelPath(`?${q({ clusters: level })}`)));
  state.level = answer.clusters;
  state.names = answer.names;
  delete $("model-info").dataset.level;
  renderClusters();
  drawMap();
  renderLegend();
  if (state.lastFiles.length) await clusterFiles(state.lastFiles);
  $("model-info").dataset.level = state.level;  // answered at this level (tests wait for it)
}

// --- cluster images ----------------------------------------------------------------------------------

function percent(p) { return `${(100 * p).toFixed(1)}%`; }

function flags(result) {
  const out = [];
  if (result.low_confidence) out.push(el("span", { class: "flag warn" }, "low confidence"));
  if (result.ood) out.push(el("span", { class: "flag bad" }, "out of distribution"));
  return out;
}

function answerCard(result, file) {
  const title = result.filename || (file && file.name) || `image ${result.index}`;
  const thumb = file ? el("img", { src: URL.createObjectURL(file), alt: title, class: "thumb" }) : null;
  if (thumb) {
    state.objectUrls.push(thumb.src);
    thumb.addEventListener("error", () => thumb.remove());  // not an image the browser can show either
  }
  if (result.error) {
    return el("li", { class: "card error", "data-index": result.index },
      thumb, el("h3", {}, title), el("p", { class: "error-text" }, result.error));
  }
  const top = el("ol", { class: "topk", "aria-label": "most probable clusters" },
    (result.top_k || []).map((t) => el("li", {}, `${t.name || clusterName(t.cluster)}: ${percent(t.probability)}`)));
  return el("li", { class: "card answer", "data-index": result.index, "data-cluster": result.cluster },
    thumb, el("h3", {}, title),
    el("p", { class: "cluster" }, el("strong", { class: "cluster-name" }, result.name || clusterName(result.cluster)),
      ` (${result.cluster}) `, el("span", { class: "probability" }, percent(result.probability))),
    el("p", { class: "flags" }, flags(result)),
    result.ood_score !== undefined ? el("p", { class: "muted" }, `novelty ${result.ood_score.toFixed(3)}`) : null,
    result.path ? el("p", { class: "muted" }, `tree path ${result.path.join(" → ")}`) : null,
    top);
}

async function clusterFiles(files) {
  if (!files.length || !state.model) return;
  state.objectUrls.forEach((u) => URL.revokeObjectURL(u));
  state.objectUrls = [];
  const body = new FormData();
  files.forEach((f) => body.append("files", f, f.name));
  status(`Clustering ${files.length} image(s)…`);
  state.lastFiles = files;
  try {
    const answer = await json(`cluster?${q({ model: state.model, version: state.version, clusters: state.level })}`,
      { method: "POST", body });
    $("results").replaceChildren(...answer.results.map((r) => answerCard(r, files[r.index])));
    state.dropped = [];
    if (state.projection) {
      const placed = await json(versioned(modelPath("/projection/place")), { method: "POST", body });
      const byIndex = new Map(answer.results.map((r) => [r.index, r]));
      state.dropped = placed.results.filter((p) => p.position)
        .map((p) => ({ ...byIndex.get(p.index), position: p.position, label: files[p.index].name }));
    }
    drawMap();
    status(`${answer.results.filter((r) => !r.error).length} clustered, ` +
      `${answer.results.filter((r) => r.error).length} error(s).`);
  } catch (err) {
    status(`Failed: ${err.message}`);
  }
}

// --- clusters: names, sizes, samples, renaming -----------------------------------------------------------

function renameForm(id) {
  const input = el("input", { value: clusterName(id), "aria-label": `new name for cluster ${id}`, required: true });
  const form = el("form", { class: "rename" }, input, el("button", { type: "submit" }, "Rename"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const response = await api(versioned(modelPath(`/clusters/${id}?${q({ clusters: state.level })}`)), {
        method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name: input.value }),
      });
      if (!response.ok) throw new Error((await response.json()).error.message);
      state.names = state.names.map((name, c) => (groupOf(c) === id ? input.value : name));
      status(`Cluster ${id} is now called ${input.value}.`);
      renderClusters();
      renderLegend();
    } catch (err) {
      status(`Rename failed: ${err.message}`);
    }
  });
  return form;
}

function samples(urls, label) {
  return el("div", { class: "thumbs" }, urls.map((u, i) => el("img", { src: u, alt: `${label} sample ${i + 1}` })));
}

const MAX_SAMPLES = 12;

function sampleUrls(id) {
  const info = state.card && state.card.stats ? state.card.stats.clusters[id] : null;
  const count = info ? info.samples.length : 0;
  return Array.from({ length: count }, (_, k) => versioned(modelPath(`/clusters/${id}/samples/${k}.png`)));
}

// The clusters at the chosen level: each merged cluster's members, size and (with labels) majority class.
function levelClusters() {
  const stats = state.card && state.card.stats;
  const groups = new Map();
  for (let c = 0; c < trained(); c += 1) {
    const id = groupOf(c);
    if (!groups.has(id)) groups.set(id, { id, members: [], size: stats ? 0 : undefined, counts: null });
    const group = groups.get(id);
    group.members.push(c);
    if (!stats) continue;
    group.size += stats.clusters[c].size;
    const row = stats.contingency && stats.contingency[c];
    if (row) group.counts = group.counts ? group.counts.map((n, j) => n + row[j]) : [...row];
  }
  for (const group of groups.values()) {
    if (!group.counts || !group.size) continue;
    const best = group.counts.indexOf(Math.max(...group.counts));
    group.purity = group.counts[best] / group.size;
    group.majority = stats.class_names ? stats.class_names[best] : String(best);
  }
  return [...groups.values()];
}

function renderClusters() {
  const stats = state.card && state.card.stats;
  const clusters = levelClusters();
  const merged = state.level !== trained() ? ` (the ${trained()} trained clusters merged)` : "";
  $("clusters-note").textContent = stats
    ? `${clusters.length} clusters${merged}; sizes and purity on the ${stats.num_images} training images.`
    : "This model version has no cluster statistics (exported from an older run).";
  $("clusters").replaceChildren(...clusters.map((c) => el("li", { class: "card", "data-cluster": c.id },
    el("h3", { class: "cluster-title" }, `${clusterName(c.id)} (${c.id})`),
    c.members.length > 1 ? el("p", { class: "muted" }, `merges clusters ${c.members.join(", ")}`) : null,
    c.size !== undefined ? el("p", {}, `${c.size} training images`, c.purity !== undefined
      ? ` · purity ${percent(c.purity)} (${c.majority})` : "") : null,
    samples(c.members.flatMap(sampleUrls).slice(0, MAX_SAMPLES), clusterName(c.id)),
    renameForm(c.id))));
}

// --- the embedding map -----------------------------------------------------------------------------------

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];
const colour = (c) => PALETTE[c % PALETTE.length];

async function renderMap() {
  state.projection = null;
  state.dropped = [];
  try {
    state.projection = await json(versioned(modelPath("/projection")));
    $("map-note").textContent = `${state.projection.points.length} training images, ${state.projection.method}; ` +
      "dropped images appear as large outlined points.";
  } catch (err) {
    $("map-note").textContent = `No embedding map for this model (${err.message}).`;
  }
  drawMap();
  renderLegend();
}

function drawMap() {
  const box = $("map");
  const p = state.projection;
  if (!p) { box.replaceChildren(); return; }
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "-0.05 -0.05 1.1 1.1");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `embedding map of ${p.points.length} training images`);
  for (const [x, y, c] of p.points) {
    const dot = document.createElementNS(ns, "circle");
    dot.setAttribute("cx", x); dot.setAttribute("cy", 1 - y); dot.setAttribute("r", 0.006);
    dot.setAttribute("fill", colour(groupOf(c)));
    svg.append(dot);
  }
  for (const r of state.dropped || []) {
    const [x, y] = r.position;
    const mark = document.createElementNS(ns, "circle");
    mark.setAttribute("cx", x); mark.setAttribute("cy", 1 - y); mark.setAttribute("r", 0.02);
    mark.setAttribute("fill", colour(r.cluster)); mark.setAttribute("stroke", "#000"); mark.setAttribute("stroke-width", 0.005);
    mark.setAttribute("class", "dropped");
    const title = document.createElementNS(ns, "title");
    title.textContent = `${r.label}: ${r.name || clusterName(r.cluster)}`;
    mark.append(title);
    svg.append(mark);
  }
  box.replaceChildren(svg);
}

function renderLegend() {
  const shown = [...new Set(Array.from({ length: trained() }, (_, c) => groupOf(c)))];
  $("legend").replaceChildren(...shown.map((c) => {
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = colour(c);  // a property, not a style attribute: the page's CSP allows no inline style
    return el("li", {}, swatch, clusterName(c));
  }));
}

// --- CoHiClust's tree ------------------------------------------------------------------------------------

function renderTree() {
  const tree = state.tree;
  if (!tree) { $("tree").replaceChildren(); return; }
  const byId = new Map(tree.nodes.map((n) => [n.id, n]));
  const leavesUnder = (node) => (node.children.length ? node.children.flatMap((c) => leavesUnder(byId.get(c))) : [node]);
  const item = (node) => el("li", {},
    el("button", { class: "node", "data-node": node.id, onclick: () => showNode(node, leavesUnder(node)) },
      node.cluster !== undefined ? `${clusterName(node.cluster)}: ${node.size}` : `node ${node.id}: ${node.size}`),
    node.children.length ? el("ul", {}, node.children.map((c) => item(byId.get(c)))) : null);
  $("tree").replaceChildren(el("ul", { class: "tree-root" }, item(byId.get(0))));
}

function showNode(node, leaves) {
  const urls = leaves.flatMap((leaf) => sampleUrls(leaf.cluster));
  $("tree-images").replaceChildren(el("h3", {}, `node ${node.id}: ${node.size} training images`),
    samples(urls, `node ${node.id}`));
}

// --- a bulk job's output --------------------------------------------------------------------------------

async function loadBulk() {
  try {
    state.bulk = await json("bulk/summary");
  } catch {
    return;
  }
  $("tab-bulk").hidden = false;
  renderBulk();
}

// The job's own names (recorded when it started); a job without them takes the served card's names once that
// has loaded (renderBulk runs again then), and shows bare cluster ids until it has.
function bulkName(summary, id) {
  if (summary.cluster_names) return summary.cluster_names[id];
  return summary.model === state.model && state.names && state.names.length ? state.names[id] : null;
}

function renderBulk() {
  const summary = state.bulk;
  if (!summary) return;
  const counts = summary.clusters || {};
  const flagged = summary.ood === undefined ? "" :
    `, ${summary.ood} flagged out of distribution, ${summary.low_confidence} low-confidence`;
  $("bulk-summary").textContent = `${summary.clustered || 0} of ${summary.images || 0} images clustered offline ` +
    `with ${summary.model || "?"}, ${summary.errors || 0} error(s)${flagged}.`;
  $("bulk").replaceChildren(...Object.entries(counts).map(([id, count]) => {
    const name = bulkName(summary, Number(id));
    return el("li", { class: "card" },
      el("h3", {}, `${name ? `${name} (${id})` : `cluster ${id}`}: ${count} images`),
      count ? el("img", { src: `bulk/galleries/${id}.png`, alt: `samples of cluster ${id}`, class: "gallery" })
        : el("p", {}, "no images: no gallery"));
  }));
}

// --- tabs, drop zone, start ------------------------------------------------------------------------------

function selectTab(tab) {
  for (const t of document.querySelectorAll('[role="tab"]')) {
    const selected = t === tab;
    t.setAttribute("aria-selected", selected);
    t.tabIndex = selected ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !selected;
  }
  tab.focus();
}

function setUp() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  for (const tab of tabs) {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (event) => {
      const visible = tabs.filter((t) => !t.hidden);
      const i = visible.indexOf(tab);
      if (event.key === "ArrowRight") selectTab(visible[(i + 1) % visible.length]);
      if (event.key === "ArrowLeft") selectTab(visible[(i - 1 + visible.length) % visible.length]);
    });
  }
  const drop = $("drop");
  const picker = $("files");
  drop.addEventListener("click", () => picker.click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); picker.click(); }
  });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    clusterFiles([...event.dataTransfer.files]);
  });
  picker.addEventListener("change", () => { clusterFiles([...picker.files]); picker.value = ""; });
  $("model").addEventListener("change", (event) => selectBase(event.target.value));
  $("precision").addEventListener("change", (event) => selectModel(event.target.value));
  $("level").addEventListener("change", (event) => selectLevel(Number(event.target.value))
    .catch((err) => status(`Cannot answer at ${event.target.value} clusters: ${err.message}`)));
  loadModels().catch((err) => status(`Cannot list models: ${err.message}`));
  loadBulk();
}

document.addEventListener("DOMContentLoaded", setUp);
