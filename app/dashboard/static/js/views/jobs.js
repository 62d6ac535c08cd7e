// The jobs list: newest first, filter by status, tag and name, sorted by the server over
// every job, cursor paging, live progress of the jobs still running (SSE for a few,
// polling for the rest: browsers allow only six connections per host and each stream
// holds one), the result of each succeeded job (the job's own `result`; read from its
// report, once the row scrolls into view, only for jobs that finished without one) and a
// selection to compare.

import { api, jobReport, modelInfo } from '../api.js';
import { h, replace } from '../dom.js';
import { bytes, date, pct, points, ratio, stageName, target } from '../format.js';
import { followJob } from '../sse.js';
import { jobResultSummary, resultSummary } from '../summary.js';
import {
  copyButton, errorPanel, progressBar, setProgress, STATUSES, statusBadge, tagLinks, TERMINAL,
} from './common.js';

const PAGE = 20;
const MAX_STREAMS = 3;
const POLL_MS = 3000;

// The orders offered, each the API's `sort` key (the server sorts every job, not a page).
const SORTS = {
  newest: { label: 'Newest first', api: '-created_at' },
  oldest: { label: 'Oldest first', api: 'created_at' },
  finished: { label: 'Recently finished', api: '-finished_at' },
  name: { label: 'Name', api: 'name' },
  macs: { label: 'Largest MACs cut', api: '-macs_reduction' },
  speedup: { label: 'Fastest speed-up', api: '-speedup' },
  // Agreement (no labels) ranks with accuracy changes: 96% agreement ~ -4 points.
  accuracy: { label: 'Smallest accuracy loss', api: '-accuracy_change' },
  size: { label: 'Smallest file', api: 'size_bytes' },
};

export function renderJobs(root, { signal, params }) {
  const query = new URLSearchParams(params[0] || '');
  const status = STATUSES.includes(query.get('status')) ? query.get('status') : '';
  const sort = SORTS[query.get('sort')] ? query.get('sort') : 'newest';
  const tag = query.get('tag') || '';
  const q = query.get('q') || '';
  // The cursors of the pages walked so far, so "Newer" can go back without server help.
  const cursors = (query.get('page') || '').split(',').filter(Boolean).map(decodeURIComponent);
  const view = { status, sort, tag, q, cursors };
  document.title = 'Secateurs · jobs';

  const filter = h('select', { id: 'status-filter', name: 'status' },
    h('option', { value: '' }, 'All statuses'),
    STATUSES.map((st) => h('option', { value: st, selected: st === status }, st)));
  filter.addEventListener('change', () => {
    window.location.hash = listHash({ ...view, status: filter.value, cursors: [] });
  });
  const sorter = h('select', { id: 'sort-jobs', name: 'sort' },
    Object.entries(SORTS).map(([k, s]) => h('option', { value: k, selected: k === sort }, s.label)));
  // A cursor continues the order it came from: a new order starts at the first page.
  sorter.addEventListener('change', () => { window.location.hash = listHash({ ...view, sort: sorter.value, cursors: [] }); });
  const search = h('input', { id: 'name-filter', name: 'q', type: 'search', value: q,
    placeholder: 'Name', autocomplete: 'off', maxlength: 100 });
  search.addEventListener('change', () => {
    window.location.hash = listHash({ ...view, q: search.value.trim(), cursors: [] });
  });
  const tagBox = h('input', { id: 'tag-filter', name: 'tag', type: 'search', value: tag,
    placeholder: 'Tag', autocomplete: 'off', maxlength: 32 });
  tagBox.addEventListener('change', () => {
    window.location.hash = listHash({ ...view, tag: tagBox.value.trim(), cursors: [] });
  });

  const compare = h('a', { class: 'button', id: 'compare-jobs', href: '#/jobs', 'aria-disabled': 'true' },
    'Compare');
  const body = h('div', { class: 'list-body', 'aria-live': 'polite', 'aria-busy': 'true' }, h('p', { class: 'muted' }, 'Loading jobs…'));
  replace(root, h('section', null,
    h('div', { class: 'page-head' },
      h('h1', null, 'Jobs'),
      h('div', { class: 'tools' },
        h('label', { for: 'status-filter' }, 'Status'), filter,
        h('label', { for: 'sort-jobs' }, 'Sort'), sorter,
        h('label', { for: 'name-filter', class: 'sr-only' }, 'Name contains'), search,
        h('label', { for: 'tag-filter', class: 'sr-only' }, 'Tag'), tagBox,
        h('button', { type: 'button', id: 'refresh-jobs',
          onclick: () => window.dispatchEvent(new HashChangeEvent('hashchange')) }, 'Refresh'),
        compare,
        h('a', { class: 'button primary', href: '#/submit' }, 'New job'))),
    body));
  load(body, view, compare, signal);
}

function listHash({ status = '', sort = 'newest', tag = '', q = '', cursors = [] } = {}) {
  const query = new URLSearchParams();
  if (status) query.set('status', status);
  if (tag) query.set('tag', tag);
  if (q) query.set('q', q);
  if (sort && sort !== 'newest') query.set('sort', sort);
  if (cursors.length) query.set('page', cursors.map(encodeURIComponent).join(','));
  const qs = query.toString();
  return qs ? `#/jobs?${qs}` : '#/jobs';
}

