// Submit a job: upload a model (and optionally a dataset), choose how to prune, start it,
// and land on the new job's page. Every field of the job spec is here with its default
// and a line of help; "clone & re-run" (#/submit?from=<job id>) fills the form from an
// earlier job (its name and tags too), and a model's page links here with ?model=<id>.

import { api, upload as uploadForm } from '../api.js';
import { h, replace } from '../dom.js';
import { bytes, compact } from '../format.js';
import { parseTags, progressBar, setProgress } from './common.js';

const METHODS = {
  l2: 'Filter L2 norm: removes the channels with the smallest weights. A good default.',
  l1: 'Filter L1 norm: like L2, slightly more tolerant of a few large weights.',
  bn_scale: 'Network slimming: ranks channels by their BatchNorm scale. Best with sparsity training.',
  taylor: 'First-order Taylor: estimates each channel\'s effect on the loss. Needs a dataset.',
  fpgm: 'Geometric median: removes channels that others can stand in for.',
  lamp: 'LAMP: layer-adaptive magnitude scores; balances how much each layer loses.',
  random: 'Random channels: a baseline to compare the others against.',
  unstructured_l1: 'Zeroes single weights: smaller when compressed, but no speed-up (no latency target, no sensitivity scope).',
};

const TARGETS = [
  ['macs_reduction', 'MACs', 'Share of the multiply-accumulates to remove: the usual proxy for speed.'],
  ['params_reduction', 'Parameters', 'Share of the weights to remove: drives the file size.'],
  ['channel_ratio', 'Channels', 'Share of the channels to remove from every prunable layer.'],
  ['latency_reduction', 'Latency', 'Share of the measured time to remove: onnxruntime at batch 1 on the worker, timed layer by layer.'],
];

const SCOPES = {
  global: 'global ranks channels across layers (default).',
  layerwise: 'layerwise cuts each layer evenly.',
  sensitivity: 'sensitivity scans every layer group first and prunes robust layers more than sensitive ones.',
};

// contract/spec.py's defaults: the form starts from them, and a clone overlays its spec.
const DEFAULT_SPEC = {
  prune: { method: 'l2', target: { macs_reduction: 0.5 }, scope: 'global', iterative_steps: 5,
    round_to: null, ignored_layers: [], max_layer_ratio: 0.9 },
  regularize: null,
  finetune: { epochs: 5, lr: 0.01, batch_size: 64, optimizer: 'sgd', distill: true },
  accuracy_budget: null,
  export: { opset: 17, dynamic_batch: true },
  benchmark: { providers: ['auto'], batch_sizes: [1], warmup: 10, iterations: 50 },
  quantize: { mode: 'none', calibration: 'minmax', samples: 128, per_channel: true, fallback: 'auto', exclude: [] },
  webhook_url: null,
};
const REGULARIZE = { kind: 'l1_bn', strength: 1e-4, epochs: 3 };
const BUDGET = { max_drop: 0.01, probes: 6 };

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

function num(id, value, { min, max, step = 'any', required = true }) {
  return h('input', { id, name: id, type: 'number', value, min, max, step, inputmode: 'decimal', required });
}

function text(id, placeholder, pattern) {
  return h('input', { id, name: id, type: 'text', placeholder, pattern, autocomplete: 'off' });
}

function select(id, options) {
  return h('select', { id, name: id }, Object.entries(options).map(([v, label]) => h('option', { value: v }, label)));
}

function check(id, checked = false) {
  return h('input', { id, name: id, type: 'checkbox', checked });
}

function checkLabel(input, label) {
  return h('label', { class: 'check', for: input.id }, input, ` ${label}`);
}

const LIST = '\\s*[^,\\s]+(\\s*,\\s*[^,\\s]+)*\\s*';
const INTS = '\\s*\\d+(\\s*,\\s*\\d+)*\\s*';

