// One job: its name and tags (editable), spec, stage timeline, live progress while it runs (SSE), cancel, the error
// when it failed, and the report with charts and downloads when it succeeded.

import { api, modelInfo } from '../api.js';
import { append, h, replace } from '../dom.js';
import { date, duration, plural, stageName, target } from '../format.js';
import { followJob } from '../sse.js';
import {
  errorPanel, parseTags, problemPanel, progressBar, setProgress, statusBadge, tagLinks, TERMINAL,
} from './common.js';
import { renderReport } from './report.js';

// The order of contract.stages.STAGES.
const STAGE_ORDER = ['loading', 'analyzing', 'regularizing', 'pruning', 'finetuning',
  'evaluating', 'exporting', 'quantizing', 'benchmarking'];

export function renderJob(root, { signal, params }) {
  const id = params[0];
  document.title = `Secateurs · ${id}`;
  replace(root, h('p', { class: 'muted' }, 'Loading job…'));
  show(root, id, signal);
}

async function show(root, id, signal) {
  let job;
  try {
    job = await api(`/jobs/${encodeURIComponent(id)}`, { signal });
  } catch (err) {
    if (signal.aborted) return;
    replace(root, h('p', null, h('a', { href: '#/jobs' }, '← All jobs')),
      errorPanel(err.status === 404 ? 'No such job' : 'Could not load the job', err));
    return;
  }
  if (signal.aborted) return;
  const page = new JobPage(root, job, signal);
  page.render();
  if (TERMINAL.has(job.status)) {
    page.showResult();
  } else {
    page.follow();
    // Keep the running stage's "so far" duration ticking between events.
    const tick = setInterval(() => page.tick(), 1000);
    signal.addEventListener('abort', () => clearInterval(tick), { once: true });
  }
}

class JobPage {
  constructor(root, job, signal) {
    this.root = root;
    this.job = job;
    this.signal = signal;
    this.bar = progressBar(job.progress, 'Job progress');
    this.stageEl = h('span', { id: 'current-stage' });
    this.statusEl = h('span', { id: 'job-status' });
    this.timelineEl = h('div', { class: 'timeline-wrap' });
    this.runEl = h('p', { class: 'run muted', id: 'job-run' });
    this.messageEl = h('p', { class: 'message', role: 'status' });
    this.resultEl = h('div', { class: 'result' });
    this.cancelEl = this.cancelButton();
    this.titleEl = h('div', { id: 'job-title' });
    this.editEl = h('div', { id: 'job-edit-box' });
  }

  render() {
    const { job } = this;
    const modelEl = h('span', null, job.model_id);
    modelInfo(job.model_id).then((m) => { if (m?.name) replace(modelEl, m.name); });
    replace(this.root,
      h('p', { class: 'crumbs' }, h('a', { href: '#/jobs' }, '← All jobs')),
      h('div', { class: 'page-head' },
        h('div', null,
          this.titleEl,
          h('p', { class: 'muted' }, 'Model ', modelEl, ' · target ', target(job.spec))),
        h('div', { class: 'actions' },
          h('button', { type: 'button', id: 'edit-job', onclick: () => this.edit(),
            title: 'Change the job\'s name and tags' }, 'Name & tags'),
          h('a', { class: 'button', id: 'clone-job', href: `#/submit?from=${encodeURIComponent(job.id)}`,
            title: 'A new job form filled with this job\'s model, data and settings' }, 'Clone & re-run'),
          this.cancelEl)),
      this.editEl,
      h('section', { class: 'panel live', 'aria-labelledby': 'live-h' },
        h('h2', { id: 'live-h', class: 'sr-only' }, 'Progress'),
        h('div', { class: 'live-row' },
          h('span', null, 'Status ', this.statusEl),
          h('span', null, 'Stage ', this.stageEl),
          this.bar),
        this.runEl,
        this.messageEl,
        this.timelineEl),
      this.resultEl,
      specPanel(job));
    this.showTitle();
    this.update(job);
  }

  /** The name as the heading (the id under it), else the id; the tags below. */
  showTitle() {
    const { job } = this;
    document.title = `Secateurs · ${job.name || job.id}`;
    replace(this.titleEl,
      job.name ? h('h1', { id: 'job-name' }, job.name) : h('h1', null, 'Job ', h('code', null, job.id)),
      job.name ? h('p', { class: 'muted job-id-line' }, 'Job ', h('code', null, job.id)) : null,
      tagLinks(job.tags));
  }

