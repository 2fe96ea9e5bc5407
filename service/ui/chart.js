// A small canvas line chart for step series, drawn by hand rather than with a vendored library:
// the page downsamples every series to at most MAX_DRAWN points (min and max of each bucket, so spikes
// stay visible), and drawing a few thousand points on a canvas takes milliseconds. uPlot would do the
// same in ~50 KB; this is ~4 KB with nothing to keep up to date.

const MAX_DRAWN = 1000;
export const PALETTE = ["#2f6fde", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#e67700", "#495057"];

export class Chart {
  // series: [{name, label?, color?}]; band: {center, spread} draws center ± spread as a shaded area.
  constructor(container, { title, series, band = null }) {
    this.series = series.map((s, i) => ({ ...s, color: s.color || PALETTE[i % PALETTE.length], points: new Map() }));
    this.band = band;
    this.loadedThrough = new Map(); // series name -> the last step of its initial load (see app.js)
    this.root = document.createElement("div");
    this.root.className = "chart";
    this.root.dataset.title = title;
    const h = document.createElement("h3");
    h.textContent = title;
    this.canvas = document.createElement("canvas");
    this.legend = document.createElement("div");
    this.legend.className = "legend";
    this.root.append(h, this.canvas, this.legend);
    container.append(this.root);
    this.pending = false;
    this.update();
  }

  byName(name) {
    return this.series.find((s) => s.name === name);
  }

  // points: iterable of [step, value]; a repeated step replaces the value (the API keeps one per step).
  add(name, points) {
    const s = this.byName(name);
    if (!s) return;
    for (const [step, value] of points) {
      if (Number.isFinite(value)) s.points.set(step, value);
    }
    this.update();
  }

  count() {
    return this.series.reduce((n, s) => n + s.points.size, 0);
  }

  update() {
    // Many points arrive in a burst (a reconnect replays events): draw once per frame.
    this.root.dataset.points = String(this.count());
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      const started = performance.now();
      this.draw();
      this.root.dataset.drawMs = (performance.now() - started).toFixed(1);
    });
  }

  sorted(s) {
    return [...s.points.entries()].sort((a, b) => a[0] - b[0]);
  }

  draw() {
    const dpr = window.devicePixelRatio || 1;
    const w = this.canvas.clientWidth || 380;
    const hgt = this.canvas.clientHeight || 180;
    this.canvas.width = w * dpr;
    this.canvas.height = hgt * dpr;
    const ctx = this.canvas.getContext("2d");
    ctx.scale(dpr, dpr);
    ctx.clearRect(0, 0, w, hgt);
    const data = this.series.map((s) => downsample(this.sorted(s), MAX_DRAWN));
    const bandPts = this.bandPoints();
    this.root.dataset.drawn = String(data.reduce((n, d) => n + d.length, 0));
    const all = data.flat().concat(bandPts.flatMap(([x, lo, hi]) => [[x, lo], [x, hi]]));
    this.renderLegend();
    if (!all.length) {
      ctx.fillStyle = "#68717d";
      ctx.font = "12px system-ui";
      ctx.fillText("no points yet", 12, hgt / 2);
      return;
    }
    let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
    for (const [x, y] of all) {
      x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
    }
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
    const pad = { l: 52, r: 10, t: 8, b: 20 };
    const sx = (x) => pad.l + ((x - x0) / (x1 - x0)) * (w - pad.l - pad.r);
    const sy = (y) => hgt - pad.b - ((y - y0) / (y1 - y0)) * (hgt - pad.t - pad.b);
    ctx.strokeStyle = "#dde2e8";
    ctx.fillStyle = "#68717d";
    ctx.font = "11px system-ui";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 3; i++) {
      const y = y0 + ((y1 - y0) * i) / 3;
      ctx.beginPath(); ctx.moveTo(pad.l, sy(y)); ctx.lineTo(w - pad.r, sy(y)); ctx.stroke();
      ctx.fillText(fmt(y), 4, sy(y) + 4);
    }
    ctx.fillText(`step ${fmt(x0)}`, pad.l, hgt - 4);
    const right = `${fmt(x1)}`;
    ctx.fillText(right, w - pad.r - ctx.measureText(right).width, hgt - 4);
    if (bandPts.length) {
      ctx.fillStyle = hexAlpha(this.byName(this.band.center).color, 0.18);
      ctx.beginPath();
      bandPts.forEach(([x, , hi], i) => (i ? ctx.lineTo(sx(x), sy(hi)) : ctx.moveTo(sx(x), sy(hi))));
      for (let i = bandPts.length - 1; i >= 0; i--) ctx.lineTo(sx(bandPts[i][0]), sy(bandPts[i][1]));
      ctx.closePath();
      ctx.fill();
    }
    this.series.forEach((s, i) => {
      if (this.band && s.name === this.band.spread) return;
      const pts = data[i];
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 1.6;
      ctx.beginPath();
      pts.forEach(([x, y], j) => (j ? ctx.lineTo(sx(x), sy(y)) : ctx.moveTo(sx(x), sy(y))));
      ctx.stroke();
      if (pts.length === 1) {
        ctx.fillStyle = s.color;
        ctx.fillRect(sx(pts[0][0]) - 2, sy(pts[0][1]) - 2, 4, 4);
      }
    });
  }

  bandPoints() {
    if (!this.band) return [];
    const c = this.byName(this.band.center), sp = this.byName(this.band.spread);
    const out = [];
    for (const [x, m] of downsample(this.sorted(c), MAX_DRAWN / 2)) {
      const d = sp.points.get(x);
      if (d !== undefined) out.push([x, m - d, m + d]);
    }
    return out;
  }

  renderLegend() {
    this.legend.replaceChildren();
    for (const s of this.series) {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = s.color;
      const last = this.sorted(s).at(-1);
      item.append(swatch, document.createTextNode(`${s.label || s.name}${last ? ` ${fmt(last[1])}` : ""}`));
      this.legend.append(item);
    }
  }
}

// Keeps the first and last point and, per bucket, the points with the smallest and largest value.
export function downsample(points, max) {
  if (points.length <= max) return points;
  const buckets = Math.floor(max / 2);
  const size = points.length / buckets;
  const out = [];
  for (let b = 0; b < buckets; b++) {
    const slice = points.slice(Math.floor(b * size), Math.floor((b + 1) * size));
    if (!slice.length) continue;
    let lo = slice[0], hi = slice[0];
    for (const p of slice) { if (p[1] < lo[1]) lo = p; if (p[1] > hi[1]) hi = p; }
    if (lo === hi) out.push(lo);
    else out.push(...(lo[0] < hi[0] ? [lo, hi] : [hi, lo]));
  }
  if (out[0] !== points[0]) out.unshift(points[0]);
  if (out.at(-1) !== points.at(-1)) out.push(points.at(-1));
  return out;
}

export function fmt(v) {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
  return Number.isInteger(v) ? String(v) : v.toFixed(a >= 100 ? 1 : 3);
}

function hexAlpha(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}
