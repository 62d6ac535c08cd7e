// Models: the tenant's uploads, and one model's facts, tensors, prunability report (the
// channel groups, which are protected and why), the jobs that used it, download, delete.

import { api, download, forgetModels } from '../api.js';
import { h, replace } from '../dom.js';
import { bytes, compact, date, elideMiddle, int, pct } from '../format.js';
import { errorPanel, idWithCopy } from './common.js';
import { deleteControl, facts, jobsUsing, listInto, uploadFacts, uploadPanel } from './assets.js';

const POLL_MS = 2000;
const FILE_SUFFIX = { onnx: 'onnx', pt2: 'pt2', safetensors: 'safetensors', state_dict: 'pt' };

export function renderModels(root, { signal }) {
  document.title = 'Secateurs · models';
  const body = h('div', { class: 'list-body', 'aria-busy': 'true' }, h('p', { class: 'muted' }, 'Loading models…'));
  replace(root, h('section', null,
    h('div', { class: 'page-head' }, h('h1', null, 'Models')),
    uploadPanel({
      kind: 'model', path: '/models', accept: '.onnx,.pt2,.safetensors,.pt,.pth,.bin', signal,
      help: 'ONNX, torch.export .pt2, or weights (safetensors / state_dict) with an architecture. Pickled modules are refused.',
      fields: [['name', 'Name (optional)', 'Shown in lists; the file name otherwise.'],
        ['arch', 'Architecture (optional)', 'Only for weight files, e.g. torchvision:resnet18.'],
        ['input_shape', 'Input shape (optional)', 'When a dimension other than the batch is dynamic, e.g. 1,3,224,224.']],
      onUploaded: (m) => { window.location.hash = `#/models/${encodeURIComponent(m.id)}`; },
    }),
    body));
  listInto(body, '/models', {
    signal,
    empty: [h('p', null, 'No models yet.'), h('p', null, 'Upload one above, or with a new job.')],
    columns: ['Name', 'Format', 'Input', 'MACs', 'Parameters', 'Size', 'Uploaded', 'Id'],
    row: (m) => h('tr', { 'data-model': m.id },
      h('th', { scope: 'row', 'data-label': 'Name' }, h('a', { href: `#/models/${encodeURIComponent(m.id)}` }, m.name)),
      h('td', { 'data-label': 'Format' }, m.format),
      h('td', { 'data-label': 'Input' }, (m.input_shape || []).join('×') || '—'),
      h('td', { 'data-label': 'MACs' }, compact(m.stats?.macs)),
      h('td', { 'data-label': 'Parameters' }, compact(m.stats?.params)),
      h('td', { 'data-label': 'Size' }, bytes(m.size_bytes)),
      h('td', { 'data-label': 'Uploaded' }, date(m.created_at)),
      h('td', { 'data-label': 'Id' }, idWithCopy(m.id, null, 'model id'))),
  });
}

export function renderModel(root, { signal, params }) {
  const id = params[0];
  document.title = `Secateurs · ${id}`;
  replace(root, h('p', { class: 'muted' }, 'Loading model…'));
  showModel(root, id, signal);
}

async function showModel(root, id, signal) {
  let model;
  try {
    model = await api(`/models/${encodeURIComponent(id)}`, { signal });
  } catch (err) {
    if (!signal.aborted) {
      replace(root, backLink(), errorPanel(err.status === 404 ? 'No such model' : 'Could not load the model', err));
    }
    return;
  }
  if (signal.aborted) return;
  const message = h('div', { id: 'delete-message' });
  const prunability = h('div', { id: 'prunability', 'aria-live': 'polite' });
  const jobs = h('div');
  replace(root,
    backLink(),
    h('div', { class: 'page-head' },
      h('div', null, h('h1', null, model.name), h('p', { class: 'muted' }, `${model.format} model`)),
      h('div', { class: 'actions' },
        h('a', { class: 'button primary', href: `#/submit?model=${encodeURIComponent(model.id)}` }, 'Prune it'),
        downloadButton(model),
        deleteControl({ path: `/models/${encodeURIComponent(model.id)}`, what: 'model', messageEl: message,
          onDeleted: () => { forgetModels(); window.location.hash = '#/models'; } }))),
    message,
    h('section', { class: 'panel', 'aria-labelledby': 'model-h' }, h('h2', { id: 'model-h' }, 'Model'),
      facts([
        ...uploadFacts(model, 'model'),
        ['Format', model.format],
        ['Architecture', model.arch],
        ['Input shape used', (model.input_shape || []).join(' × ')],
        ['MACs', `${compact(model.stats?.macs)} (${int(model.stats?.macs)})`],
        ['Parameters', `${compact(model.stats?.params)} (${int(model.stats?.params)})`],
      ], 'model-facts'),
      tensorTable('Inputs', model.inputs, 'model-inputs'),
      tensorTable('Outputs', model.outputs, 'model-outputs')),
    h('section', { class: 'panel', 'aria-labelledby': 'prun-h' },
      h('h2', { id: 'prun-h' }, 'Prunability'), prunability),
    h('section', { class: 'panel', 'aria-labelledby': 'used-h' }, h('h2', { id: 'used-h' }, 'Jobs that used it'), jobs));
  pollPrunability(prunability, model.id, signal);
  jobsUsing(jobs, 'model_id', model.id, signal);
}

