// Sign in with an API key: checked against GET /v1/jobs before it is kept.

import { api, session } from '../api.js';
import { h, replace } from '../dom.js';

export function renderLogin(root, { notice, next }) {
  const input = h('input', {
    id: 'api-key', name: 'api-key', type: 'password', autocomplete: 'off', required: true,
    spellcheck: 'false', 'aria-describedby': 'api-key-help',
  });
  const message = h('p', { class: 'message', role: 'alert', id: 'login-message' }, notice || '');
  const button = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const form = h('form', { class: 'panel narrow', id: 'login-form', novalidate: true },
    h('h1', null, 'Sign in'),
    h('label', { for: 'api-key' }, 'API key'),
    input,
    h('p', { class: 'help', id: 'api-key-help' },
      'Your key is kept in this browser tab only (session storage) and sent as a Bearer token.'),
    message,
    button);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const key = input.value.trim();
    if (!key) { message.textContent = 'Enter your API key.'; input.focus(); return; }
    button.disabled = true;
    message.textContent = 'Checking…';
    try {
      await api('/jobs?limit=1', { key });
      session.signIn(key);
      go(next || '#/jobs');
    } catch (err) {
      message.textContent = err.status === 401
        ? 'That API key was refused (401 Unauthorized). Check it and try again.'
        : `Could not sign in: ${err.message}`;
      input.select();
      input.focus();
    } finally {
      button.disabled = false;
    }
  });
  replace(root, form);
  input.focus();
}

function go(hash) {
  // Same hash (a deep link opened before signing in): no hashchange fires, so raise one.
  if (window.location.hash === hash) window.dispatchEvent(new HashChangeEvent('hashchange'));
  else window.location.hash = hash;
}
