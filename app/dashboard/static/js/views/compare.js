// Jobs side by side: their headline results, the settings that differ between them
// (highlighted) and each job's before/after numbers.

import { api, jobReport, modelInfo } from '../api.js';
import { h, replace } from '../dom.js';
import { bytes, compact, ms, pct, points, ratio, target } from '../format.js';
import { resultSummary } from '../summary.js';
import { errorPanel, statusBadge } from './common.js';

export function renderCompare(root, { signal, params }) {
  const ids = new URLSearchParams(params[0] || '').get('ids')?.split(',').filter(Boolean) || [];
  document.title = 'Secateurs · compare jobs';
  if (ids.length < 2) {
    replace(root, h('section', { class: 'panel' }, h('h1', null, 'Compare jobs'),
      h('p', null, 'Tick two or more jobs in the ', h('a', { href: '#/jobs' }, 'job list'), ' to compare them.')));
    return;
  }
  replace(root, h('p', { class: 'muted' }, 'Loading the jobs…'));
  show(root, ids, signal);
}

async function show(root, ids, signal) {
  let entries;
  try {
    entries = await Promise.all(ids.map((id) => loadEntry(id, signal)));
  } catch (err) {
    if (!signal.aborted) replace(root, backLink(), errorPanel('Could not load the jobs', err));
    return;
  }
  if (signal.aborted) return;
  replace(root,
    backLink(),
    h('h1', null, `Compare ${entries.length} jobs`),
    h('section', { class: 'panel', 'aria-labelledby': 'cmp-head-h' },
      h('h2', { id: 'cmp-head-h' }, 'Results'), headlineTable(entries)),
    h('section', { class: 'panel', 'aria-labelledby': 'cmp-spec-h' },
      h('h2', { id: 'cmp-spec-h' }, 'Settings'), specTable(entries)),
    h('section', { 'aria-labelledby': 'cmp-ba-h' },
      h('h2', { id: 'cmp-ba-h' }, 'Before and after'),
      h('div', { class: 'side-by-side' }, entries.map(beforeAfter))));
}

function backLink() {
  return h('p', { class: 'crumbs' }, h('a', { href: '#/jobs' }, '← All jobs'));
}

// A job, its model's name and (once succeeded) its report; a missing report is no error.
async function loadEntry(id, signal) {
  const job = await api(`/jobs/${encodeURIComponent(id)}`, { signal });
  const [model, report] = await Promise.all([
    modelInfo(job.model_id),
    job.status === 'succeeded' ? jobReport(id, { signal }).catch(() => null) : null,
  ]);
  return { job, model, report, summary: report ? resultSummary(report) : null };
}

function jobHeaders(entries) {
  return h('thead', null, h('tr', null, h('th', { scope: 'col' }, ''),
    entries.map(({ job }) => h('th', { scope: 'col' },
      job.name ? h('span', { class: 'job-name', title: job.name }, job.name) : null,
      h('a', { href: `#/jobs/${encodeURIComponent(job.id)}`, class: 'job-id', title: job.id }, job.id)))));
}

function table(id, entries, rows) {
  return h('div', { class: 'table-wrap' },
    h('table', { class: 'compare side', id }, jobHeaders(entries),
      h('tbody', null, rows.map(([label, cells, cls]) => h('tr', { class: cls || null },
        h('th', { scope: 'row' }, label), cells.map((c) => h('td', null, c)))))));
}

function headlineTable(entries) {
  const s = (fn) => entries.map((e) => (e.summary ? fn(e.summary, e.report) : '—'));
  return table('compare-results', entries, [
    ['Status', entries.map((e) => statusBadge(e.job.status))],
    ['Model', entries.map((e) => e.model?.name || e.job.model_id)],
    ['Target', entries.map((e) => target(e.job.spec))],
    ['MACs cut', s((x) => (x.macsCut === null ? '—' : `−${pct(x.macsCut)}`))],
    ['MACs ratio', s((x, r) => ratio(r.ratios?.macs))],
    ['Parameters ratio', s((x, r) => ratio(r.ratios?.params))],
    ['Speed-up', s((x) => ratio(x.speedup))],
    ['Accuracy change', s((x) => points(x.accuracyChange))],
    ['Top-1 agreement', s((x) => pct(x.agreement))],
    ['Final size', s((x) => `${bytes(x.finalBytes)}${x.int8 ? ' (INT8)' : ''}`)],
  ]);
}

/** A spec flattened to dotted paths: {prune: {method: 'l2'}} -> [['prune.method', 'l2']]. */
export function flatten(value, prefix = '') {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return [[prefix, Array.isArray(value) ? value.join(', ') || '—' : value === null ? 'none' : String(value)]];
  }
  const entries = Object.entries(value);
  if (!entries.length) return [[prefix, '—']];
  return entries.flatMap(([k, v]) => flatten(v, prefix ? `${prefix}.${k}` : k));
}

// Every setting of every job; the rows where the jobs differ come first, highlighted.
function specTable(entries) {
  const flat = entries.map(({ job }) => new Map([
    ['model', job.model_id], ['dataset', job.dataset_id || 'none'], ...flatten(job.spec || {})]));
  const keys = [...new Set(flat.flatMap((m) => [...m.keys()]))];
  const rows = keys.map((k) => {
    const cells = flat.map((m) => (m.has(k) ? m.get(k) : '—'));
    return [k, cells, new Set(cells).size > 1 ? 'diff' : 'same'];
  });
  const differ = rows.filter((r) => r[2] === 'diff');
  const same = rows.filter((r) => r[2] === 'same');
  return h('div', null,
    h('p', { class: 'help' }, differ.length
      ? `${differ.length} setting${differ.length === 1 ? '' : 's'} differ (highlighted); ${same.length} are the same.`
      : 'The jobs have the same settings.'),
    table('compare-spec', entries, differ),
    same.length ? h('details', null, h('summary', null, `Settings they share (${same.length})`),
      table('compare-spec-same', entries, same)) : null);
}

function beforeAfter({ job, report }) {
  const head = h('h3', null, h('code', { title: job.id }, job.id));
  if (!report) {
    return h('div', { class: 'panel' }, head, h('p', { class: 'muted' },
      job.status === 'succeeded' ? 'The report could not be loaded.' : `No report: the job is ${job.status}.`));
  }
  const o = report.original;
  const p = report.pruned;
  const rows = [
    ['Parameters', compact(o.params), compact(p.params)],
    ['MACs', compact(o.macs), compact(p.macs)],
    ['Size', bytes(o.size_bytes), bytes(p.size_bytes)],
    ['Accuracy', pct(o.accuracy), pct(p.accuracy)],
  ];
  const [provider, batches] = Object.entries(p.latency_ms || {})[0] || [];
  if (batches?.['1']) {
    rows.push([`Latency p50 (${provider.replace('ExecutionProvider', '')}, batch 1)`,
      ms(o.latency_ms?.[provider]?.['1']?.p50), ms(batches['1'].p50)]);
  }
  return h('div', { class: 'panel' }, head,
    h('div', { class: 'table-wrap' }, h('table', { class: 'compare' },
      h('thead', null, h('tr', null, ['', 'Original', 'Pruned'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', null, rows.map(([k, ...v]) => h('tr', null, h('th', { scope: 'row' }, k), v.map((x) => h('td', null, x))))))));
}