function backLink() {
  return h('p', { class: 'crumbs' }, h('a', { href: '#/models' }, '← All models'));
}

function downloadButton(model) {
  const button = h('button', { type: 'button', id: 'download-model' }, 'Download');
  button.addEventListener('click', async () => {
    button.disabled = true;
    try {
      await download(`/models/${encodeURIComponent(model.id)}/file`, `${model.id}.${FILE_SUFFIX[model.format] || 'bin'}`);
    } catch (err) {
      button.title = `Could not download: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

function tensorTable(title, tensors, id) {
  const shape = (t) => (t.shape || []).map((d) => (d === null ? '?' : d)).join(' × ');
  return h('div', { class: 'block' }, h('h3', null, title), h('div', { class: 'table-wrap' },
    h('table', { class: 'plain tensors', id },
      h('thead', null, h('tr', null, ['Name', 'Shape', 'Type'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', null, (tensors || []).map((t) => h('tr', null,
        h('th', { scope: 'row' }, h('code', null, t.name)), h('td', null, shape(t)), h('td', null, t.dtype)))))));
}

// The first request starts the analysis; ask again every few seconds until it settles.
async function pollPrunability(el, id, signal) {
  replace(el, h('p', { class: 'muted' }, 'Asking for the analysis…'));
  while (!signal.aborted) {
    let answer;
    try {
      answer = await api(`/models/${encodeURIComponent(id)}/prunability`, { signal });
    } catch (err) {
      if (!signal.aborted) replace(el, errorPanel('Could not get the prunability report', err));
      return;
    }
    if (signal.aborted) return;
    el.dataset.status = answer.status;
    if (answer.status === 'ready') { replace(el, prunabilityReport(answer.prunability)); return; }
    if (answer.status === 'failed') {
      replace(el, errorPanel('The analysis failed', { message: answer.error?.message || 'No reason was given.', code: answer.error?.code }));
      return;
    }
    replace(el, h('p', { class: 'analyzing' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }),
      'Analyzing the model’s channel groups… (seconds for most models, at most a few minutes)'));
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

function prunabilityReport(p) {
  const groups = p.groups || [];
  return h('div', null,
    h('ul', { class: 'cards' },
      card('Prunable groups', int(p.prunable_groups), `of ${int(groups.length)} channel groups`),
      card('Protected groups', int(p.protected_groups), 'keep all their channels'),
      card('Largest MACs cut', p.max_macs_reduction === null ? '—' : `−${pct(p.max_macs_reduction)}`,
        p.max_macs_reduction === null ? 'the analysis ran out of time' : 'every prunable group cut to 10%'),
      card('Analysis', `${p.analysis_s.toFixed(1)} s`, 'in the sandbox')),
    p.notes?.length ? h('div', { class: 'panel note' }, h('ul', null, p.notes.map((n) => h('li', null, n)))) : null,
    h('details', { open: groups.length <= 30 }, h('summary', null, `Channel groups (${groups.length})`),
      h('div', { class: 'table-wrap' }, h('table', { class: 'plain groups', id: 'prunability-groups' },
        h('thead', null, h('tr', null, ['Layer', 'Channels', 'Prunable', 'Why not'].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', null, groups.map((g) => h('tr', { class: g.prunable ? null : 'protected' },
          h('th', { scope: 'row', title: g.layer }, h('code', null, elideMiddle(g.layer, 48))),
          h('td', null, int(g.channels)),
          h('td', null, g.prunable ? 'yes' : 'no'),
          h('td', { class: 'why' }, g.prunable ? '' : (g.why || g.reason || '')))))))));
}

function card(label, value, sub) {
  return h('li', { class: 'card' }, h('span', { class: 'card-label' }, label),
    h('span', { class: 'card-value' }, value), h('span', { class: 'card-sub' }, sub));
}
