// The jobs list: newest first, filter by status, cursor paging, live progress of the
// jobs still running (SSE for a few, polling for the rest: browsers allow only six
// connections per host and each stream holds one).

import { api, modelInfo } from '../api.js';
import { h, replace } from '../dom.js';
import { date, stageName, target } from '../format.js';
import { followJob } from '../sse.js';
import { errorPanel, progressBar, setProgress, STATUSES, statusBadge, TERMINAL } from './common.js';

const PAGE = 20;
const MAX_STREAMS = 3;
const POLL_MS = 3000;

export function renderJobs(root, { signal, params }) {
  const query = new URLSearchParams(params[0] || '');
  const status = STATUSES.includes(query.get('status')) ? query.get('status') : '';
  // The cursors of the pages walked so far, so "Newer" can go back without server help.
  const cursors = (query.get('page') || '').split(',').filter(Boolean).map(decodeURIComponent);
  document.title = 'Secateurs · jobs';

  const filter = h('select', { id: 'status-filter', name: 'status' },
    h('option', { value: '' }, 'All statuses'),
    STATUSES.map((st) => h('option', { value: st, selected: st === status }, st)));
  filter.addEventListener('change', () => { window.location.hash = listHash(filter.value, []); });

  const body = h('div', { class: 'list-body', 'aria-live': 'polite', 'aria-busy': 'true' }, h('p', { class: 'muted' }, 'Loading jobs…'));
  replace(root, h('section', null,
    h('div', { class: 'page-head' },
      h('h1', null, 'Jobs'),
      h('div', { class: 'tools' },
        h('label', { for: 'status-filter' }, 'Status'), filter,
        h('button', { type: 'button', id: 'refresh-jobs',
          onclick: () => window.dispatchEvent(new HashChangeEvent('hashchange')) }, 'Refresh'),
        h('a', { class: 'button primary', href: '#/submit' }, 'New job'))),
    body));
  load(body, status, cursors, signal);
}

function listHash(status, cursors) {
  const q = new URLSearchParams();
  if (status) q.set('status', status);
  if (cursors.length) q.set('page', cursors.map(encodeURIComponent).join(','));
  const qs = q.toString();
  return qs ? `#/jobs?${qs}` : '#/jobs';
}

async function load(body, status, cursors, signal) {
  const q = new URLSearchParams({ limit: String(PAGE) });
  if (status) q.set('status', status);
  if (cursors.length) q.set('cursor', cursors[cursors.length - 1]);
  let page;
  try {
    page = await api(`/jobs?${q}`, { signal });
  } catch (err) {
    if (!signal.aborted) replace(body, errorPanel('Could not load the jobs', err));
    return;
  }
  if (signal.aborted) return;
  body.setAttribute('aria-busy', 'false');
  const jobs = [...page.items].sort((a, b) => (b.created_at || '').localeCompare(a.created_at || ''));
  if (!jobs.length) {
    replace(body, h('div', { class: 'panel empty' },
      h('p', null, status ? `No ${status} jobs.` : 'No jobs yet.'),
      h('p', null, h('a', { href: '#/submit' }, 'Prune a model'), ' to start one.')));
    return;
  }
  const rows = jobs.map((job) => jobRow(job));
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' },
    cursors.length ? h('a', { class: 'button', href: listHash(status, cursors.slice(0, -1)) }, '← Newer') : null,
    h('span', { class: 'muted' }, `Page ${cursors.length + 1}`),
    page.next_cursor ? h('a', { class: 'button', href: listHash(status, [...cursors, page.next_cursor]) }, 'Older →') : null);
  replace(body,
    h('div', { class: 'table-wrap' },
      h('table', { class: 'jobs' },
        h('caption', { class: 'sr-only' }, 'Jobs, newest first'),
        h('thead', null, h('tr', null,
          ['Job', 'Model', 'Status', 'Stage', 'Progress', 'Target', 'Created', 'Finished']
            .map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', null, rows.map((r) => r.tr)))),
    pager);
  watch(rows.filter((r) => !TERMINAL.has(r.job.status)), signal);
}

function jobRow(job) {
  const model = h('td', { 'data-label': 'Model' }, job.model_name || h('span', { class: 'muted' }, job.model_id));
  if (!job.model_name) {
    modelInfo(job.model_id).then((m) => { if (m?.name) replace(model, m.name); });
  }
  const status = h('td', { 'data-label': 'Status' }, statusBadge(job.status));
  const stage = h('td', { 'data-label': 'Stage' }, stageLabel(job));
  const bar = progressBar(job.progress, `Progress of ${job.id}`);
  const finished = h('td', { 'data-label': 'Finished' }, date(job.finished_at));
  const row = { status: job.status, stage: job.stage };
  const tr = h('tr', { 'data-job': job.id, 'data-status': job.status },
    h('th', { scope: 'row', 'data-label': 'Job' },
      h('a', { href: `#/jobs/${encodeURIComponent(job.id)}`, class: 'job-id', title: job.id }, job.id)),
    model, status, stage,
    h('td', { 'data-label': 'Progress' }, bar),
    h('td', { 'data-label': 'Target' }, target(job.spec)),
    h('td', { 'data-label': 'Created', title: date(job.created_at, { seconds: true }) }, date(job.created_at)),
    finished);
  const update = (data) => {
    if (data.status) row.status = data.status;
    if ('stage' in data) row.stage = data.stage;
    if (data.status && data.status !== tr.dataset.status) {
      tr.dataset.status = data.status;
      replace(status, statusBadge(data.status));
    }
    replace(stage, stageLabel(row));
    if (typeof data.progress === 'number') setProgress(bar, data.progress);
    if (data.finished_at) replace(finished, date(data.finished_at));
  };
  return { job, tr, update };
}

// Where a job is, or where it stopped; a finished job has no stage left to show.
function stageLabel({ status, stage }) {
  return status === 'succeeded' ? '—' : stageName(stage);
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