function inputs() {
  return {
    modelFile: h('input', { id: 'model-file', name: 'model-file', type: 'file', required: true,
      accept: '.onnx,.pt2,.safetensors,.pt,.pth,.bin' }),
    arch: text('arch', 'torchvision:resnet18'),
    inputShape: text('input-shape', '1,3,224,224', INTS),
    datasetFile: h('input', { id: 'dataset-file', name: 'dataset-file', type: 'file', accept: '.npz,.zip' }),
    modelPick: h('select', { id: 'model-existing', name: 'model-existing' },
      h('option', { value: '' }, 'Upload a new model file')),
    datasetPick: h('select', { id: 'dataset-existing', name: 'dataset-existing' },
      h('option', { value: '' }, 'None, or upload a new file')),
    method: select('method', Object.fromEntries(Object.keys(METHODS).map((m) => [m, m]))),
    amount: num('amount', 50, { min: 1, max: 99, step: 1 }),
    steps: num('steps', 5, { min: 1, max: 100, step: 1 }),
    scope: select('scope', Object.fromEntries(Object.keys(SCOPES).map((m) => [m, m]))),
    roundTo: num('round-to', '', { min: 1, max: 512, step: 1, required: false }),
    maxLayerRatio: num('max-layer-ratio', 90, { min: 1, max: 100, step: 1 }),
    ignored: text('ignored-layers', 'classifier, features.0', LIST),
    regularize: check('regularize'),
    regKind: select('reg-kind', { l1_bn: 'L1 on BatchNorm scales (l1_bn)', group_l2: 'Group L2 on channel groups (group_l2)' }),
    regStrength: num('reg-strength', 0.0001, { min: 0.000001, max: 1 }),
    regEpochs: num('reg-epochs', 3, { min: 1, max: 1000, step: 1 }),
    finetune: check('finetune', true),
    epochs: num('epochs', 5, { min: 0, max: 1000, step: 1 }),
    lr: num('lr', 0.01, { min: 0.000001, max: 10 }),
    batch: num('batch-size', 64, { min: 1, max: 4096, step: 1 }),
    optimizer: select('optimizer', { sgd: 'SGD', adamw: 'AdamW' }),
    distill: check('distill', true),
    budget: check('budget'),
    maxDrop: num('max-drop', 1, { min: 0, max: 100, step: 0.1 }),
    probes: num('probes', 6, { min: 2, max: 20, step: 1 }),
    quantize: select('quantize', { none: 'none: ship the pruned float model', int8: 'int8: also quantize to INT8' }),
    calibration: select('calibration', { minmax: 'minmax', entropy: 'entropy', percentile: 'percentile' }),
    qSamples: num('q-samples', 128, { min: 1, max: 4096, step: 1 }),
    perChannel: check('per-channel', true),
    fallback: select('fallback', { auto: 'auto', none: 'none' }),
    exclude: text('q-exclude', '/layer1/layer1.0/conv1/Conv', LIST),
    opset: num('opset', 17, { min: 13, max: 23, step: 1 }),
    dynamicBatch: check('dynamic-batch', true),
    providers: select('providers', { auto: 'auto: the worker\'s best', cpu: 'cpu', cuda: 'cuda', 'cpu,cuda': 'cpu and cuda' }),
    batchSizes: text('batch-sizes', '1', INTS),
    warmup: num('warmup', 10, { min: 0, max: 1000, step: 1 }),
    iterations: num('iterations', 50, { min: 1, max: 10000, step: 1 }),
    jobName: h('input', { id: 'job-name-input', name: 'name', type: 'text', maxlength: 100,
      placeholder: 'resnet18, half the MACs', autocomplete: 'off' }),
    tags: text('job-tags-input', 'baseline, resnet'),
    webhook: h('input', { id: 'webhook', name: 'webhook', type: 'url', placeholder: 'https://example.com/hooks/secateurs', autocomplete: 'off' }),
  };
}

