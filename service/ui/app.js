// The rlft dashboard: a single page over the public REST + SSE API, signed in with a tenant's API key.
//
// Safety rules this file keeps:
// - Text from the API (prompts, completions, messages, ids) is only ever put into the page as text
//   (textContent / text nodes via `h`), never as markup: no innerHTML anywhere.
// - The key lives in sessionStorage (gone when the tab closes) and travels only in the Authorization
//   header: never in a URL, a cookie or a log line. The SSE stream is read with fetch() for that reason
//   (EventSource cannot send headers).
import { Chart, fmt } from "./chart.js";

const KEY = "rlft.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const METRICS_PAGE = 50000; // rows per metrics request; a longer series is read in several pages
const MAX_POINTS = 1000; // asked of the server (downsampling there, where supported); the page downsamples too
const MAX_EVENT_LINES = 300;
const main = document.getElementById("main");
let pageAbort = new AbortController(); // aborted when the page changes: stops its stream and timers

// ------------------------------------------------------------------------------------------- helpers
// h("td", {className: "num"}, "text", node): string children become text nodes, never markup.
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && k !== "list") el[k] = v;
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const apiKey = () => sessionStorage.getItem(KEY);

class ApiError extends Error {
  constructor(status, body) {
    const d = body && body.detail;
    const message = Array.isArray(d)
      ? d.map((e) => `${e.field || (e.loc || []).join(".")}: ${e.msg}`).join("; ")
      : (d && d.message) || (typeof d === "string" ? d : `HTTP ${status}`);
    super(message);
    this.status = status;
    this.detail = d;
    this.code = d && !Array.isArray(d) ? d.code : undefined;
  }
}

async function api(path, { method = "GET", body, headers = {}, raw = false, signal } = {}) {
  const init = { method, signal, cache: "no-store", headers: { Authorization: `Bearer ${apiKey()}`, ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (resp.status === 401) {
    signOut("The API refused your key (401). Sign in again with a valid key.");
    throw new ApiError(401, null);
  }
  if (raw && resp.ok) return resp;
  const data = await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") u.append(k, v);
  const s = u.toString();
  return s ? `?${s}` : "";
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
const statusBadge = (s) => h("span", { className: `status status-${s}`, dataset: { status: s } }, s);
const jobLink = (id) => h("a", { href: `#/jobs/${id}` }, id);

function showError(where, err) {
  where.replaceChildren(h("p", { className: "error", role: "alert" }, err.message || String(err)));
}

function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const yes = document.getElementById("confirm-yes"), no = document.getElementById("confirm-no");
    const done = (ok) => {
      yes.removeEventListener("click", onYes);
      no.removeEventListener("click", onNo);
      dialog.removeEventListener("close", onClose);
      if (dialog.open) dialog.close();
      resolve(ok);
    };
    const onYes = () => done(true), onNo = () => done(false), onClose = () => done(false); // Escape closes
    yes.addEventListener("click", onYes);
    no.addEventListener("click", onNo);
    dialog.addEventListener("close", onClose);
    dialog.showModal();
  });
}

// ------------------------------------------------------------------------------------------- sign-in
function signOut(message) {
  sessionStorage.removeItem(KEY);
  pageAbort.abort();
  document.getElementById("nav").hidden = true;
  renderSignIn(message);
}

function renderSignIn(message) {
  const input = h("input", { type: "password", id: "api-key", autocomplete: "off", placeholder: "rlft_…", required: true });
  const note = h("p", { className: "error", id: "signin-error", role: "alert" }, message || "");
  const form = h(
    "form",
    { className: "panel signin", id: "signin" },
    h("h1", {}, "Sign in"),
    h("label", { htmlFor: "api-key" }, "API key"),
    input,
    h("button", { className: "primary", type: "submit" }, "Sign in"),
    note,
    h("p", { className: "muted" }, "The key stays in this tab (sessionStorage) and is sent only in the ",
      "Authorization header. rlft up prints a dev key; rlft keys create makes one."),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    try {
      await api("/v1/jobs?limit=1");
      document.getElementById("nav").hidden = false;
      if (!location.hash || location.hash === "#/signin") location.hash = "#/jobs";
      else route();
    } catch (err) {
      if (err.status !== 401) note.textContent = `Cannot reach the API: ${err.message}`;
    }
  });
  main.replaceChildren(form);
  input.focus();
}