  /** A small form that renames and retags the job (PATCH), in any status. */
  edit() {
    if (this.editEl.firstChild) { replace(this.editEl); return; }
    const name = h('input', { id: 'edit-name', name: 'name', type: 'text', maxlength: 100,
      value: this.job.name || '', autocomplete: 'off', placeholder: 'resnet18, half the MACs' });
    const tags = h('input', { id: 'edit-tags', name: 'tags', type: 'text', autocomplete: 'off',
      value: (this.job.tags || []).join(', '), placeholder: 'baseline, resnet' });
    const error = h('div', { role: 'alert' });
    const save = h('button', { type: 'submit', class: 'primary', id: 'edit-save' }, 'Save');
    const form = h('form', { class: 'panel', id: 'job-edit', novalidate: true },
      h('div', { class: 'grid' },
        h('div', { class: 'field' }, h('label', { for: 'edit-name' }, 'Name'), name,
          h('p', { class: 'help' }, 'Up to 100 characters; empty for none.')),
        h('div', { class: 'field' }, h('label', { for: 'edit-tags' }, 'Tags'), tags,
          h('p', { class: 'help' }, 'Comma-separated, up to 10; letters, digits and _ . : / = + -'))),
      error,
      h('div', { class: 'actions' }, save,
        h('button', { type: 'button', onclick: () => replace(this.editEl) }, 'Cancel')));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      save.disabled = true;
      replace(error);
      try {
        const job = await api(`/jobs/${encodeURIComponent(this.job.id)}`, {
          method: 'PATCH', json: { name: name.value.trim() || null, tags: parseTags(tags.value) } });
        Object.assign(this.job, { name: job.name, tags: job.tags });
        this.showTitle();
        replace(this.editEl);
      } catch (err) {
        replace(error, problemPanel('The change was refused', err));
        save.disabled = false;
      }
    });
    replace(this.editEl, form);
    name.focus();
  }

  /** Reflect the job's status, stage and progress; called on every event. */
  update(data) {
    // Progress is monotone; a stale snapshot (e.g. the cancel answer) must not move it back.
    const progress = Math.max(this.job.progress || 0, data.progress ?? 0);
    Object.assign(this.job, data, { progress });
    const { job } = this;
    replace(this.statusEl, statusBadge(job.status));
    replace(this.stageEl, stageLabel(job));
    setProgress(this.bar, job.progress);
    replace(this.runEl, runFacts(job));
    replace(this.timelineEl, timeline(job));
    this.cancelEl.hidden = TERMINAL.has(job.status);
    if (job.cancel_requested && !TERMINAL.has(job.status)) {
      this.cancelEl.disabled = true;
      this.cancelEl.textContent = 'Cancel requested';
    }
  }

  tick() {
    if (!TERMINAL.has(this.job.status)) replace(this.timelineEl, timeline(this.job));
  }

  cancelButton() {
    const button = h('button', { type: 'button', class: 'danger', id: 'cancel-job' }, 'Cancel job');
    button.addEventListener('click', async () => {
      button.disabled = true;
      this.messageEl.textContent = 'Cancelling…';
      try {
        const job = await api(`/jobs/${encodeURIComponent(this.job.id)}/cancel`, { method: 'POST' });
        this.messageEl.textContent = 'Cancel requested: the job stops at its next checkpoint.';
        if (job && typeof job === 'object') this.update({ ...job, cancel_requested: true });
      } catch (err) {
        // 409: it finished meanwhile; the stream brings its final status.
        this.messageEl.textContent = err.status === 409
          ? 'The job had already finished.' : `Could not cancel: ${err.message}`;
        button.disabled = err.status === 409;
      }
    });
    return button;
  }

  async follow() {
    let { stage, status } = this.job;
    const done = await followJob(this.job.id, ({ data }) => {
      if (!data || typeof data !== 'object') return;
      this.update(data);
      // A new stage or status: fetch the job again for the timeline's and the run's times.
      const moved = (data.stage && data.stage !== stage) || (data.status && data.status !== status);
      stage = data.stage || stage;
      status = data.status || status;
      if (moved) this.reload();
    }, { signal: this.signal });
    if (done && !this.signal.aborted) await this.finish();
  }

  async reload() {
    // Only the newest answer counts: an older one arriving late would show a stale status.
    this.reloads = (this.reloads || 0) + 1;
    const mine = this.reloads;
    try {
      const job = await api(`/jobs/${encodeURIComponent(this.job.id)}`, { signal: this.signal });
      if (mine === this.reloads) this.update(job);
      return job;
    } catch {
      return null;
    }
  }

  async finish() {
    await this.reload();
    this.messageEl.textContent = '';
    this.showResult();
  }

  showResult() {
    if (this.job.status === 'failed') {
      const err = this.job.error || { code: null, message: 'The job failed without a message.' };
      replace(this.resultEl, errorPanel('The job failed', { code: err.code, message: err.message }));
    } else if (this.job.status === 'cancelled') {
      replace(this.resultEl, h('div', { class: 'panel note', id: 'cancelled' },
        h('h2', null, 'Cancelled'),
        h('p', null, this.job.error?.message || 'The job was cancelled before it finished.')));
    } else if (this.job.status === 'succeeded') {
      replace(this.resultEl, h('p', { class: 'muted' }, 'Loading the report…'));
      renderReport(this.resultEl, this.job, this.signal);
    }
  }
}

// A running job's stage; a failed or cancelled one names the stage it stopped in.
function stageLabel(job) {
  if (!TERMINAL.has(job.status)) return stageName(job.stage);
  if (job.status === 'succeeded' || !job.stage) return '—';
  return `${job.status === 'failed' ? 'failed in' : 'stopped in'} ${job.stage}`;
}

