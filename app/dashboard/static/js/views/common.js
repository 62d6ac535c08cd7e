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
