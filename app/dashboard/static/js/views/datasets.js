// Datasets: the tenant's uploads, and one dataset's facts, the jobs that used it, delete.

import { api } from '../api.js';
import { h, replace } from '../dom.js';
import { bytes, date, int } from '../format.js';
import { errorPanel, idWithCopy } from './common.js';
import { deleteControl, facts, jobsUsing, listInto, uploadFacts, uploadPanel } from './assets.js';

function labels(d) {
  return d.labeled ? `${d.num_classes ?? '?'} classes` : 'unlabeled';
}

export function renderDatasets(root, { signal }) {
  document.title = 'Secateurs · datasets';
  const body = h('div', { class: 'list-body', 'aria-busy': 'true' }, h('p', { class: 'muted' }, 'Loading datasets…'));
  replace(root, h('section', null,
    h('div', { class: 'page-head' }, h('h1', null, 'Datasets')),
    uploadPanel({
      kind: 'dataset', path: '/datasets', accept: '.npz,.zip', signal,
      help: '.npz with arrays x (and y labels), or a .zip of class folders of images.',
      fields: [['name', 'Name (optional)', 'Shown in lists; the file name otherwise.']],
      onUploaded: (d) => { window.location.hash = `#/datasets/${encodeURIComponent(d.id)}`; },
    }),
    body));
  listInto(body, '/datasets', {
    signal,
    empty: [h('p', null, 'No datasets yet.'), h('p', null, 'Upload one above: jobs without data prune data-free.')],
    columns: ['Name', 'Format', 'Samples', 'Sample shape', 'Labels', 'Size', 'Uploaded', 'Id'],
    row: (d) => h('tr', { 'data-dataset': d.id },
      h('th', { scope: 'row', 'data-label': 'Name' }, h('a', { href: `#/datasets/${encodeURIComponent(d.id)}` }, d.name)),
      h('td', { 'data-label': 'Format' }, d.format),
      h('td', { 'data-label': 'Samples' }, int(d.num_samples)),
      h('td', { 'data-label': 'Sample shape' }, (d.sample_shape || []).join('×')),
      h('td', { 'data-label': 'Labels' }, labels(d)),
      h('td', { 'data-label': 'Size' }, bytes(d.size_bytes)),
      h('td', { 'data-label': 'Uploaded' }, date(d.created_at)),
      h('td', { 'data-label': 'Id' }, idWithCopy(d.id, null, 'dataset id'))),
  });
}

export function renderDataset(root, { signal, params }) {
  const id = params[0];
  document.title = `Secateurs · ${id}`;
  replace(root, h('p', { class: 'muted' }, 'Loading dataset…'));
  showDataset(root, id, signal);
}

async function showDataset(root, id, signal) {
  let dataset;
  try {
    dataset = await api(`/datasets/${encodeURIComponent(id)}`, { signal });
  } catch (err) {
    if (!signal.aborted) {
      replace(root, backLink(), errorPanel(err.status === 404 ? 'No such dataset' : 'Could not load the dataset', err));
    }
    return;
  }
  if (signal.aborted) return;
  const message = h('div', { id: 'delete-message' });
  const jobs = h('div');
  replace(root,
    backLink(),
    h('div', { class: 'page-head' },
      h('div', null, h('h1', null, dataset.name), h('p', { class: 'muted' }, `${dataset.format} dataset`)),
      h('div', { class: 'actions' },
        deleteControl({ path: `/datasets/${encodeURIComponent(dataset.id)}`, what: 'dataset', messageEl: message,
          onDeleted: () => { window.location.hash = '#/datasets'; } }))),
    message,
    h('section', { class: 'panel', 'aria-labelledby': 'dataset-h' }, h('h2', { id: 'dataset-h' }, 'Dataset'),
      facts([
        ...uploadFacts(dataset, 'dataset'),
        ['Format', dataset.format],
        ['Samples', int(dataset.num_samples)],
        ['Sample shape', (dataset.sample_shape || []).join(' × ')],
        ['Labels', labels(dataset)],
      ], 'dataset-facts')),
    h('section', { class: 'panel', 'aria-labelledby': 'used-h' }, h('h2', { id: 'used-h' }, 'Jobs that used it'), jobs));
  jobsUsing(jobs, 'dataset_id', dataset.id, signal);
}

function backLink() {
  return h('p', { class: 'crumbs' }, h('a', { href: '#/datasets' }, '← All datasets'));
}
