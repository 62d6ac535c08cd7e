// Charts drawn as inline SVG: no library, scales with its container (viewBox), colours
// from CSS variables so light and dark themes both work. Each chart is a <figure> with a
// caption and an aria-label summary; the numbers are also in tables next to them.

import { h, s } from './dom.js';
import { elideMiddle } from './format.js';

const WIDE = 720;

/**
 * The drawing width: 1 SVG unit = 1 CSS pixel on phones (so 12px text stays 12px), the
 * full 720 units on wider screens where the drawing scales up.
 */
export function chartWidth(viewport = window.innerWidth) {
  return Math.max(340, Math.min(WIDE, viewport - 72));
}

function narrow(W) {
  return W < 520;
}

/** Round, evenly spaced tick values covering [lo, hi]. */
export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((v) => v >= raw) || raw;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    ticks.push(Number(v.toPrecision(12)));
  }
  return ticks;
}

function figure(caption, svg, legend) {
  // On narrow screens the drawing keeps a legible size and scrolls sideways instead.
  return h('figure', { class: 'chart' }, h('figcaption', null, caption), legend,
    h('div', { class: 'chart-scroll' }, svg));
}

function legendOf(items) {
  return h('ul', { class: 'legend', 'aria-hidden': 'true' },
    items.map(([cls, label]) => h('li', null, h('span', { class: `swatch ${cls}` }), label)));
}

/** Output channels per layer before and after pruning (report.layers). */
export function channelsChart(layers, W = chartWidth()) {
  const labelW = narrow(W) ? 112 : 190;
  const valueW = narrow(W) ? 70 : 84;
  const row = 20;
  const top = 8;
  const barW = W - labelW - valueW;
  const max = Math.max(1, ...layers.map((l) => l.out_channels_before));
  const height = top * 2 + layers.length * row;
  const svg = s('svg', {
    viewBox: `0 0 ${W} ${height}`, role: 'img', class: 'chart-svg', 'data-chart': 'channels',
    'aria-label': `Output channels of ${layers.length} layers before and after pruning`,
  });
  layers.forEach((l, i) => {
    const y = top + i * row;
    const wb = (l.out_channels_before / max) * barW;
    const wa = (l.out_channels_after / max) * barW;
    svg.append(s('g', { class: 'row' },
      s('title', null, `${l.name}: ${l.out_channels_before} → ${l.out_channels_after} channels`),
      s('text', { x: labelW - 8, y: y + row * 0.68, class: 'label', 'text-anchor': 'end' }, elideMiddle(l.name, narrow(W) ? 15 : 26)),
      s('rect', { x: labelW, y: y + 2, width: wb, height: row - 4, class: 'bar-before', rx: 2 }),
      s('rect', { x: labelW, y: y + 5, width: wa, height: row - 10, class: 'bar-after', rx: 2 }),
      s('text', { x: labelW + barW + 6, y: y + row * 0.68, class: 'value' },
        `${l.out_channels_before} → ${l.out_channels_after}`)));
  });
  return figure('Output channels per layer', svg,
    legendOf([['bar-before', 'before'], ['bar-after', 'after']]));
}

/**
 * A line chart with points: `points` are {x, y, label}; connected in the given order.
 * Options: xLabel, yLabel, xFmt(value, tickStep), yFmt(value, tickStep), caption,
 * name (data-chart), yMin/yMax, xIntegers (ticks only on whole numbers, e.g. steps).
 */