// ------------------------------------------------------------------------------------------- jobs list
const STATUSES = ["", "validating", "queued", "running", "pausing", "paused", "cancelling", "cancelled", "succeeded", "failed"];
const cursors = []; // the `after` of each page before this one, for "Previous"

function parseMeta(text) {
  const out = {};
  for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const at = part.indexOf("=");
    if (at > 0) out[`metadata.${part.slice(0, at).trim()}`] = part.slice(at + 1).trim();
  }
  return out;
}

async function renderJobs(params) {
  const status = params.get("status") || "";
  const meta = params.get("meta") || "";
  const after = params.get("after") || "";
  const select = h("select", { id: "filter-status" }, STATUSES.map((s) => h("option", { value: s, selected: s === status }, s || "any status")));
  const metaInput = h("input", { id: "filter-meta", placeholder: "metadata: key=value, key2=value2", value: meta, size: 34 });
  const go = (extra = {}) => {
    location.hash = `#/jobs${qs({ status: select.value, meta: metaInput.value, ...extra })}`;
  };
  const filters = h(
    "form",
    { className: "row", onsubmit: (ev) => { ev.preventDefault(); cursors.length = 0; go(); } },
    select, metaInput, h("button", { type: "submit" }, "Filter"),
  );
  select.addEventListener("change", () => { cursors.length = 0; go(); });
  const body = h("div", {}, h("p", { className: "muted" }, "Loading…"));
  main.replaceChildren(h("h1", {}, "Jobs"), filters, body);
  let page;
  try {
    page = await api(`/v1/jobs${qs({ status, limit: 25, after, ...parseMeta(meta) })}`, { signal: pageAbort.signal });
  } catch (err) {
    return showError(body, err);
  }
  const picked = new Set();
  const compare = h("button", { id: "compare-selected", disabled: true, onclick: () => { location.hash = `#/compare?ids=${[...picked].join(",")}`; } }, "Compare selected");
  const rows = page.data.map((j) =>
    h("tr", { dataset: { job: j.id } },
      h("td", {}, h("input", { type: "checkbox", onchange: (ev) => {
        ev.target.checked ? picked.add(j.id) : picked.delete(j.id);
        compare.disabled = picked.size < 2;
      } })),
      h("td", {}, jobLink(j.id)),
      h("td", {}, statusBadge(j.status)),
      h("td", {}, j.algorithm),
      h("td", { className: "text" }, j.model),
      h("td", { className: "num" }, `${j.progress.step}/${j.progress.total_steps}`),
      h("td", { className: "num" }, j.latest_metrics["reward/mean"] !== undefined ? fmt(j.latest_metrics["reward/mean"]) : "–"),
      h("td", {}, when(j.created_at)),
      h("td", { className: "text muted" }, Object.entries(j.metadata).map(([k, v]) => `${k}=${v}`).join(" ")),
    ));
  const table = h("table", { id: "jobs" },
    h("thead", {}, h("tr", {}, ["", "id", "status", "algorithm", "model", "step", "reward", "created", "metadata"].map((c) => h("th", {}, c)))),
    h("tbody", {}, rows));
  const prev = h("button", { disabled: !after, onclick: () => go({ after: cursors.pop() || "" }) }, "Previous");
  const next = h("button", { id: "next-page", disabled: !page.has_more, onclick: () => { cursors.push(after); go({ after: page.next_after }); } }, "Next");
  body.replaceChildren(
    page.data.length ? table : h("p", { className: "muted", id: "no-jobs" }, "No jobs match. Submit one from the Submit page or with rlft submit."),
    h("div", { className: "row", style: "margin-top:12px" }, prev, next, compare),
  );
}