// When the job ran, how long, and on which attempt; changes with every status event.
function runFacts(job) {
  const start = job.started_at ? new Date(job.started_at).getTime() : null;
  const end = job.finished_at ? new Date(job.finished_at).getTime() : null;
  return [
    `Created ${date(job.created_at, { seconds: true })}`,
    job.started_at ? ` · started ${date(job.started_at, { seconds: true })}` : '',
    job.finished_at ? ` · finished ${date(job.finished_at, { seconds: true })}` : '',
    start && end ? ` · took ${duration(end - start)}` : '',
    job.attempts > 1 ? ` · attempt ${job.attempts}` : '',
  ].join('');
}

// Stage timeline: one row per stage the job has entered, bar placed on a shared clock.
function timeline(job) {
  const times = job.stage_times || {};
  const now = Date.now();
  const stages = STAGE_ORDER.filter((st) => times[st]).concat(
    Object.keys(times).filter((st) => !STAGE_ORDER.includes(st)));
  if (!stages.length) {
    return h('p', { class: 'muted' }, job.status === 'queued' ? 'Waiting for a worker…' : 'No stage has started yet.');
  }
  const t = (iso) => (iso ? new Date(iso).getTime() : null);
  const failedStage = job.stage || stages[stages.length - 1];
  const spans = stages.map((st) => {
    const start = t(times[st].started_at);
    const running = !times[st].finished_at && !TERMINAL.has(job.status);
    const end = t(times[st].finished_at) ?? (running ? now : t(job.finished_at) ?? now);
    // A failed job's stage is the one it failed in (its end closed that stage's time too).
    const state = running ? 'running' : job.status === 'failed' && st === failedStage ? 'failed' : 'done';
    return { st, start, end, running, state };
  });
  const t0 = Math.min(...spans.map((x) => x.start));
  const total = Math.max(1, Math.max(...spans.map((x) => x.end)) - t0);
  return h('ol', { class: 'timeline', 'aria-label': 'Stages' },
    spans.map(({ st, start, end, running, state }) => h('li', { class: state, 'data-stage': st },
      h('span', { class: 'tl-name' }, stageName(st), state === 'failed' ? h('span', { class: 'tl-failed' }, ' (failed)') : null),
      h('span', { class: 'tl-track', 'aria-hidden': 'true' },
        h('span', { class: 'tl-bar', style: `left:${((start - t0) / total) * 100}%;width:${Math.max(0.6, ((end - start) / total) * 100)}%` })),
      h('span', { class: 'tl-dur' }, running ? `${duration(end - start)} so far` : duration(end - start)))));
}

function quantizeText(q) {
  if (!q || q.mode === 'none') return 'none';
  return `${q.mode}, ${q.calibration} calibration on ${plural(q.samples, 'sample')}, `
    + `${q.per_channel ? 'per channel' : 'per tensor'}, fallback ${q.fallback}`
    + `${q.exclude?.length ? `, ${plural(q.exclude.length, 'node')} kept in float` : ''}`;
}

function specPanel(job) {
  const s = job.spec || {};
  const p = s.prune || {};
  const f = s.finetune;
  const rows = [
    ['Method', p.method],
    ['Target', target(s)],
    ['Scope', p.scope],
    ['Iterative steps', p.iterative_steps],
    ['Round channels to', p.round_to ?? 'automatic'],
    ['Max per-layer ratio', p.max_layer_ratio],
    ['Sparsity training', s.regularize ? `${s.regularize.kind}, strength ${s.regularize.strength}, ${plural(s.regularize.epochs, 'epoch')}` : 'none'],
    ['Fine-tuning', f ? `${plural(f.epochs, 'epoch')}, lr ${f.lr}, batch ${f.batch_size}, ${f.optimizer}${f.distill ? ', distillation' : ''}` : 'none'],
    ['Accuracy budget', s.accuracy_budget ? `max drop ${(s.accuracy_budget.max_drop * 100).toFixed(1)} points, ${plural(s.accuracy_budget.probes ?? 6, 'probe')}` : 'none'],
    ['Quantization', quantizeText(s.quantize)],
    ['Export', s.export ? `opset ${s.export.opset}${s.export.dynamic_batch ? ', dynamic batch' : ''}` : '—'],
    ['Benchmark', s.benchmark ? `${s.benchmark.providers.join(', ')} · batch ${s.benchmark.batch_sizes.join(', ')} · ${s.benchmark.iterations} runs` : '—'],
    ['Dataset', job.dataset_id || 'none (data-free)'],
  ];
  const dl = h('dl', { class: 'spec' });
  for (const [k, v] of rows) append(dl, h('dt', null, k), h('dd', null, v ?? '—'));
  return h('section', { class: 'panel', 'aria-labelledby': 'spec-h' },
    h('h2', { id: 'spec-h' }, 'Specification'),
    dl,
    h('details', null, h('summary', null, 'Full spec (JSON)'),
      h('pre', null, JSON.stringify(s, null, 2))));
}
