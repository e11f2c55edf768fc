// Time-series charts (uPlot) and the per-layer heat-map (a canvas).
import uPlot from './vendor/uPlot.esm.js';
import { el } from './format.js';

const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c'];

// A line chart of series sharing an x axis. update(xs, [ys...]) redraws;
// the container's data-points attribute counts the x values (tests read it).
export class LineChart {
  constructor(title, xLabel, seriesLabels) {
    this.node = el('div', { class: 'chart', 'data-title': title, 'data-points': '0' },
                   el('h3', {}, title));
    this.body = el('div', { class: 'chart-body' }, el('p', { class: 'muted' }, 'no data yet'));
    this.node.append(this.body);
    this.opts = {
      width: 460, height: 220,
      scales: { x: { time: false } },
      axes: [{ label: xLabel }, {}],
      series: [{ label: xLabel }, ...seriesLabels.map((label, i) => ({
        label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
        points: { size: 4 },
      }))],
    };
    this.plot = null;
  }

  update(xs, ys) {
    this.node.dataset.points = String(xs.length);
    if (xs.length === 0) return;
    const data = [xs, ...ys];
    if (!this.plot) {
      this.body.replaceChildren();
      this.plot = new uPlot(this.opts, data, this.body);
    } else {
      this.plot.setData(data);
    }
  }
}

// Maps v in [0, 1] to a color from light yellow to dark blue.
function shade(v) {
  const t = Math.max(0, Math.min(1, v));
  const r = Math.round(255 - 225 * t), g = Math.round(247 - 167 * t), b = Math.round(188 + 22 * t);
  return `rgb(${r},${g},${b})`;
}

// Layers (rows) by epochs (columns) of one statistic, drawn on a canvas;
// the values are scaled to the min..max of what is shown (the legend says).
export class HeatMap {
  constructor() {
    this.metric = 'sparsity';
    this.select = el('select', { onchange: () => { this.metric = this.select.value; this.draw(); } },
                     ...['sparsity', 'alpha', 'cosWt', 'flips'].map(m => el('option', { value: m }, m)));
    this.canvas = el('canvas', { width: 900, height: 60, class: 'heatmap' });
    this.legend = el('p', { class: 'muted' });
    this.node = el('div', { class: 'chart wide' },
                   el('h3', {}, 'Per-layer ternary statistics by epoch ', this.select),
                   this.canvas, this.legend);
    this.epochs = [];  // [{epoch, layers: [...]}]
  }

  update(epochs) {
    this.epochs = epochs;
    this.draw();
  }

  draw() {
    const names = [];
    for (const e of this.epochs) for (const l of e.layers) if (!names.includes(l.name)) names.push(l.name);
    const rowH = 14, labelW = 220, colW = Math.max(8, Math.min(60, 660 / Math.max(1, this.epochs.length)));
    this.canvas.width = labelW + colW * Math.max(1, this.epochs.length) + 10;
    this.canvas.height = rowH * Math.max(1, names.length) + 20;
    const ctx = this.canvas.getContext('2d');
    ctx.fillStyle = '#fff';
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    if (names.length === 0) {
      this.legend.textContent = 'no per-layer statistics yet (epoch_end events of ternary methods carry them)';
      return;
    }
    let lo = Infinity, hi = -Infinity;
    for (const e of this.epochs) for (const l of e.layers) {
      const v = l[this.metric] ?? 0; lo = Math.min(lo, v); hi = Math.max(hi, v);
    }
    const span = hi > lo ? hi - lo : 1;
    ctx.font = '11px sans-serif';
    ctx.textBaseline = 'middle';
    names.forEach((name, row) => {
      ctx.fillStyle = '#111';
      ctx.fillText(name.length > 34 ? `…${name.slice(-33)}` : name, 2, row * rowH + rowH / 2);
    });
    this.epochs.forEach((e, col) => {
      for (const l of e.layers) {
        const row = names.indexOf(l.name);
        ctx.fillStyle = shade(((l[this.metric] ?? 0) - lo) / span);
        ctx.fillRect(labelW + col * colW, row * rowH, colW - 1, rowH - 1);
      }
      ctx.fillStyle = '#111';
      ctx.fillText(String(e.epoch), labelW + col * colW + 2, names.length * rowH + 10);
    });
    this.legend.textContent = `${this.metric}: light = ${lo.toPrecision(3)}, dark = ${hi.toPrecision(3)}; ` +
                              `${names.length} layers × ${this.epochs.length} epochs`;
  }
}