export function renderSubmit(root, { signal, params = [] }) {
  document.title = 'Secateurs · new job';
  const query = new URLSearchParams(params[0] || '');
  const el = inputs();
  const helps = dynamicHelps(el);
  const status = h('p', { class: 'message', role: 'status', id: 'submit-status' });
  const bar = progressBar(0, 'Upload progress');
  bar.id = 'upload-progress';
  bar.hidden = true;
  const progress = { status, bar };
  const errorBox = h('div', { id: 'submit-error', role: 'alert' });
  const cloneNote = h('div', { id: 'clone-note' });
  const button = h('button', { type: 'submit', class: 'primary', id: 'submit-job' }, 'Upload and start');

  const form = h('form', { id: 'submit-form', class: 'submit', novalidate: true },
    h('h1', null, 'New pruning job'),
    cloneNote,
    nameSection(el), modelSection(el), dataSection(el), pruningSection(el, helps), recoverySection(el),
    quantizeSection(el), benchmarkSection(el), notifySection(el),
    errorBox, status, bar,
    h('div', { class: 'actions' }, button, h('a', { class: 'button', href: '#/jobs' }, 'Back to jobs')));
  replace(root, form);  // first: applySpec and syncForm find the radios and help lines by id
  const sync = () => syncForm(el, button);
  for (const x of form.querySelectorAll('input, select')) x.addEventListener('change', sync);
  for (const pick of [el.modelPick, el.datasetPick]) pick.closest('.field').hidden = true;
  applySpec(el, DEFAULT_SPEC);
  sync();
  const picks = fillPicks(el, signal);
  if (query.get('from')) cloneFrom(query.get('from'), el, picks, cloneNote, signal).then(sync);
  else if (query.get('model')) picks.then(() => { choose(el.modelPick, query.get('model')); sync(); });

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
}

// The help lines that follow a choice: the method's, the target's, the scope's.
function dynamicHelps(el) {
  const helps = {
    method: h('p', { class: 'help', id: 'method-help' }),
    target: h('p', { class: 'help', id: 'target-help' }),
    scope: h('p', { class: 'help', id: 'scope-help' }),
  };
  el.method.setAttribute('aria-describedby', 'method-help');
  el.scope.setAttribute('aria-describedby', 'scope-help');
  return helps;
}

function nameSection(el) {
  return h('fieldset', { class: 'panel' }, h('legend', null, 'Name and tags (optional)'),
    h('div', { class: 'grid' },
      field('job-name-input', 'Name', el.jobName, 'A short name for the job list, up to 100 characters. Default: none.'),
      field('job-tags-input', 'Tags', el.tags, 'Comma-separated labels to find the job by, up to 10: letters, digits and _ . : / = + -. Default: none.')));
}

function modelSection(el) {
  return h('fieldset', { class: 'panel' }, h('legend', null, 'Model'),
    field('model-existing', 'Uploaded before', el.modelPick,
      'Reuse a model you uploaded earlier, or upload a new one below.', 'field pick'),
    field('model-file', 'Model file', el.modelFile,
      'ONNX, torch.export .pt2, or weights (safetensors / state_dict) together with an architecture. Pickled modules are refused.'),
    h('div', { class: 'grid' },
      field('arch', 'Architecture (optional)', el.arch, 'Only for weight files, e.g. torchvision:resnet18 or timm:resnet50.'),
      field('input-shape', 'Input shape (optional)', el.inputShape,
        'Needed when a dimension other than the batch is dynamic, e.g. 1,3,224,224.')));
}

function dataSection(el) {
  return h('fieldset', { class: 'panel' }, h('legend', null, 'Data (optional)'),
    field('dataset-existing', 'Uploaded before', el.datasetPick,
      'Reuse a dataset you uploaded earlier, or upload a new one below.', 'field pick'),
    field('dataset-file', 'Dataset file', el.datasetFile,
      '.npz with arrays x (and y labels), or a .zip of class folders of images. Without data the job prunes data-free and skips fine-tuning and accuracy.'));
}

function pruningSection(el, helps) {
  const radios = TARGETS.map(([value, label]) => {
    const input = h('input', { type: 'radio', name: 'target-kind', id: `target-${value}`, value });
    return h('label', { class: 'radio', for: `target-${value}` }, input, ` ${label}`);
  });
  return h('fieldset', { class: 'panel' }, h('legend', null, 'Pruning'),
    h('div', { class: 'grid' },
      h('div', { class: 'field' }, h('label', { for: 'method' }, 'Method'), el.method, helps.method),
      h('fieldset', { class: 'field radios', 'aria-describedby': 'target-help' },
        h('legend', null, 'Target'), h('div', { class: 'radio-row' }, radios), helps.target),
      field('amount', 'Amount to remove (%)', el.amount, '1 to 99; 50 (the default) removes half.'),
      field('steps', 'Iterative steps', el.steps, 'Prune in this many rounds; more rounds are gentler. Default 5.'),
      h('div', { class: 'field' }, h('label', { for: 'scope' }, 'Scope'), el.scope, helps.scope)),
    h('details', { class: 'more' }, h('summary', null, 'More pruning options'),
      h('div', { class: 'grid' },
        field('round-to', 'Round channels to', el.roundTo, 'Keep widths a multiple of this. Empty (the default): hardware-friendly multiples of 8 or 16.'),
        field('max-layer-ratio', 'Largest cut of one layer (%)', el.maxLayerRatio, 'No layer loses more than this share of its channels. Default 90.'),
        field('ignored-layers', 'Layers to keep whole', el.ignored, 'Comma-separated layer names never pruned. Default: none.'))));
}

