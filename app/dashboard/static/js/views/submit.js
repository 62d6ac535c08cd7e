// Submit a job: upload a model (and optionally a dataset), choose how to prune, start it,
// and land on the new job's page.

import { api, upload as uploadForm } from '../api.js';
import { h, replace } from '../dom.js';
import { bytes, compact } from '../format.js';
import { progressBar, setProgress } from './common.js';

const METHODS = {
  l2: 'Filter L2 norm: removes the channels with the smallest weights. A good default.',
  l1: 'Filter L1 norm: like L2, slightly more tolerant of a few large weights.',
  bn_scale: 'Network slimming: ranks channels by their BatchNorm scale. Best with sparsity training.',
  taylor: 'First-order Taylor: estimates each channel\'s effect on the loss. Needs a dataset.',
  fpgm: 'Geometric median: removes channels that others can stand in for.',
  lamp: 'LAMP: layer-adaptive magnitude scores; balances how much each layer loses.',
  random: 'Random channels: a baseline to compare the others against.',
  unstructured_l1: 'Zeroes single weights: smaller when compressed, but no speed-up.',
};

const TARGETS = [
  ['macs_reduction', 'MACs', 'Share of the multiply-accumulates to remove: the usual proxy for speed.'],
  ['params_reduction', 'Parameters', 'Share of the weights to remove: drives the file size.'],
  ['channel_ratio', 'Channels', 'Share of the channels to remove from every prunable layer.'],
];

// Uploads already done in this page view, so that a retry after a later error does not
// upload the same file again.
const uploaded = new Map();

function uuid() {
  // crypto.randomUUID exists only in secure contexts; getRandomValues works everywhere.
  const b = crypto.getRandomValues(new Uint8Array(16));
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
}

function field(id, label, input, help, cls = 'field') {
  if (help) input.setAttribute('aria-describedby', `${id}-help`);
  return h('div', { class: cls },
    h('label', { for: id }, label), input,
    help ? h('p', { class: 'help', id: `${id}-help` }, help) : null);
}

function num(id, value, { min, max, step = 'any' }) {
  return h('input', { id, name: id, type: 'number', value, min, max, step, inputmode: 'decimal', required: true });
}

