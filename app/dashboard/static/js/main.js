// The shell: hash routing (#/jobs, #/jobs/<id>, #/compare, #/models, #/datasets,
// #/submit, #/login), sign-in state and clean-up of the previous view (its streams and
// timers) on every route change.

import { forgetModels, session, setUnauthorizedHandler } from './api.js';
import { h, replace } from './dom.js';
import { renderCompare } from './views/compare.js';
import { renderDataset, renderDatasets } from './views/datasets.js';
import { renderJob } from './views/job.js';
import { renderJobs } from './views/jobs.js';
import { renderLogin } from './views/login.js';
import { renderModel, renderModels } from './views/models.js';
import { renderSubmit } from './views/submit.js';

const ROUTES = [
  [/^#\/jobs\/([^/?]+)$/, renderJob, 'jobs'],
  [/^#\/jobs(?:\?(.*))?$/, renderJobs, 'jobs'],
  [/^#\/compare(?:\?(.*))?$/, renderCompare, 'jobs'],
  [/^#\/models\/([^/?]+)$/, renderModel, 'models'],
  [/^#\/models$/, renderModels, 'models'],
  [/^#\/datasets\/([^/?]+)$/, renderDataset, 'datasets'],
  [/^#\/datasets$/, renderDatasets, 'datasets'],
  [/^#\/submit(?:\?(.*))?$/, renderSubmit, 'submit'],
];

const main = document.getElementById('main');
const nav = document.getElementById('nav');
let current = null;
let notice = null;

function route() {
  current?.abort();
  current = new AbortController();
  const hash = window.location.hash || '#/jobs';
  if (!session.key) {
    nav.hidden = true;
    document.title = 'Secateurs · sign in';
    renderLogin(main, { signal: current.signal, notice: takeNotice(), next: hash === '#/login' ? '#/jobs' : hash });
    return;
  }
  if (hash === '#/login') { window.location.hash = '#/jobs'; return; }
  nav.hidden = false;
  const match = ROUTES.map(([re, view, tab]) => [hash.match(re), view, tab]).find(([m]) => m);
  for (const a of nav.querySelectorAll('[data-nav]')) {
    if (match && a.dataset.nav === match[2]) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (!match) {
    replace(main, h('section', { class: 'panel' }, h('h1', null, 'Page not found'),
      h('p', null, h('a', { href: '#/jobs' }, 'Back to the jobs'))));
    return;
  }
  const [m, view] = match;
  view(main, { signal: current.signal, params: m.slice(1).map((v) => (v ? decodeURIComponent(v) : v)) });
}

function takeNotice() {
  const n = notice;
  notice = null;
  return n;
}

function signOut(message) {
  session.signOut();
  forgetModels();
  notice = message || null;
  if (window.location.hash === '#/login') route();
  else window.location.hash = '#/login';
}

setUnauthorizedHandler(() => signOut('Your API key was refused (401). Please sign in again.'));
document.getElementById('sign-out').addEventListener('click', () => signOut('Signed out.'));
window.addEventListener('hashchange', () => { route(); main.focus({ preventScroll: true }); });
route();