// ------------------------------------------------------------------------------------------- one job
const CHARTS = [
  { title: "reward (mean ± std)", series: [{ name: "reward/mean", label: "mean" }, { name: "reward/std", label: "± std (band)" }], band: { center: "reward/mean", spread: "reward/std" } },
  { title: "KL", series: [{ name: "kl/mean", label: "kl/mean" }] },
  { title: "entropy", series: [{ name: "policy/entropy", label: "policy/entropy" }] },
  { title: "completion length", series: [{ name: "completion/length_mean", label: "mean tokens" }] },
  { title: "reward endpoint latency (ms)", series: [{ name: "reward_endpoint/latency_p50_ms", label: "p50" }, { name: "reward_endpoint/latency_p95_ms", label: "p95" }] },
  { title: "reward endpoint errors", series: [{ name: "reward_endpoint/errors", label: "errors" }, { name: "reward_endpoint/retries", label: "retries" }] },
];

async function fetchSeries(jobId, names, signal) {
  // One series' points, all of them: pages of METRICS_PAGE rows, `max_points` for servers that downsample.
  const out = new Map(names.map((n) => [n, []]));
  let afterStep;
  for (;;) {
    const page = await api(`/v1/jobs/${jobId}/metrics${qs({ names: names.join(","), limit: METRICS_PAGE, max_points: MAX_POINTS, after_step: afterStep })}`, { signal });
    for (const m of page.data) out.get(m.name)?.push([m.step, m.value]);
    if (page.data.length < METRICS_PAGE) return out;
    afterStep = page.data.at(-1).step - 1; // the last step may be cut in the middle; read it again
    if (afterStep < 0 || page.data[0].step === page.data.at(-1).step) return out;
  }
}

function actionsFor(job, onChange) {
  const box = h("div", { className: "row", id: "actions" });
  const act = (name, label, cls) =>
    h("button", { id: `action-${name}`, className: cls, onclick: async () => {
      if (!(await confirmAction(`${label} job ${job.id}?`))) return;
      try {
        onChange(await api(`/v1/jobs/${job.id}/${name}`, { method: "POST" }));
      } catch (err) {
        box.append(h("span", { className: "error", role: "alert" }, err.message));
      }
    } }, label);
  if (["queued", "running", "validating", "paused", "pausing"].includes(job.status)) box.append(act("cancel", "Cancel", "danger"));
  if (["queued", "running"].includes(job.status)) box.append(act("pause", "Pause"));
  if (["paused", "pausing"].includes(job.status)) box.append(act("resume", "Resume", "primary"));
  return box;
}

function jobHeader(job, onChange) {
  const pct = job.progress.total_steps ? Math.min(100, (100 * job.progress.step) / job.progress.total_steps) : 0;
  return h("div", { className: "panel", id: "job-header" },
    h("div", { className: "row" }, h("h1", { style: "margin:0" }, job.id), statusBadge(job.status)),
    h("div", { className: "row" },
      h("div", { className: "bar" }, h("div", { style: `width:${pct}%` })),
      h("span", { id: "progress" }, `step ${job.progress.step} / ${job.progress.total_steps}`),
      h("span", { className: "muted" }, `${job.algorithm} · ${job.model} · attempts ${job.attempts} · created ${when(job.created_at)}`)),
    Object.keys(job.metadata).length
      ? h("p", { className: "muted text", id: "job-metadata" }, Object.entries(job.metadata).map(([k, v]) => `${k}=${v}`).join("  "))
      : null,
    job.error ? h("p", { className: "error", id: "job-error" }, h("b", {}, job.error.code), ": ", job.error.message) : null,
    actionsFor(job, onChange),
  );
}