function recoverySection(el) {
  const group = (...children) => h('div', { class: 'grid sub' }, children);
  return h('fieldset', { class: 'panel' }, h('legend', null, 'Recovery'),
    checkLabel(el.regularize, 'Sparsity training before pruning (needs a dataset)'),
    h('p', { class: 'help' }, 'Pushes unimportant channels towards zero first, so pruning them costs less. Off by default.'),
    group(
      field('reg-kind', 'Penalty', el.regKind, 'l1_bn (default) suits bn_scale; group_l2 any method.'),
      field('reg-strength', 'Strength', el.regStrength, 'Default 0.0001; larger is sparser and riskier.'),
      field('reg-epochs', 'Epochs', el.regEpochs, 'Default 3.')),
    checkLabel(el.finetune, 'Fine-tune after pruning (needs a dataset)'),
    group(
      field('epochs', 'Epochs', el.epochs, 'Default 5; 0 measures without training.'),
      field('lr', 'Learning rate', el.lr, 'Default 0.01.'),
      field('batch-size', 'Batch size', el.batch, 'Default 64.'),
      field('optimizer', 'Optimizer', el.optimizer, 'Default SGD.'),
      h('div', { class: 'field' }, checkLabel(el.distill, 'Distil from the original model'),
        h('p', { class: 'help' }, 'Learns the original\'s outputs, so it works without labels. On by default.'))),
    checkLabel(el.budget, 'Accuracy budget: prune as hard as the budget allows'),
    h('p', { class: 'help' }, 'Searches for the strongest pruning, up to the target, whose measured drop fits. Off by default; needs a dataset.'),
    group(
      field('max-drop', 'Largest accuracy drop (points)', el.maxDrop, 'Default 1 point; agreement with the original when there are no labels.'),
      field('probes', 'Probes', el.probes, 'Pruning strengths tried, each briefly fine-tuned. Default 6, 2 to 20.')));
}

function quantizeSection(el) {
  return h('fieldset', { class: 'panel' }, h('legend', null, 'Quantization'),
    field('quantize', 'Mode', el.quantize, 'int8 quantizes the pruned model (QDQ, int8 weights, uint8 activations); model.onnx is then the INT8 model and model.fp32.onnx the float one. Default none.'),
    h('div', { class: 'grid sub' },
      field('calibration', 'Calibration', el.calibration, 'How activation ranges are found. Default minmax.'),
      field('q-samples', 'Calibration samples', el.qSamples, 'From the dataset\'s training part, or synthetic without data. Default 128.'),
      field('fallback', 'Fallback', el.fallback, 'auto keeps the costliest layers in float until the drop fits the budget (one point without). Default auto.'),
      h('div', { class: 'field' }, checkLabel(el.perChannel, 'One weight scale per output channel'),
        h('p', { class: 'help' }, 'Else one per tensor. On by default.'))),
    field('q-exclude', 'Nodes kept in float', el.exclude, 'Comma-separated ONNX node names as model.fp32.onnx names them. Default: none.'));
}

function benchmarkSection(el) {
  return h('fieldset', { class: 'panel' }, h('legend', null, 'Export and benchmark'),
    h('div', { class: 'grid' },
      field('opset', 'ONNX opset', el.opset, 'Default 17 (13 to 23).'),
      h('div', { class: 'field' }, checkLabel(el.dynamicBatch, 'Dynamic batch dimension'),
        h('p', { class: 'help' }, 'The exported model takes any batch size. On by default.')),
      field('providers', 'Execution providers', el.providers, 'Where the latencies are measured. Default auto.'),
      field('batch-sizes', 'Batch sizes', el.batchSizes, 'Comma-separated, 1 to 1024 each. Default 1.'),
      field('warmup', 'Warm-up runs', el.warmup, 'Untimed runs first. Default 10.'),
      field('iterations', 'Timed runs per model', el.iterations, 'onnxruntime runs for the p50/p90 latencies (p99 from 200 runs). Default 50.')));
}

