// The report of a succeeded job: headline ratios, a before/after table, charts of
// channels per layer, accuracy against MACs and latency, and the artifacts to download.

import { api, download } from '../api.js';
import { channelsChart, latencyChart, lineChart } from '../charts.js';
import { append, h, replace } from '../dom.js';
import { bytes, compact, compactTick, int, ms, pct, ratio } from '../format.js';
import { warningsOf } from '../summary.js';
import { errorPanel } from './common.js';

export async function renderReport(root, job, signal) {
  const id = encodeURIComponent(job.id);
  let report;
  let artifacts;
  try {
    [report, artifacts] = await Promise.all([
      api(`/jobs/${id}/report`, { signal }),
      api(`/jobs/${id}/artifacts`, { signal }),
    ]);
  } catch (err) {
    if (!signal.aborted) replace(root, errorPanel('Could not load the report', err));
    return;
  }
  if (signal.aborted) return;
  const items = Array.isArray(artifacts) ? artifacts : artifacts?.items || [];
  replace(root,
    h('section', { class: 'report', 'aria-labelledby': 'report-h', id: 'report' },
      h('h2', { id: 'report-h' }, 'Result'),
      warningsPanel(report),
      headline(report),
      notes(report),
      h('div', { class: 'panel' }, h('h3', null, 'Before and after'), compareTable(report)),
      h('div', { class: 'charts' },
        report.layers?.length ? h('div', { class: 'panel' }, channelsChart(report.layers)) : null,
        historyPanel(report),
        hasLatency(report) ? h('div', { class: 'panel' }, latencyChart(report.original.latency_ms, report.pruned.latency_ms)) : null),
      artifactsPanel(job, items),
      environmentPanel(report)));
}

function change(before, after) {
  if (before === null || before === undefined || after === null || after === undefined || !before) return '—';
  const d = (after - before) / before;
  return `${d > 0 ? '+' : d < 0 ? '−' : '±'}${Math.abs(d * 100).toFixed(1)}%`;
}

function points(d) {
  const v = Math.abs(d * 100).toFixed(1);
  return `${d > 0 ? '+' : d < 0 ? '−' : '±'}${v} points`;
}

function headline(r) {
  const f = r.fidelity || {};
  const cards = [
    ['MACs', ratio(r.ratios.macs), `${compact(r.original.macs)} → ${compact(r.pruned.macs)}`],
    ['Parameters', ratio(r.ratios.params), `${compact(r.original.params)} → ${compact(r.pruned.params)}`],
    ['File size', ratio(r.ratios.size), `${bytes(r.original.size_bytes)} → ${bytes(r.pruned.size_bytes)}`],
    ['Speed-up', ratio(r.ratios.latency_speedup), 'batch 1, first provider'],
  ];
  const t = r.target || {};
  if (typeof t.latency_ms_target === 'number') {
    // A latency target: what was asked beside what the pruning search measured.
    cards.push(['Latency', `${t.latency_ms_measured.toFixed(2)} ms`,
      `target ${t.latency_ms_target.toFixed(2)} ms, was ${t.latency_ms_original.toFixed(2)} ms`]);
  }
  if (r.original.accuracy !== null && r.original.accuracy !== undefined) {
    cards.push(['Accuracy', pct(r.pruned.accuracy), `was ${pct(r.original.accuracy)}`]);
  }
  if (f.top1_agreement !== null && f.top1_agreement !== undefined) {
    cards.push(['Agreement', pct(f.top1_agreement), 'top-1 with the original']);
  } else if (f.cosine !== undefined) {
    cards.push(['Output cosine', f.cosine.toFixed(4), 'similarity to the original']);
  }
  return h('ul', { class: 'cards' }, cards.map(([label, value, sub]) => h('li', { class: 'card' },
    h('span', { class: 'card-label' }, label),
    h('span', { class: 'card-value' }, value),
    h('span', { class: 'card-sub' }, sub))));
}

// Warnings say the result may not be what was asked for: shown above every number.
function warningsPanel(r) {
  const warnings = warningsOf(r);
  if (!warnings.length) return null;
  const critical = warnings.some((w) => w.severity === 'critical');
  return h('div', { class: `panel warnings${critical ? ' critical' : ''}`, id: 'report-warnings', role: 'alert' },
    h('h3', null, warnings.length === 1 ? 'Warning' : `${warnings.length} warnings`),
    h('ul', null, warnings.map((w) => h('li', { class: `severity-${w.severity || 'warning'}`, 'data-code': w.code },
      w.severity === 'critical' ? h('strong', null, 'Critical: ') : null,
      w.message || w.code, ' ', w.code ? h('code', { class: 'muted' }, w.code) : null))));
}

function notes(r) {
  if (!r.notes?.length) return null;
  return h('div', { class: 'panel note' }, h('h3', null, 'Notes'), h('ul', null, r.notes.map((n) => h('li', null, n))));
}

