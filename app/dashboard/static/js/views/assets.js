// Pieces the model and dataset pages share: the upload panel, the two-step delete that
// shows the server's refusal, the jobs that used an upload, and a facts list.

import { api, listAll, upload } from '../api.js';
import { append, h, replace } from '../dom.js';
import { bytes, date, target } from '../format.js';
import { errorPanel, idWithCopy, problemPanel, progressBar, setProgress, statusBadge } from './common.js';

/** A <dl> of [label, value] rows; rows without a value are left out. */
export function facts(rows, id) {
  const dl = h('dl', { class: 'spec', id });
  for (const [k, v] of rows) {
    if (v === null || v === undefined || v === '') continue;
    append(dl, h('dt', null, k), h('dd', null, v));
  }
  return dl;
}

/** Id, checksum, size and upload time: what every upload has. */
export function uploadFacts(item, what) {
  return [
    ['Id', idWithCopy(item.id, null, `${what} id`)],
    ['Size', bytes(item.size_bytes)],
    ['SHA-256', h('code', { class: 'hash', title: item.sha256 }, item.sha256)],
    ['Uploaded', date(item.created_at, { seconds: true })],
  ];
}

/**
 * "Upload a …" as a collapsible panel. `fields` are extra text inputs [name, label, help];
 * `onUploaded(item)` runs with the server's answer.
 */
export function uploadPanel({ kind, path, accept, help, fields = [], onUploaded, signal }) {
  const file = h('input', { type: 'file', id: `${kind}-upload-file`, name: 'file', accept, required: true,
    'aria-describedby': `${kind}-upload-help` });
  const inputs = fields.map(([name, label, hint]) => [name, label, hint,
    h('input', { type: 'text', id: `${kind}-upload-${name}`, name, autocomplete: 'off' })]);
  const bar = progressBar(0, 'Upload progress');
  bar.hidden = true;
  const message = h('div', { class: 'upload-message', role: 'status' });
  const button = h('button', { type: 'submit', class: 'primary' }, 'Upload');
  const form = h('form', { class: 'upload-form', id: `${kind}-upload`, novalidate: true },
    h('div', { class: 'field' }, h('label', { for: file.id }, 'File'), file,
      h('p', { class: 'help', id: `${kind}-upload-help` }, help)),
    h('div', { class: 'grid' }, inputs.map(([, label, hint, input]) => h('div', { class: 'field' },
      h('label', { for: input.id }, label), input, h('p', { class: 'help' }, hint)))),
    h('div', { class: 'actions' }, button, bar), message);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!file.files.length) { replace(message, h('p', null, 'Choose a file first.')); file.focus(); return; }
    const body = new FormData();
    body.append('file', file.files[0], file.files[0].name);
    for (const [name, , , input] of inputs) if (input.value.trim()) body.append(name, input.value.trim());
    button.disabled = true;
    bar.hidden = false;
    setProgress(bar, 0);
    replace(message, h('p', null, `Uploading ${file.files[0].name}…`));
    try {
      const item = await upload(path, body, { signal, onProgress: (f) => setProgress(bar, f) });
      replace(message, h('p', null, `Uploaded ${item.name}.`));
      form.reset();
      onUploaded(item);
    } catch (err) {
      if (!signal.aborted) replace(message, problemPanel('The upload was refused', err));
    } finally {
      button.disabled = false;
      bar.hidden = true;
    }
  });
  return h('details', { class: 'panel upload' }, h('summary', null, `Upload a ${kind}`), form);
}

/**
 * Delete in two steps (no browser dialog): "Delete", then "Delete for good" or "Keep".
 * A refusal (409 while a job uses it) shows the server's problem detail in `messageEl`.
 */
export function deleteControl({ path, what, messageEl, onDeleted }) {
  const start = h('button', { type: 'button', class: 'danger', id: 'delete-start' }, `Delete ${what}`);
  const really = h('button', { type: 'button', class: 'danger solid', id: 'delete-confirm' }, 'Delete for good');
  const keep = h('button', { type: 'button', id: 'delete-keep' }, 'Keep');
  const confirm = h('span', { class: 'actions confirm', hidden: true },
    h('span', null, `Delete this ${what}? Jobs that used it keep their results.`), really, keep);
  start.addEventListener('click', () => { start.hidden = true; confirm.hidden = false; replace(messageEl); really.focus(); });
  keep.addEventListener('click', () => { start.hidden = false; confirm.hidden = true; start.focus(); });
  really.addEventListener('click', async () => {
    really.disabled = true;
    try {
      await api(path, { method: 'DELETE' });
      onDeleted();
    } catch (err) {
      replace(messageEl, problemPanel(`The ${what} was not deleted`, err));
      start.hidden = false;
      confirm.hidden = true;
    } finally {
      really.disabled = false;
    }
  });
  return h('span', { class: 'actions' }, start, confirm);
}

/** The jobs that used this model or dataset (`field` is model_id or dataset_id). */
export async function jobsUsing(el, field, id, signal) {
  replace(el, h('p', { class: 'muted' }, 'Looking for jobs…'));
  let found;
  try {
    found = await listAll(`/jobs?${new URLSearchParams({ [field]: id })}`, { signal });
  } catch (err) {
    if (!signal.aborted) replace(el, errorPanel('Could not list the jobs', err));
    return;
  }
  if (signal.aborted) return;
  const jobs = found.items;
  if (!jobs.length) {
    replace(el, h('p', { class: 'muted', id: 'jobs-using' }, 'No job has used it yet.'));
    return;
  }
  replace(el, h('div', { class: 'table-wrap' }, h('table', { class: 'plain', id: 'jobs-using' },
    h('thead', null, h('tr', null, ['Job', 'Status', 'Target', 'Created'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', null, jobs.map((j) => h('tr', { 'data-job': j.id },
      h('th', { scope: 'row' },
        j.name ? h('span', { class: 'job-name', title: j.name }, j.name) : null,
        h('a', { href: `#/jobs/${encodeURIComponent(j.id)}`, class: 'job-id', title: j.id }, j.id)),
      h('td', null, statusBadge(j.status)), h('td', null, target(j.spec)), h('td', null, date(j.created_at))))))),
  found.more ? h('p', { class: 'help' }, 'Only the newest 1,000 of them are listed.') : null);
}

/** A paged list's body: the table, or a friendly empty panel. */
export async function listInto(body, path, { signal, empty, columns, row }) {
  let found;
  try {
    found = await listAll(path, { signal, maxPages: 1 });
  } catch (err) {
    if (!signal.aborted) replace(body, errorPanel('Could not load the list', err));
    return;
  }
  if (signal.aborted) return;
  body.setAttribute('aria-busy', 'false');
  if (!found.items.length) { replace(body, h('div', { class: 'panel empty' }, empty)); return; }
  replace(body, h('div', { class: 'table-wrap' }, h('table', { class: 'jobs assets' },
    h('thead', null, h('tr', null, columns.map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', null, found.items.map(row)))),
  found.more ? h('p', { class: 'help' }, 'Showing the newest 200.') : null);
}