function notifySection(el) {
  return h('fieldset', { class: 'panel' }, h('legend', null, 'Notification (optional)'),
    field('webhook', 'Webhook URL', el.webhook, 'An https URL that gets a signed POST when the job ends. Default: none.'));
}

// Enable each group's inputs only when its switch is on, and keep the help lines current.
function syncForm(el, button) {
  const kind = checkedTarget();
  const [, , targetHelp] = TARGETS.find(([k]) => k === kind) || TARGETS[0];
  document.getElementById('target-help')?.replaceChildren(targetHelp);
  document.getElementById('method-help')?.replaceChildren(METHODS[el.method.value]);
  document.getElementById('scope-help')?.replaceChildren(SCOPES[el.scope.value]);
  const enable = (on, ...xs) => { for (const x of xs) x.disabled = !on; };
  enable(el.regularize.checked, el.regKind, el.regStrength, el.regEpochs);
  enable(el.finetune.checked, el.epochs, el.lr, el.batch, el.optimizer, el.distill);
  enable(el.budget.checked, el.maxDrop, el.probes);
  enable(el.quantize.value !== 'none', el.calibration, el.qSamples, el.fallback, el.perChannel, el.exclude);
  enable(!el.modelPick.value, el.modelFile, el.arch, el.inputShape);
  enable(!el.datasetPick.value, el.datasetFile);
  const uploading = (!el.modelPick.value && el.modelFile.files.length)
    || (!el.datasetPick.value && el.datasetFile.files.length);
  button.textContent = el.modelPick.value && !uploading ? 'Start job' : 'Upload and start';
}

function checkedTarget() {
  return document.querySelector('input[name="target-kind"]:checked')?.value || 'macs_reduction';
}

/** Set every input from a job spec (missing sections take the defaults). */
function applySpec(el, spec) {
  const p = { ...DEFAULT_SPEC.prune, ...spec.prune };
  const [kind, value] = Object.entries(p.target || {}).find(([, v]) => v !== null && v !== undefined)
    || ['macs_reduction', 0.5];
  el.method.value = p.method;
  for (const r of document.querySelectorAll('input[name="target-kind"]')) r.checked = r.value === kind;
  el.amount.value = Math.round(value * 1000) / 10;
  el.steps.value = p.iterative_steps;
  el.scope.value = p.scope;
  el.roundTo.value = p.round_to ?? '';
  el.maxLayerRatio.value = Math.round(p.max_layer_ratio * 1000) / 10;
  el.ignored.value = (p.ignored_layers || []).join(', ');
  const reg = spec.regularize;
  el.regularize.checked = Boolean(reg);
  setAll(el, { regKind: 'kind', regStrength: 'strength', regEpochs: 'epochs' }, { ...REGULARIZE, ...reg });
  el.finetune.checked = Boolean(spec.finetune);
  const ft = { ...DEFAULT_SPEC.finetune, ...spec.finetune };
  setAll(el, { epochs: 'epochs', lr: 'lr', batch: 'batch_size', optimizer: 'optimizer' }, ft);
  el.distill.checked = ft.distill;
  const budget = { ...BUDGET, ...spec.accuracy_budget };
  el.budget.checked = Boolean(spec.accuracy_budget);
  el.maxDrop.value = Math.round(budget.max_drop * 1000) / 10;
  el.probes.value = budget.probes;
  const q = { ...DEFAULT_SPEC.quantize, ...spec.quantize };
  setAll(el, { quantize: 'mode', calibration: 'calibration', qSamples: 'samples', fallback: 'fallback' }, q);
  el.perChannel.checked = q.per_channel;
  el.exclude.value = (q.exclude || []).join(', ');
  const x = { ...DEFAULT_SPEC.export, ...spec.export };
  el.opset.value = x.opset;
  el.dynamicBatch.checked = x.dynamic_batch;
  const b = { ...DEFAULT_SPEC.benchmark, ...spec.benchmark };
  choose(el.providers, b.providers.join(','));  // an unusual list becomes its own choice
  el.batchSizes.value = b.batch_sizes.join(', ');
  el.warmup.value = b.warmup;
  el.iterations.value = b.iterations;
  el.webhook.value = spec.webhook_url || '';
}