export function renderSubmit(root, { signal }) {
  document.title = 'Secateurs · new job';
  const el = {
    modelFile: h('input', { id: 'model-file', name: 'model-file', type: 'file', required: true,
      accept: '.onnx,.pt2,.safetensors,.pt,.pth,.bin' }),
    arch: h('input', { id: 'arch', name: 'arch', type: 'text', placeholder: 'torchvision:resnet18', autocomplete: 'off' }),
    inputShape: h('input', { id: 'input-shape', name: 'input-shape', type: 'text', placeholder: '1,3,224,224',
      pattern: '\\s*\\d+(\\s*,\\s*\\d+)*\\s*', autocomplete: 'off' }),
    datasetFile: h('input', { id: 'dataset-file', name: 'dataset-file', type: 'file', accept: '.npz,.zip' }),
    modelPick: h('select', { id: 'model-existing', name: 'model-existing' },
      h('option', { value: '' }, 'Upload a new model file')),
    datasetPick: h('select', { id: 'dataset-existing', name: 'dataset-existing' },
      h('option', { value: '' }, 'None, or upload a new file')),
    method: h('select', { id: 'method', name: 'method' },
      Object.keys(METHODS).map((m) => h('option', { value: m, selected: m === 'l2' }, m))),
    amount: num('amount', 50, { min: 1, max: 99, step: 1 }),
    steps: num('steps', 5, { min: 1, max: 100, step: 1 }),
    scope: h('select', { id: 'scope', name: 'scope' },
      h('option', { value: 'global' }, 'global'), h('option', { value: 'layerwise' }, 'layerwise')),
    finetune: h('input', { id: 'finetune', name: 'finetune', type: 'checkbox', checked: true }),
    epochs: num('epochs', 5, { min: 0, max: 1000, step: 1 }),
    lr: num('lr', 0.01, { min: 0.000001, max: 10 }),
    batch: num('batch-size', 64, { min: 1, max: 4096, step: 1 }),
    optimizer: h('select', { id: 'optimizer', name: 'optimizer' },
      h('option', { value: 'sgd' }, 'SGD'), h('option', { value: 'adamw' }, 'AdamW')),
    distill: h('input', { id: 'distill', name: 'distill', type: 'checkbox', checked: true }),
    budget: h('input', { id: 'budget', name: 'budget', type: 'checkbox' }),
    maxDrop: num('max-drop', 1, { min: 0, max: 100, step: 0.1 }),
    iterations: num('iterations', 50, { min: 1, max: 10000, step: 1 }),
  };
  const methodHelp = h('p', { class: 'help', id: 'method-help' }, METHODS.l2);
  el.method.setAttribute('aria-describedby', 'method-help');
  el.method.addEventListener('change', () => { methodHelp.textContent = METHODS[el.method.value]; });

  const targetHelp = h('p', { class: 'help', id: 'target-help' }, TARGETS[0][2]);
  const radios = TARGETS.map(([value, label, help], i) => {
    const input = h('input', { type: 'radio', name: 'target-kind', id: `target-${value}`, value, checked: i === 0 });
    input.addEventListener('change', () => { targetHelp.textContent = help; });
    return h('label', { class: 'radio', for: `target-${value}` }, input, ` ${label}`);
  });

  const ftFields = h('div', { class: 'grid' },
    field('epochs', 'Epochs', el.epochs),
    field('lr', 'Learning rate', el.lr),
    field('batch-size', 'Batch size', el.batch),
    field('optimizer', 'Optimizer', el.optimizer),
    h('label', { class: 'check', for: 'distill' }, el.distill,
      ' Distil from the original model (works without labels)'));
  const syncFt = () => {
    for (const x of ftFields.querySelectorAll('input,select')) x.disabled = !el.finetune.checked;
  };
  el.finetune.addEventListener('change', syncFt);
  const syncBudget = () => { el.maxDrop.disabled = !el.budget.checked; };
  el.budget.addEventListener('change', syncBudget);

  const status = h('p', { class: 'message', role: 'status', id: 'submit-status' });
  const bar = progressBar(0, 'Upload progress');
  bar.id = 'upload-progress';
  bar.hidden = true;
  const progress = { status, bar };
  const errorBox = h('div', { id: 'submit-error', role: 'alert' });
  const button = h('button', { type: 'submit', class: 'primary', id: 'submit-job' }, 'Upload and start');

  const form = h('form', { id: 'submit-form', class: 'submit', novalidate: true },
    h('h1', null, 'New pruning job'),
    h('fieldset', { class: 'panel' }, h('legend', null, 'Model'),
      field('model-existing', 'Uploaded before', el.modelPick,
        'Reuse a model you uploaded earlier, or upload a new one below.', 'field pick'),
      field('model-file', 'Model file', el.modelFile,
        'ONNX, torch.export .pt2, or weights (safetensors / state_dict) together with an architecture. Pickled modules are refused.'),
      h('div', { class: 'grid' },
        field('arch', 'Architecture (optional)', el.arch, 'Only for weight files, e.g. torchvision:resnet18 or timm:resnet50.'),
        field('input-shape', 'Input shape (optional)', el.inputShape,
          'Needed when a dimension other than the batch is dynamic, e.g. 1,3,224,224.'))),
    h('fieldset', { class: 'panel' }, h('legend', null, 'Data (optional)'),
      field('dataset-existing', 'Uploaded before', el.datasetPick,
        'Reuse a dataset you uploaded earlier, or upload a new one below.', 'field pick'),
      field('dataset-file', 'Dataset file', el.datasetFile,
        '.npz with arrays x (and y labels), or a .zip of class folders of images. Without data the job prunes data-free and skips fine-tuning and accuracy.')),
    h('fieldset', { class: 'panel' }, h('legend', null, 'Pruning'),
      h('div', { class: 'grid' },
        h('div', { class: 'field' }, h('label', { for: 'method' }, 'Method'), el.method, methodHelp),
        h('fieldset', { class: 'field radios', 'aria-describedby': 'target-help' },
          h('legend', null, 'Target'), h('div', { class: 'radio-row' }, radios), targetHelp),
        field('amount', 'Amount to remove (%)', el.amount, '50 removes half. 1 to 99.'),
        field('steps', 'Iterative steps', el.steps, 'Prune in this many rounds; more rounds are gentler.'),
        field('scope', 'Scope', el.scope, 'global ranks channels across layers; layerwise cuts each layer evenly.'))),
    h('fieldset', { class: 'panel' }, h('legend', null, 'Recovery'),
      h('label', { class: 'check', for: 'finetune' }, el.finetune, ' Fine-tune after pruning (needs a dataset)'),
      ftFields,
      h('label', { class: 'check', for: 'budget' }, el.budget, ' Accuracy budget: prune as hard as the budget allows'),
      field('max-drop', 'Largest accuracy drop (points)', el.maxDrop, 'Needs a dataset; measured on held-back samples.', 'field short')),
    h('fieldset', { class: 'panel' }, h('legend', null, 'Benchmark'),
      field('iterations', 'Timed runs per model', el.iterations, 'onnxruntime runs for the p50/p90/p99 latencies.', 'field short')),
    errorBox, status, bar,
    h('div', { class: 'actions' }, button, h('a', { class: 'button', href: '#/jobs' }, 'Back to jobs')));
  syncFt();
  syncBudget();
  const syncPicks = () => {
    for (const x of [el.modelFile, el.arch, el.inputShape]) x.disabled = Boolean(el.modelPick.value);
    el.datasetFile.disabled = Boolean(el.datasetPick.value);
    const uploading = (!el.modelPick.value && el.modelFile.files.length)
      || (!el.datasetPick.value && el.datasetFile.files.length);
    button.textContent = el.modelPick.value && !uploading ? 'Start job' : 'Upload and start';
  };
  el.modelFile.addEventListener('change', () => syncPicks());
  el.datasetFile.addEventListener('change', () => syncPicks());
  for (const pick of [el.modelPick, el.datasetPick]) pick.closest('.field').hidden = true;
  el.modelPick.addEventListener('change', syncPicks);
  el.datasetPick.addEventListener('change', syncPicks);
  fillPicks(el, signal);

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    replace(errorBox);
    const invalid = validate(form, el);
    if (invalid) { showError(errorBox, invalid.message); invalid.input.focus(); return; }
    button.disabled = true;
    try {
      const job = await submit(el, progress, signal);
      window.location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      if (signal.aborted) return;
      status.textContent = '';
      bar.hidden = true;
      showError(errorBox, err.message, err.code, err.stage);
      errorBox.scrollIntoView({ block: 'nearest' });
    } finally {
      button.disabled = false;
    }
  });
  replace(root, form);
}

