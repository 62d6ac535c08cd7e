// Pieces shared by the views: status badges, progress bars, error panels.

import { h } from '../dom.js';
import { pct } from '../format.js';

export const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];
export const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

export function statusBadge(status) {
  return h('span', { class: `badge status-${status}`, 'data-status': status }, status);
}

/** A labelled progress bar; update it with setProgress(). */
export function progressBar(value, label) {
  const fill = h('span', { class: 'fill' });
  const text = h('span', { class: 'pct' });
  const bar = h('span', {
    class: 'progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100,
    'aria-label': label,
  }, h('span', { class: 'track' }, fill), text);
  setProgress(bar, value);
  return bar;
}

export function setProgress(bar, value) {
  const v = Math.max(0, Math.min(1, Number(value) || 0));
  bar.setAttribute('aria-valuenow', String(Math.round(v * 1000) / 10));
  bar.querySelector('.fill').style.width = `${v * 100}%`;
  bar.querySelector('.pct').textContent = pct(v, 0);
}

export function errorPanel(title, err) {
  return h('div', { class: 'panel error', role: 'alert' },
    h('h2', null, title),
    h('p', null, err.message || String(err)),
    err.code ? h('p', { class: 'code' }, 'Code: ', h('code', null, err.code)) : null);
}

/** Copy `text` to the clipboard; the Clipboard API needs a secure context, so fall back. */
async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = h('textarea', { readonly: true, class: 'sr-only' }, text);
  document.body.append(area);
  area.select();
  try { document.execCommand('copy'); } finally { area.remove(); }
}

/** A small button that copies `text` (an id) and says so for a moment. */
export function copyButton(text, what = 'id') {
  const label = `Copy ${what} ${text}`;
  const button = h('button', { type: 'button', class: 'copy', title: label, 'aria-label': label,
    'data-copy': text }, 'Copy');
  button.addEventListener('click', async (ev) => {
    ev.preventDefault();
    ev.stopPropagation();
    try {
      await copyText(text);
      button.textContent = 'Copied';
    } catch {
      button.textContent = 'Copy failed';
    }
    setTimeout(() => { button.textContent = 'Copy'; }, 1500);
  });
  return button;
}

/** An id shown shortened by CSS, the full id on hover, with a copy button beside it. */
export function idWithCopy(id, href, what = 'id') {
  const label = href
    ? h('a', { href, class: 'mono-id', title: id }, id)
    : h('code', { class: 'mono-id', title: id }, id);
  return h('span', { class: 'id-copy' }, label, copyButton(id, what));
}

/** The problem detail of a refused request, as a panel (the server's words and code). */
export function problemPanel(title, err) {
  return errorPanel(title, { message: err.detail || err.message, code: err.code });
}

/** A job's tags, each a link to the list of the jobs with that tag; null when none. */
export function tagLinks(tags) {
  if (!Array.isArray(tags) || !tags.length) return null;
  return h('span', { class: 'job-tags' }, tags.map((t) => h('a', {
    class: 'job-tag', href: `#/jobs?${new URLSearchParams({ tag: t })}`, title: `Jobs tagged ${t}`,
  }, t)));
}

/** Tags typed as a comma- or space-separated list. */
export function parseTags(text) {
  return String(text || '').split(/[\s,]+/).map((t) => t.trim()).filter(Boolean);
}