function setAll(el, names, values) {
  for (const [input, key] of Object.entries(names)) el[input].value = values[key];
}

/** Select `value` in `select`, adding it as an option when it is not one (yet). */
function choose(select, value, label = value) {
  if (![...select.options].some((o) => o.value === value)) select.append(h('option', { value }, label));
  select.value = value;
}

const splitList = (s) => s.split(',').map((x) => x.trim()).filter(Boolean);

/** The job spec the form describes: the inverse of applySpec. */
function specOf(el, hasData) {
  const spec = {
    prune: {
      method: el.method.value,
      target: { [checkedTarget()]: Number(el.amount.value) / 100 },
      scope: el.scope.value,
      iterative_steps: Number(el.steps.value),
      round_to: el.roundTo.value === '' ? null : Number(el.roundTo.value),
      ignored_layers: splitList(el.ignored.value),
      max_layer_ratio: Number(el.maxLayerRatio.value) / 100,
    },
    regularize: el.regularize.checked && hasData ? {
      kind: el.regKind.value, strength: Number(el.regStrength.value), epochs: Number(el.regEpochs.value),
    } : null,
    finetune: el.finetune.checked && hasData ? {
      epochs: Number(el.epochs.value), lr: Number(el.lr.value), batch_size: Number(el.batch.value),
      optimizer: el.optimizer.value, distill: el.distill.checked,
    } : null,
    accuracy_budget: el.budget.checked
      ? { max_drop: Number(el.maxDrop.value) / 100, probes: Number(el.probes.value) } : null,
    export: { opset: Number(el.opset.value), dynamic_batch: el.dynamicBatch.checked },
    benchmark: {
      providers: splitList(el.providers.value), batch_sizes: splitList(el.batchSizes.value || '1').map(Number),
      warmup: Number(el.warmup.value), iterations: Number(el.iterations.value),
    },
    quantize: {
      mode: el.quantize.value, calibration: el.calibration.value, samples: Number(el.qSamples.value),
      per_channel: el.perChannel.checked, fallback: el.fallback.value, exclude: splitList(el.exclude.value),
    },
  };
  // Only when given: the field is newer than the rest, and servers refuse unknown fields.
  if (el.webhook.value.trim()) spec.webhook_url = el.webhook.value.trim();
  return spec;
}

// Clone & re-run: the earlier job's spec, model and dataset, ready to change and submit.
async function cloneFrom(id, el, picks, note, signal) {
  let job;
  try {
    job = await api(`/jobs/${encodeURIComponent(id)}`, { signal });
  } catch (err) {
    if (!signal.aborted) showError(note, `Could not load job ${id} to clone: ${err.message}`, err.code);
    return;
  }
  const [models, datasets] = await picks;
  if (signal.aborted) return;
  applySpec(el, job.spec || {});
  el.jobName.value = job.name || '';
  el.tags.value = (job.tags || []).join(', ');
  const missing = [];
  if (models.some((m) => m.id === job.model_id)) choose(el.modelPick, job.model_id);
  else missing.push('its model was deleted: upload one');
  if (job.dataset_id && datasets.some((d) => d.id === job.dataset_id)) choose(el.datasetPick, job.dataset_id);
  else if (job.dataset_id) missing.push('its dataset was deleted');
  replace(note, h('div', { class: 'panel note', role: 'status' },
    h('p', null, 'Filled in from job ', h('a', { href: `#/jobs/${encodeURIComponent(job.id)}` }, h('code', null, job.id)),
      missing.length ? `; ${missing.join(', ')}.` : '. Change what you like and start it.')));
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
  const [models, datasets] = lists.map((page) => page?.items || []);
  if (signal.aborted) return [models, datasets];
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
  return [models, datasets];
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
  if (el.method.value === 'unstructured_l1'
      && (checkedTarget() === 'latency_reduction' || el.scope.value === 'sensitivity')) {
    return { input: el.method, message: 'unstructured_l1 removes no channels: it takes neither a latency target nor the sensitivity scope.' };
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
  const body = { model_id: model.id, ...specOf(el, Boolean(dataset)) };
  if (dataset) body.dataset_id = dataset.id;
  // Only when given, like webhook_url: an older server refuses unknown fields.
  if (el.jobName.value.trim()) body.name = el.jobName.value.trim();
  const tags = parseTags(el.tags.value);
  if (tags.length) body.tags = tags;
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