function showError(box, message, code, stage) {
  replace(box, h('div', { class: 'panel error' },
    h('h2', null, stage ? `The ${stage} was refused` : 'Please check the form'),
    h('p', null, message),
    code ? h('p', { class: 'code' }, 'Code: ', h('code', null, code)) : null));
}

// The tenant's earlier uploads, newest first; the pickers stay hidden when there are none.
async function fillPicks(el, signal) {
  const lists = await Promise.all([
    api('/models?limit=200', { signal }).catch(() => null),
    api('/datasets?limit=200', { signal }).catch(() => null),
  ]);
  if (signal.aborted) return;
  const [models, datasets] = lists.map((page) => page?.items || []);
  for (const m of models) {
    const shape = (m.input_shape || []).join('×');
    el.modelPick.append(h('option', { value: m.id },
      `${m.name} · ${m.format} · ${shape} · ${compact(m.stats?.macs)} MACs · ${bytes(m.size_bytes)}`));
  }
  for (const d of datasets) {
    const labels = d.labeled ? `${d.num_classes ?? '?'} classes` : 'unlabeled';
    el.datasetPick.append(h('option', { value: d.id },
      `${d.name} · ${d.num_samples} samples of ${(d.sample_shape || []).join('×')} · ${labels}`));
  }
  el.modelPick.closest('.field').hidden = models.length === 0;
  el.datasetPick.closest('.field').hidden = datasets.length === 0;
}