export function lineChart(points, opts, W = chartWidth()) {
  const m = { l: 64, r: 20, t: 14, b: 46 };
  const height = narrow(W) ? 240 : 300;
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  const pad = (lo, hi) => (hi > lo ? (hi - lo) * 0.08 : Math.abs(hi) * 0.05 || 1);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const px = pad(x0, x1);
  const py = pad(y0, y1);
  [x0, x1] = [x0 - px, x1 + px];
  [y0, y1] = [Math.max(opts.yMin ?? -Infinity, y0 - py), Math.min(opts.yMax ?? Infinity, y1 + py)];
  if (!(y1 > y0)) y1 = y0 + 1;
  const X = (v) => m.l + ((v - x0) / (x1 - x0)) * (W - m.l - m.r);
  const Y = (v) => height - m.b - ((v - y0) / (y1 - y0)) * (height - m.t - m.b);
  const svg = s('svg', {
    viewBox: `0 0 ${W} ${height}`, role: 'img', class: 'chart-svg', 'data-chart': opts.name,
    'aria-label': `${opts.yLabel} against ${opts.xLabel}, ${points.length} points`,
  });
  const yTicks = niceTicks(y0, y1);
  const yStep = yTicks.length > 1 ? yTicks[1] - yTicks[0] : 0;
  for (const t of yTicks) {
    svg.append(s('line', { x1: m.l, x2: W - m.r, y1: Y(t), y2: Y(t), class: 'grid' }),
      s('text', { x: m.l - 8, y: Y(t) + 4, class: 'tick', 'text-anchor': 'end' }, opts.yFmt(t, yStep)));
  }
  const xTicks = niceTicks(x0, x1, narrow(W) ? 3 : 5)
    .filter((t) => t >= x0 && t <= x1 && (!opts.xIntegers || Number.isInteger(t)));
  const xStep = xTicks.length > 1 ? xTicks[1] - xTicks[0] : 0;
  for (const t of xTicks) {
    svg.append(s('line', { x1: X(t), x2: X(t), y1: height - m.b, y2: height - m.b + 5, class: 'axis' }),
      s('text', { x: X(t), y: height - m.b + 19, class: 'tick', 'text-anchor': 'middle' }, opts.xFmt(t, xStep)));
  }
  svg.append(
    s('line', { x1: m.l, x2: W - m.r, y1: height - m.b, y2: height - m.b, class: 'axis' }),
    s('text', { x: (m.l + W - m.r) / 2, y: height - 6, class: 'axis-label', 'text-anchor': 'middle' }, opts.xLabel),
    s('text', { x: 14, y: (m.t + height - m.b) / 2, class: 'axis-label', 'text-anchor': 'middle',
      transform: `rotate(-90 14 ${(m.t + height - m.b) / 2})` }, opts.yLabel),
    s('polyline', { points: points.map((p) => `${X(p.x)},${Y(p.y)}`).join(' '), class: 'line' }));
  for (const p of points) {
    svg.append(s('circle', { cx: X(p.x), cy: Y(p.y), r: 5, class: 'pt' },
      s('title', null, `${p.label}: ${opts.xLabel} ${opts.xFmt(p.x)}, ${opts.yLabel} ${opts.yFmt(p.y)}`)));
  }
  return figure(opts.caption, svg);
}

/**
 * Latency p50 bars (before vs after) with a whisker to p90, per provider and batch size.
 * The scale ends at the largest p90, not p99: one stray pause of a shared machine would
 * otherwise squash every bar to a sliver. p99 (when measured) is in the tooltip and table.
 */
export function latencyChart(before, after, W = chartWidth()) {
  const rows = latencyRows(before, after);
  const labelW = narrow(W) ? 100 : 170;
  const valueW = narrow(W) ? 84 : 150;
  const group = 46;
  const top = 8;
  const barW = W - labelW - valueW;
  const max = Math.max(1e-9, ...rows.flatMap((r) => [r.before, r.after].filter(Boolean).map(reach)));
  const height = top * 2 + rows.length * group;
  const svg = s('svg', {
    viewBox: `0 0 ${W} ${height}`, role: 'img', class: 'chart-svg', 'data-chart': 'latency',
    'aria-label': 'Latency p50 before and after pruning, whiskers to p90',
  });
  rows.forEach((r, i) => {
    const y = top + i * group;
    svg.append(s('text', { x: labelW - 8, y: y + group / 2 + 4, class: 'label', 'text-anchor': 'end' }, r.key));
    [['before', r.before, y + 4], ['after', r.after, y + group / 2]].forEach(([cls, p, by]) => {
      if (!p) return;
      const bh = group / 2 - 6;
      const x50 = labelW + (p.p50 / max) * barW;
      const x90 = labelW + (reach(p) / max) * barW;
      svg.append(s('g', { class: `lat-${cls}` },
        s('title', null, `${r.key}, ${cls === 'before' ? 'original' : 'pruned'}: ${percentiles(p)}`),
        s('rect', { x: labelW, y: by, width: Math.max(1, x50 - labelW), height: bh, class: `bar-${cls}`, rx: 2 }),
        s('line', { x1: x50, x2: x90, y1: by + bh / 2, y2: by + bh / 2, class: 'whisker' }),
        s('line', { x1: x90, x2: x90, y1: by + 3, y2: by + bh - 3, class: 'whisker' }),
        s('text', { x: labelW + barW + 6, y: by + bh - 3, class: 'value' }, narrow(W) ? `${p.p50.toFixed(2)} ms` : `${p.p50.toFixed(2)} ms p50`)));
    });
  });
  return figure('Latency (bar: p50, whisker: up to p90)', svg,
    legendOf([['bar-before', 'original'], ['bar-after', 'pruned']]));
}

function latencyRows(before, after) {
  const rows = [];
  for (const [provider, batches] of Object.entries(after || {})) {
    for (const [batch, p] of Object.entries(batches)) {
      rows.push({ key: `${provider.replace('ExecutionProvider', '')} · batch ${batch}`,
        before: before?.[provider]?.[batch] || null, after: p });
    }
  }
  return rows;
}

// Where a bar's whisker ends: p90, never short of the bar itself.
function reach(p) {
  return Math.max(p.p50, p.p90 ?? p.p50);
}

function percentiles(p) {
  const parts = [`p50 ${p.p50.toFixed(3)} ms`, `p90 ${(p.p90 ?? p.p50).toFixed(3)} ms`];
  if (typeof p.p99 === 'number') parts.push(`p99 ${p.p99.toFixed(3)} ms`);
  if (typeof p.samples === 'number') parts.push(`${p.samples} runs`);
  return parts.join(', ');
}