async function renderJob(jobId) {
  const signal = pageAbort.signal;
  let job;
  try {
    job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`, { signal });
  } catch (err) {
    return showError(main, err);
  }
  const headerSlot = h("div");
  let shown = "";
  const setJob = (j) => {
    // Redraw only on a change: buttons under the user's pointer stay put while nothing happens.
    const state = JSON.stringify([j.status, j.progress, j.error, j.attempts]);
    job = j;
    if (state === shown) return;
    shown = state;
    headerSlot.replaceChildren(jobHeader(j, setJob));
  };
  setJob(job);
  const chartsBox = h("div", { className: "charts", id: "charts" });
  const samplesBox = h("div", { id: "samples" });
  const eventsBox = h("div", { className: "events", id: "events" });
  const ckptBox = h("div", { id: "checkpoints" });
  main.replaceChildren(headerSlot, h("h2", {}, "Metrics"), chartsBox, h("h2", {}, "Samples"), samplesBox,
    h("h2", {}, "Events"), eventsBox, h("h2", {}, "Checkpoints"), ckptBox,
    h("h2", {}, "Spec"), h("pre", { className: "panel", id: "spec" }, JSON.stringify(job.spec, null, 2)));

  const evalNames = Object.keys(job.latest_metrics).filter((n) => n.startsWith("eval/")).sort();
  const defs = CHARTS.concat(evalNames.length ? [{ title: "eval", series: evalNames.map((n) => ({ name: n })) }] : []);
  const charts = defs.map((d) => new Chart(chartsBox, d));
  const started = performance.now();
  await Promise.all(charts.map(async (c) => {
    try {
      const data = await fetchSeries(job.id, c.series.map((s) => s.name), signal);
      for (const [name, pts] of data) {
        c.add(name, pts);
        // The stream replays the job's events from the start: steps up to here are already drawn (or
        // were downsampled away by max_points on purpose), so only later steps are added from it.
        c.loadedThrough.set(name, pts.length ? pts.at(-1)[0] : -1);
      }
    } catch (err) {
      if (!signal.aborted) c.root.append(h("p", { className: "error" }, err.message));
    }
  }));
  chartsBox.dataset.loadedMs = String(Math.round(performance.now() - started));
  chartsBox.dataset.loaded = "true";

  renderSamples(job.id, samplesBox, null);
  renderCheckpoints(job.id, ckptBox);
  if (TERMINAL.has(job.status)) chartsBox.dataset.live = "ended";
  follow(job, charts, eventsBox, chartsBox, setJob, ckptBox, signal);
}

// Reads the job's event stream with fetch() (the key in a header), parses SSE, resumes with Last-Event-ID.
async function follow(job, charts, eventsBox, chartsBox, setJob, ckptBox, signal) {
  let lastId = 0;
  let refreshAt = 0;
  const onEvent = (ev) => {
    const line = h("div", { className: `level-${ev.level}` }, `${when(ev.created_at)}  ${ev.type.padEnd(8)} ${ev.message}`);
    eventsBox.prepend(line);
    while (eventsBox.childElementCount > MAX_EVENT_LINES) eventsBox.lastElementChild.remove();
    if (ev.type === "metrics" && ev.data && ev.data.metrics) {
      for (const c of charts) for (const s of c.series) {
        const v = ev.data.metrics[s.name];
        if (v !== undefined && ev.data.step > (c.loadedThrough.get(s.name) ?? -1)) c.add(s.name, [[ev.data.step, v]]);
      }
    }
    const now = Date.now();
    if (ev.type === "status" || now > refreshAt) {
      refreshAt = now + 2000;
      api(`/v1/jobs/${job.id}`, { signal }).then((j) => {
        setJob(j);
        if (ev.type === "status") renderCheckpoints(job.id, ckptBox);
      }).catch(() => {});
    }
  };
  let delay = 500;
  while (!signal.aborted) {
    chartsBox.dataset.live = "connecting";
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = String(lastId);
      const resp = await api(`/v1/jobs/${job.id}/events/stream`, { headers, raw: true, signal });
      chartsBox.dataset.live = "streaming";
      delay = 500;
      for await (const msg of sseMessages(resp.body, signal)) {
        if (msg.id) lastId = Number(msg.id);
        if (!msg.data) continue;
        try { onEvent(JSON.parse(msg.data)); } catch (err) { console.warn("bad event", err); }
      }
      // The server ends the stream after a terminal status.
      const j = await api(`/v1/jobs/${job.id}`, { signal });
      setJob(j);
      if (TERMINAL.has(j.status)) { chartsBox.dataset.live = "ended"; return; }
    } catch (err) {
      if (signal.aborted || err.status === 401 || err.status === 404) return;
    }
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

async function* sseMessages(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  signal.addEventListener("abort", () => reader.cancel().catch(() => {}), { once: true });
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value.replace(/\r\n?/g, "\n");
    let at;
    while ((at = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, at);
      buf = buf.slice(at + 2);
      const msg = { data: "" };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "data") msg.data += (msg.data ? "\n" : "") + val;
        else if (field === "id" || field === "event") msg[field] = val;
      }
      yield msg;
    }
  }
}

async function renderSamples(jobId, box, step) {
  const input = h("input", { type: "number", min: 0, id: "sample-step", placeholder: "newest", value: step ?? "", style: "width:110px" });
  const form = h("form", { className: "row", onsubmit: (ev) => { ev.preventDefault(); renderSamples(jobId, box, input.value === "" ? null : Number(input.value)); } },
    h("label", { htmlFor: "sample-step" }, "step"), input, h("button", { type: "submit" }, "Show"));
  const out = h("div", {}, h("p", { className: "muted" }, "Loading…"));
  box.replaceChildren(form, out);
  try {
    const res = await api(`/v1/jobs/${jobId}/samples${qs({ step, limit: 200 })}`, { signal: pageAbort.signal });
    if (res.step === null || !res.data.length) {
      out.replaceChildren(h("p", { className: "muted" }, step === null ? "No samples yet." : `No samples at step ${step}.`));
      return;
    }
    if (step === null) input.placeholder = `newest: ${res.step}`;
    const cols = ["#", "prompt", "completion", "reward", "components", "label", "error"];
    out.replaceChildren(
      h("p", { className: "muted" }, `step ${res.step}, ${res.data.length} samples`),
      h("table", { id: "samples-table" },
        h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))),
        h("tbody", {}, res.data.map((s) => h("tr", {},
          h("td", { className: "num" }, s.index),
          h("td", {}, h("div", { className: "text prompt" }, s.prompt)),
          h("td", {}, h("div", { className: "text completion" }, s.completion)),
          h("td", { className: "num" }, s.reward === null || s.reward === undefined ? "–" : fmt(s.reward)),
          h("td", { className: "text" }, s.components ? Object.entries(s.components).map(([k, v]) => `${k}=${fmt(v)}`).join(" ") : ""),
          h("td", { className: "text" }, s.label === null || s.label === undefined ? "" : typeof s.label === "string" ? s.label : JSON.stringify(s.label)),
          h("td", { className: "text error" }, s.error || ""),
        )))));
  } catch (err) {
    showError(out, err);
  }
}

async function renderCheckpoints(jobId, box) {
  try {
    const res = await api(`/v1/jobs/${jobId}/checkpoints`, { signal: pageAbort.signal });
    if (!res.data.length) return box.replaceChildren(h("p", { className: "muted" }, "No checkpoints yet."));
    box.replaceChildren(h("table", {},
      h("thead", {}, h("tr", {}, ["id", "step", "size", "best", "created", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, res.data.map((c) => h("tr", {},
        h("td", {}, c.id), h("td", { className: "num" }, c.step), h("td", { className: "num" }, `${(c.size_bytes / 1e6).toFixed(1)} MB`),
        h("td", {}, c.best ? "best" : ""), h("td", {}, when(c.created_at)),
        h("td", {}, c.deleted
          ? h("span", { className: "muted", title: "deleted by the job's retention policy (keep_last / keep_best)" }, "deleted")
          : h("button", { className: "link", onclick: (ev) => download(jobId, c, ev.target) }, "download .tar")),
      )))));
  } catch (err) {
    showError(box, err);
  }
}

async function download(jobId, ckpt, button) {
  // A plain link could not carry the Authorization header: fetch the tar, then hand the browser a blob URL.
  button.disabled = true;
  button.textContent = "downloading…";
  try {
    const resp = await api(`/v1/jobs/${jobId}/checkpoints/${ckpt.id}/archive`, { raw: true });
    const url = URL.createObjectURL(await resp.blob());
    const a = h("a", { href: url, download: `${jobId}-step-${ckpt.step}.tar` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    button.textContent = "download .tar";
  } catch (err) {
    button.textContent = `failed: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------------------------- compare
async function renderCompare(params) {
  const ids = (params.get("ids") || "").split(",").filter(Boolean);
  main.replaceChildren(h("h1", {}, "Compare reward curves"));
  if (ids.length < 2) {
    const list = await api("/v1/jobs?limit=100", { signal: pageAbort.signal });
    const picked = new Set();
    const go = h("button", { className: "primary", disabled: true, id: "compare-go", onclick: () => { location.hash = `#/compare?ids=${[...picked].join(",")}`; } }, "Compare");
    main.append(h("p", { className: "muted" }, "Pick two or more jobs."),
      h("div", { className: "panel" }, list.data.map((j) => h("label", { style: "display:block" },
        h("input", { type: "checkbox", value: j.id, onchange: (ev) => { ev.target.checked ? picked.add(j.id) : picked.delete(j.id); go.disabled = picked.size < 2; } }),
        ` ${j.id} `, statusBadge(j.status), ` ${j.model} ${Object.entries(j.metadata).map(([k, v]) => `${k}=${v}`).join(" ")}`))),
      go);
    return;
  }
  const box = h("div", { className: "charts", id: "compare-charts" });
  main.append(box);
  const reward = new Chart(box, { title: "reward/mean", series: ids.map((id) => ({ name: id, label: id })) });
  const kl = new Chart(box, { title: "kl/mean", series: ids.map((id) => ({ name: id, label: id })) });
  await Promise.all(ids.map(async (id) => {
    try {
      const data = await fetchSeries(id, ["reward/mean", "kl/mean"], pageAbort.signal);
      reward.add(id, data.get("reward/mean"));
      kl.add(id, data.get("kl/mean"));
    } catch (err) {
      main.append(h("p", { className: "error" }, `${id}: ${err.message}`));
    }
  }));
  box.dataset.loaded = "true";
}

// ------------------------------------------------------------------------------------------- submit
const EXAMPLE = `# A job spec, YAML or JSON (the same as rlft submit takes)
algorithm: grpo
model:
  name_or_path: Qwen/Qwen2.5-0.5B-Instruct
dataset:
  rows:
    - {prompt: "Say a word:", label: "a"}
reward:
  url: https://reward.example.com/score
hyperparameters:
  steps: 10
metadata:
  project: demo
`;

function renderSubmit() {
  const text = h("textarea", { id: "spec", spellcheck: false }, EXAMPLE);
  const out = h("div", { id: "submit-result" });
  const submit = h("button", { className: "primary", type: "submit", id: "submit-job" }, "Submit");
  const form = h("form", { onsubmit: async (ev) => {
    ev.preventDefault();
    out.replaceChildren();
    let spec;
    try {
      spec = window.jsyaml.load(text.value);
    } catch (err) {
      out.append(h("p", { className: "error", role: "alert" }, `Not valid YAML or JSON: ${err.message}`));
      return;
    }
    if (!spec || typeof spec !== "object" || Array.isArray(spec)) {
      out.append(h("p", { className: "error", role: "alert" }, "A spec is a mapping (algorithm, model, dataset, reward, …)."));
      return;
    }
    submit.disabled = true;
    try {
      // A fresh key per click: a network retry of this request cannot create a second job.
      const job = await api("/v1/jobs", { method: "POST", body: spec, headers: { "Idempotency-Key": crypto.randomUUID() } });
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      const items = Array.isArray(err.detail) ? err.detail : err.detail ? [err.detail] : [{ message: err.message }];
      out.append(h("p", { className: "error", role: "alert" }, `The API refused the spec (HTTP ${err.status}):`),
        h("ul", { className: "field-errors" }, items.map((e) => h("li", { dataset: { field: e.field || "" } },
          e.field ? h("b", { className: "field" }, e.field) : null, e.field ? ": " : "", e.msg || e.message || e.code))));
    } finally {
      submit.disabled = false;
    }
  } }, text, h("div", { className: "row", style: "margin-top:10px" }, submit,
    h("span", { className: "muted" }, "Reward header values you paste are sent once, over this connection, and stored encrypted.")));
  main.replaceChildren(h("h1", {}, "Submit a job"), form, out);
}

// ------------------------------------------------------------------------------------------- routing
function route() {
  pageAbort.abort();
  pageAbort = new AbortController();
  if (!apiKey()) return renderSignIn();
  document.getElementById("nav").hidden = false;
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query);
  const parts = path.split("/").filter(Boolean);
  const run = async () => {
    if (parts[0] === "jobs" && parts[1]) return renderJob(parts[1]);
    if (parts[0] === "compare") return renderCompare(params);
    if (parts[0] === "submit") return renderSubmit();
    return renderJobs(params);
  };
  run().catch((err) => { if (!pageAbort.signal.aborted) showError(main, err); });
}

document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", route);
route();