// Jobs ticked for comparison; kept while paging, so jobs of different pages can be compared.
const selected = new Set();
const MAX_COMPARE = 6;

async function load(body, view, compare, signal) {
  const sort = SORTS[view.sort];
  const q = new URLSearchParams({ limit: String(PAGE) });
  if (view.status) q.set('status', view.status);
  if (view.tag) q.set('tag', view.tag);
  if (view.q) q.set('q', view.q);
  if (view.sort !== 'newest') q.set('sort', sort.api);
  if (view.cursors.length) q.set('cursor', view.cursors[view.cursors.length - 1]);
  let page;
  try {
    page = await api(`/jobs?${q}`, { signal });
  } catch (err) {
    if (!signal.aborted) replace(body, errorPanel('Could not load the jobs', err));
    return;
  }
  if (signal.aborted) return;
  if (!page.items.length) {
    body.setAttribute('aria-busy', 'false');
    const narrowed = view.tag || view.q;
    const what = [view.tag && `tagged ${view.tag}`, view.q && `named like “${view.q}”`].filter(Boolean).join(' and ');
    replace(body, h('div', { class: 'panel empty' },
      h('p', null, narrowed ? `No ${view.status ? `${view.status} ` : ''}jobs ${what}.`
        : view.status ? `No ${view.status} jobs.` : 'No jobs yet.'),
      narrowed ? h('p', null, h('a', { href: listHash({ status: view.status, sort: view.sort }) }, 'Show every job'))
        : h('p', null, h('a', { href: '#/submit' }, 'Prune a model'), ' to start one.')));
    return;
  }
  const syncCompare = () => updateCompare(compare);
  const rows = page.items.map((job) => jobRow(job, syncCompare));
  body.setAttribute('aria-busy', 'false');
  replace(body,
    h('div', { class: 'table-wrap' },
      h('table', { class: 'jobs' },
        h('caption', { class: 'sr-only' }, `Jobs, ${sort.label.toLowerCase()}`),
        h('thead', null, h('tr', null,
          h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Compare')),
          ['Job', 'Model', 'Status', 'Target', 'MACs cut', 'Speed-up', 'Accuracy', 'Size', 'Created']
            .map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', null, rows.map((r) => r.tr)))),
    view.sort === 'newest' ? null : h('p', { class: 'help', 'data-sort': view.sort },
      `${sort.label}, across all pages; jobs without the value come last.`),
    pagerOf(view, page.next_cursor));
  syncCompare();
  showResultsInView(rows, signal);
  watch(rows.filter((r) => !TERMINAL.has(r.job.status)), signal);
}

function pagerOf(view, nextCursor) {
  const { cursors } = view;
  return h('nav', { class: 'pager', 'aria-label': 'Pages' },
    cursors.length ? h('a', { class: 'button', href: listHash({ ...view, cursors: cursors.slice(0, -1) }) }, '← Newer') : null,
    h('span', { class: 'muted' }, `Page ${cursors.length + 1}`),
    nextCursor ? h('a', { class: 'button', href: listHash({ ...view, cursors: [...cursors, nextCursor] }) }, 'Older →') : null);
}

function updateCompare(link) {
  const ids = [...selected];
  const ready = ids.length >= 2;
  link.textContent = ids.length ? `Compare (${ids.length})` : 'Compare';
  link.setAttribute('aria-disabled', String(!ready));
  link.classList.toggle('primary', ready);
  link.href = ready ? `#/compare?ids=${ids.map(encodeURIComponent).join(',')}` : '#/jobs';
  link.onclick = ready ? null : (ev) => ev.preventDefault();
  link.title = ready ? '' : 'Tick two or more jobs to compare them';
}

// Succeeded jobs without a `result` (finished before the service kept one): their reports
// are fetched as their rows scroll into view, not for the whole page.
function showResultsInView(rows, signal) {
  const byRow = new Map(rows.map((r) => [r.tr, r]));
  const seen = new IntersectionObserver((entries) => {
    for (const e of entries) {
      if (!e.isIntersecting) continue;
      seen.unobserve(e.target);
      byRow.get(e.target).loadResult(signal);
    }
  }, { rootMargin: '200px' });
  for (const r of rows) if (r.job.status === 'succeeded' && !r.summary) seen.observe(r.tr);
  signal.addEventListener('abort', () => seen.disconnect(), { once: true });
}

function selectBox(job, onChange) {
  const box = h('input', { type: 'checkbox', class: 'pick', 'aria-label': `Compare ${job.id}`,
    checked: selected.has(job.id) });
  box.addEventListener('change', () => {
    if (box.checked && selected.size >= MAX_COMPARE) { box.checked = false; return; }
    if (box.checked) selected.add(job.id); else selected.delete(job.id);
    onChange();
  });
  return box;
}

function jobRow(job, onSelect) {
  const model = h('td', { 'data-label': 'Model' }, job.model_name || h('span', { class: 'muted' }, job.model_id));
  if (!job.model_name) {
    modelInfo(job.model_id).then((m) => { if (m?.name) replace(model, m.name); });
  }
  const status = h('td', { 'data-label': 'Status' });
  const bar = progressBar(job.progress, `Progress of ${job.id}`);
  const result = resultCells();
  const row = { status: job.status, stage: job.stage };
  const tr = h('tr', { 'data-job': job.id, 'data-status': job.status },
    h('td', { class: 'pick-cell', 'data-label': 'Compare' }, selectBox(job, onSelect)),
    h('th', { scope: 'row', 'data-label': 'Job' }, h('span', { class: 'job-cell' },
      job.name ? h('a', { class: 'job-name', href: `#/jobs/${encodeURIComponent(job.id)}`, title: job.name }, job.name) : null,
      h('span', { class: 'id-copy' },
        h('a', { href: `#/jobs/${encodeURIComponent(job.id)}`, class: 'job-id', title: job.id }, job.id),
        copyButton(job.id, 'job id')),
      tagLinks(job.tags))),
    model, status,
    h('td', { 'data-label': 'Target' }, target(job.spec)),
    result.cells,
    h('td', { 'data-label': 'Created', title: date(job.created_at, { seconds: true }) }, date(job.created_at)));
  // One wrapper, so that the phone layout's label column stays beside the badge and note;
  // the progress bar shows only while the job has some way to go.
  const showStatus = () => {
    bar.hidden = TERMINAL.has(row.status);
    replace(status, h('span', { class: 'status-cell' }, statusBadge(row.status), stageNote(row), bar));
  };
  showStatus();
  const out = { job, tr, summary: jobResultSummary(job) };
  if (out.summary) result.show(out.summary);
  out.loadResult = async (signal) => {
    if (row.status !== 'succeeded' || out.summary) return;
    try {
      out.summary = resultSummary(await jobReport(job.id, { signal }));
      result.show(out.summary);
    } catch {
      result.missing();
    }
  };
  out.update = (data) => {
    if (data.status) row.status = data.status;
    if ('stage' in data) row.stage = data.stage;
    if (data.status && data.status !== tr.dataset.status) tr.dataset.status = data.status;
    // A whole job (a refresh, not a stream event) carries its result once it succeeded.
    if ('result' in data && !out.summary) {
      const summary = jobResultSummary(data);
      if (summary) {
        out.summary = summary;
        result.show(summary);
      } else if (row.status === 'succeeded') {
        out.loadResult();
      }
    }
    showStatus();
    if (typeof data.progress === 'number') setProgress(bar, data.progress);
  };
  return out;
}

// Under the badge: where a job is, or where a failed one stopped.
function stageNote({ status, stage }) {
  if (!stage || status === 'succeeded' || status === 'queued') return null;
  const text = status === 'running' ? stageName(stage)
    : `${status === 'failed' ? 'failed' : 'stopped'} at ${stage}`;
  return h('span', { class: 'stage-note' }, text);
}

// The four result columns: filled in from the job's result, blank until then.
function resultCells() {
  const td = (label) => h('td', { 'data-label': label, class: 'num' }, '');
  const cells = { macs: td('MACs cut'), speed: td('Speed-up'), acc: td('Accuracy'), size: td('Size') };
  return {
    cells: Object.values(cells),
    show(s) {
      replace(cells.macs, s.macsCut === null ? '—' : `−${pct(s.macsCut)}`);
      replace(cells.speed, ratio(s.speedup));
      if (s.accuracyChange !== null) {
        replace(cells.acc, h('span', { title: 'Accuracy change, pruned against original' }, points(s.accuracyChange)));
      } else {
        replace(cells.acc, h('span', { title: 'Top-1 agreement with the original (no labels)' },
          s.agreement === null ? '—' : `${pct(s.agreement)} agree`));
      }
      replace(cells.size, bytes(s.finalBytes), s.int8 ? h('span', { class: 'tag' }, 'INT8') : null);
    },
    missing() {
      for (const c of Object.values(cells)) replace(c, h('span', { class: 'muted', title: 'The report could not be loaded' }, '?'));
    },
  };
}

async function watch(rows, signal) {
  const streamed = rows.slice(0, MAX_STREAMS);
  const polled = rows.slice(MAX_STREAMS);
  for (const row of streamed) {
    followJob(row.job.id, ({ data }) => { if (data && typeof data === 'object') row.update(data); }, { signal })
      .then((done) => (done && !signal.aborted ? refresh(row, signal) : null));
  }
  while (polled.length && !signal.aborted) {
    await new Promise((r) => setTimeout(r, POLL_MS));
    for (const row of [...polled]) {
      const job = await refresh(row, signal);
      if (job && TERMINAL.has(job.status)) polled.splice(polled.indexOf(row), 1);
    }
  }
}

async function refresh(row, signal) {
  try {
    const job = await api(`/jobs/${encodeURIComponent(row.job.id)}`, { signal });
    row.update(job);
    return job;
  } catch {
    return null;
  }
}