function validate(form, el) {
  if (!el.modelPick.value && !el.modelFile.files.length) {
    return { input: el.modelFile, message: 'Choose a model file to upload, or one uploaded before.' };
  }
  for (const input of form.querySelectorAll('input:not([type=file]):not(:disabled), select')) {
    if (!input.checkValidity()) {
      const label = form.querySelector(`label[for="${input.id}"]`)?.textContent || input.name;
      return { input, message: `${label}: ${input.validationMessage}` };
    }
  }
  return null;
}

async function upload(kind, file, extra, { status, bar }, signal) {
  const key = [kind, file.name, file.size, file.lastModified, JSON.stringify(extra)].join('|');
  if (uploaded.has(key)) return uploaded.get(key);
  status.textContent = `Uploading the ${kind} ${file.name} (${bytes(file.size)})…`;
  setProgress(bar, 0);
  bar.hidden = false;
  const form = new FormData();
  form.append('file', file, file.name);
  for (const [k, v] of Object.entries(extra)) if (v) form.append(k, v);
  const onProgress = (f) => {
    setProgress(bar, f);
    // The server inspects the model once it has it all: say so rather than sit at 100%.
    if (f >= 1) status.textContent = `Checking the ${kind} ${file.name}…`;
  };
  try {
    const res = await uploadForm(`/${kind === 'model' ? 'models' : 'datasets'}`, form, { onProgress, signal });
    uploaded.set(key, res);
    return res;
  } catch (err) {
    err.stage = `${kind} upload`;
    throw err;
  } finally {
    bar.hidden = true;
  }
}

function jobBody(el, model, dataset) {
  const kind = document.querySelector('input[name="target-kind"]:checked')?.value || 'macs_reduction';
  const body = {
    model_id: model.id,
    prune: {
      method: el.method.value,
      target: { [kind]: Number(el.amount.value) / 100 },
      scope: el.scope.value,
      iterative_steps: Number(el.steps.value),
    },
    finetune: el.finetune.checked && dataset ? {
      epochs: Number(el.epochs.value), lr: Number(el.lr.value), batch_size: Number(el.batch.value),
      optimizer: el.optimizer.value, distill: el.distill.checked,
    } : null,
    accuracy_budget: el.budget.checked ? { max_drop: Number(el.maxDrop.value) / 100 } : null,
    benchmark: { iterations: Number(el.iterations.value) },
  };
  if (dataset) body.dataset_id = dataset.id;
  return body;
}

async function submit(el, progress, signal) {
  const model = el.modelPick.value ? { id: el.modelPick.value } : await upload('model',
    el.modelFile.files[0],
    { arch: el.arch.value.trim(), input_shape: el.inputShape.value.replace(/\s+/g, '') }, progress, signal);
  let dataset = null;
  if (el.datasetPick.value) dataset = { id: el.datasetPick.value };
  else if (el.datasetFile.files.length) {
    dataset = await upload('dataset', el.datasetFile.files[0], {}, progress, signal);
  }
  progress.status.textContent = 'Starting the job…';
  try {
    return await api('/jobs', { method: 'POST', json: jobBody(el, model, dataset), headers: { 'Idempotency-Key': uuid() }, signal });
  } catch (err) {
    err.stage = 'job';
    throw err;
  }
}