function compareTable(r) {
  const o = r.original;
  const p = r.pruned;
  const f = r.fidelity || {};
  const rows = [
    ['Parameters', int(o.params), int(p.params), change(o.params, p.params)],
    ['MACs', int(o.macs), int(p.macs), change(o.macs, p.macs)],
    ['Size', bytes(o.size_bytes), bytes(p.size_bytes), change(o.size_bytes, p.size_bytes)],
    ['Accuracy', pct(o.accuracy), pct(p.accuracy),
      o.accuracy !== null && o.accuracy !== undefined && p.accuracy !== null && p.accuracy !== undefined
        ? points(p.accuracy - o.accuracy) : '—'],
  ];
  for (const [provider, batches] of Object.entries(p.latency_ms || {})) {
    for (const [batch, lp] of Object.entries(batches)) {
      const lo = o.latency_ms?.[provider]?.[batch];
      const name = `${provider.replace('ExecutionProvider', '')}, batch ${batch}`;
      for (const q of ['p50', 'p90', 'p99']) {
        rows.push([`Latency ${q} (${name})`, ms(lo?.[q]), ms(lp[q]), change(lo?.[q], lp[q])]);
      }
    }
  }
  // Agreement compares the pruned model with the original, so only the pruned column has it.
  rows.push(
    ['Top-1 agreement with the original', '—', pct(f.top1_agreement), ''],
    ['Output cosine similarity', '—', f.cosine === undefined ? '—' : f.cosine.toFixed(5), ''],
    ['Max. absolute output difference', '—', f.max_abs_diff === undefined ? '—' : f.max_abs_diff.toPrecision(3), ''],
  );
  return h('div', { class: 'table-wrap' },
    h('table', { class: 'compare', id: 'compare-table' },
      h('thead', null, h('tr', null, ['Metric', 'Original', 'Pruned', 'Change'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', null,
        rows.map(([k, ...v]) => h('tr', null, h('th', { scope: 'row' }, k), v.map((x) => h('td', null, x)))))));
}

function historyPanel(r) {
  const hist = r.history || [];
  const t = r.target || {};
  if (!hist.length) return null;
  // The measure with the most points: every pruning step records its agreement, while
  // accuracy may exist for the final model only.
  const count = (k) => hist.filter((pt) => typeof pt[k] === 'number').length;
  const metric = ['accuracy', 'agreement'].filter((k) => count(k) > 0)
    .sort((a, b) => count(b) - count(a))[0];
  if (!metric) {
    const points = hist.map((pt) => ({ x: pt.step, y: pt.macs, label: `Step ${pt.step}` }));
    return h('div', { class: 'panel' }, lineChart(points, {
      name: 'history', caption: 'MACs over the pruning steps (no data to measure accuracy)',
      xLabel: 'Step', yLabel: 'MACs', xFmt: (v) => String(v), xIntegers: true, yFmt: compactTick, yMin: 0,
    }));
  }
  // Accuracy-budget probes come in search order, not by strength: draw them by MACs.
  const points = hist.filter((pt) => typeof pt[metric] === 'number')
    .map((pt) => ({ x: pt.macs, y: pt[metric], label: `Step ${pt.step}` }))
    .sort((a, b) => b.x - a.x);
  // Start the curve at the original model: its accuracy, or full agreement with itself.
  const start = metric === 'accuracy' ? r.original.accuracy : 1;
  if (typeof start === 'number' && !hist.some((pt) => pt.step === 0)) {
    points.unshift({ x: r.original.macs, y: start, label: 'Original' });
  }
  const label = metric === 'accuracy' ? 'Accuracy' : 'Agreement with the original';
  return h('div', { class: 'panel' }, lineChart(points, {
    name: 'history',
    caption: typeof t.max_accuracy_drop === 'number'
      ? `${label} against MACs: accuracy-budget probes and the final model`
      : `${label} against MACs over the pruning steps`,
    xLabel: 'MACs', yLabel: label, xFmt: compactTick, yMin: 0, yMax: 1,
    yFmt: (v, step) => pct(v, decimalsOf(step * 100)),
  }));
}

// As many decimals as a tick spacing needs: 0.5 needs one, 0.25 two, 5 none.
function decimalsOf(step) {
  const text = String(Number(step.toPrecision(6)));
  return Math.min(3, text.includes('.') ? text.split('.')[1].length : 0);
}

function hasLatency(r) {
  return Object.keys(r.pruned?.latency_ms || {}).length > 0;
}

function artifactsPanel(job, items) {
  const message = h('p', { class: 'message', role: 'status' });
  const rows = items.map((a) => {
    const button = h('button', { type: 'button', class: 'primary', 'data-artifact': a.name,
      'aria-label': `Download ${a.name} (${bytes(a.size_bytes)})` }, 'Download');
    button.addEventListener('click', async () => {
      button.disabled = true;
      message.textContent = `Downloading ${a.name}…`;
      try {
        await download(`/jobs/${encodeURIComponent(job.id)}/artifacts/${encodeURIComponent(a.name)}`, a.name);
        message.textContent = `Downloaded ${a.name}.`;
      } catch (err) {
        message.textContent = `Could not download ${a.name}: ${err.message}`;
      } finally {
        button.disabled = false;
      }
    });
    return h('tr', null,
      h('th', { scope: 'row' }, h('code', null, a.name)),
      h('td', { 'data-label': 'Size' }, bytes(a.size_bytes)),
      h('td', { 'data-label': 'SHA-256', class: 'hash' }, h('code', { title: a.sha256 }, a.sha256)),
      h('td', null, button));
  });
  return h('div', { class: 'panel', id: 'artifacts' },
    h('h3', null, 'Artifacts'),
    items.length ? h('div', { class: 'table-wrap' }, h('table', { class: 'artifacts' },
      h('thead', null, h('tr', null, ['File', 'Size', 'SHA-256', ''].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', null, rows))) : h('p', { class: 'muted' }, 'No artifacts.'),
    message);
}

function environmentPanel(r) {
  const e = r.environment || {};
  const dl = h('dl', { class: 'spec' });
  const rows = [['Device', e.device], ['Providers', (e.providers || []).join(', ')], ['CPU', e.cpu],
    ['Threads', e.threads], ['torch', e.torch], ['torch-pruning', e.torch_pruning],
    ['onnx', e.onnx], ['onnxruntime', e.onnxruntime]];
  for (const [k, v] of rows) if (v !== null && v !== undefined && v !== '') append(dl, h('dt', null, k), h('dd', null, String(v)));
  return h('details', { class: 'panel' }, h('summary', null, 'Measured on'), dl);
}
