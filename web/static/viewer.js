// The hearth viewer page: shows one VM's screen with noVNC.
//
// The page lives at …/viewer/{vmID}#token=<page token>. It keeps the page
// token in sessionStorage (so a reload works) and drops it from the address
// bar. For every connection it POSTs v1/vms/{vmID}/viewer/ticket with the page token as a
// bearer token, opens the ticket's single-use websocket_url itself (to read
// the close code and reason hearth sends) and hands the socket to noVNC.
// What happens after a close is decided by policy.js.
//
// For people and tests: #status says the state and the last reason;
// <html data-viewer-state> is connecting, connected, reconnecting or
// disconnected; <html data-close-code> is the last WebSocket close code;
// window.hearthViewer is the current noVNC RFB object.

import * as policy from './policy.js';

const root = document.documentElement;
const $ = (id) => document.getElementById(id);
const ui = {
  status: $('status'),
  reconnect: $('reconnect'),
  clipToggle: $('clipboard-toggle'),
  clipPanel: $('clipboard'),
  clipText: $('clipboard-text'),
  clipSend: $('clipboard-send'),
  clipNote: $('clipboard-note'),
  screen: $('screen'),
};

const TOKEN_KEY = 'hearth.viewer.token.';

let RFB = null;       // noVNC's RFB class, loaded by main
let vmID = '';
let pageToken = '';
let attempt = 0;      // failures in a row (policy.nextAttempt)
let generation = 0;   // bumps on every connect, so stale answers are dropped
let retryTimer = null;
let current = null;   // the live connection, if any
let viewOnly = false;

function setState(state, text) {
  root.dataset.viewerState = state;
  ui.status.textContent = text;
  updateClipboard();
}

// takeToken returns the page token: from the fragment (then remembered for
// this tab and removed from the address bar and history), else the one
// remembered earlier.
function takeToken(id) {
  const key = TOKEN_KEY + id;
  const fromURL = policy.parseFragment(location.hash);
  if (fromURL !== '') {
    history.replaceState(history.state, '', location.pathname + location.search);
    try {
      sessionStorage.setItem(key, fromURL);
    } catch {
      // Storage disabled: the token lives in memory only, a reload loses it.
    }
    return fromURL;
  }
  try {
    return sessionStorage.getItem(key) || '';
  } catch {
    return '';
  }
}

function clearRetry() {
  if (retryTimer !== null) {
    clearTimeout(retryTimer);
    retryTimer = null;
  }
}

// apply shows a policy decision and acts on it.
function apply(d) {
  clearRetry();
  let text = d.message;
  if (d.action === policy.RETRY) {
    text += ` in ${Math.max(1, Math.round(d.delayMs / 1000))} s…`;
    retryTimer = setTimeout(connect, d.delayMs);
  } else if (!/[.!?]$/.test(text)) {
    text += '.';
  }
  ui.reconnect.textContent = d.action === policy.RETRY ? 'Reconnect now' : 'Reconnect';
  ui.reconnect.hidden = d.action === policy.STOP;
  setState(d.state, text);
}

// fail handles a failure before a socket existed (ticket or setup).
function fail(decision) {
  attempt = policy.nextAttempt(attempt, 0);
  apply(decision);
}

async function readError(res) {
  try {
    const body = await res.json();
    if (body && typeof body.error === 'object' && body.error !== null) {
      return { code: String(body.error.code || ''), message: String(body.error.message || '') };
    }
  } catch {
    // Not JSON: the status alone decides.
  }
  return { code: '', message: '' };
}

async function connect() {
  clearRetry();
  if (current !== null) {
    return;
  }
  const gen = ++generation;
  ui.reconnect.hidden = true;
  if (attempt === 0) {
    setState('connecting', 'Connecting…');
  } else {
    setState('reconnecting', `Reconnecting (attempt ${Math.min(attempt, policy.MAX_ATTEMPTS)} of ${policy.MAX_ATTEMPTS})…`);
  }

  let res;
  try {
    res = await fetch(policy.ticketURL(location.href), {
      method: 'POST',
      headers: { Authorization: `Bearer ${pageToken}` },
      cache: 'no-store',
      credentials: 'same-origin',
      referrerPolicy: 'no-referrer',
    });
  } catch {
    if (gen === generation) {
      fail(policy.decideTicket(0, '', '', attempt + 1));
    }
    return;
  }
  if (gen !== generation) {
    return;
  }
  if (!res.ok) {
    const e = await readError(res);
    if (gen === generation) {
      fail(policy.decideTicket(res.status, e.code, e.message, attempt + 1, Math.random, res.headers.get('Retry-After') || ''));
    }
    return;
  }
  let ticket;
  try {
    ticket = await res.json();
  } catch {
    ticket = null;
  }
  if (gen !== generation) {
    return;
  }
  let url;
  try {
    if (!ticket || typeof ticket.websocket_url !== 'string' || ticket.websocket_url === '') {
      throw new Error('no websocket_url');
    }
    url = policy.websocketURL(ticket.websocket_url, location.href);
  } catch (err) {
    fail({ state: 'disconnected', action: policy.BUTTON, delayMs: null, message: `hearth sent an unusable viewer ticket (${err.message})` });
    return;
  }
  viewOnly = ticket.view_only === true;
  open(url);
}

// open connects noVNC to the ticket's WebSocket.
function open(url) {
  let ws;
  try {
    ws = new WebSocket(url, ['binary']);
  } catch (err) {
    fail({ state: 'disconnected', action: policy.BUTTON, delayMs: null, message: `Cannot open the viewer connection (${err.message})` });
    return;
  }
  ws.binaryType = 'arraybuffer';
  const conn = { ws, rfb: null, closed: null, rfbDone: false, connectedAt: 0, failure: '', done: false };
  current = conn;

  // Registered before noVNC sets its own handlers, so the code and reason
  // are recorded before noVNC reports the disconnect.
  ws.addEventListener('close', (e) => {
    conn.closed = { code: e.code, reason: e.reason };
    setTimeout(() => finish(conn), 0);
  });

  let rfb;
  try {
    rfb = new RFB(ui.screen, ws, { shared: true });
  } catch (err) {
    current = null;
    conn.done = true;
    ws.close();
    fail({ state: 'disconnected', action: policy.BUTTON, delayMs: null, message: `The VNC client failed to start (${err.message})` });
    return;
  }
  conn.rfb = rfb;
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.viewOnly = viewOnly;
  rfb.focusOnClick = true;
  window.hearthViewer = rfb;

  rfb.addEventListener('connect', () => {
    if (conn.done) {
      return;
    }
    conn.connectedAt = Date.now();
    ui.reconnect.hidden = true;
    setState('connected', `Connected to ${vmID}${viewOnly ? ' (view only)' : ''}`);
    // Take the keyboard unless the user is typing elsewhere (the clipboard).
    if (document.activeElement === null || document.activeElement === document.body) {
      rfb.focus({ preventScroll: true });
    }
  });
  rfb.addEventListener('disconnect', () => {
    conn.rfbDone = true;
    // noVNC can give up before the socket has closed (a protocol error);
    // give the close a moment to arrive so its code can be shown.
    setTimeout(() => finish(conn), ws.readyState === WebSocket.CLOSED ? 0 : 1000);
  });
  rfb.addEventListener('securityfailure', (e) => {
    conn.failure = `The guest's VNC server refused the viewer${e.detail.reason ? `: ${e.detail.reason}` : ''}`;
  });
  rfb.addEventListener('credentialsrequired', () => {
    conn.failure = "The guest's VNC server asks for a password, which hearth does not supply";
    rfb.disconnect();
  });
  rfb.addEventListener('clipboard', (e) => {
    ui.clipText.value = e.detail.text;
    ui.clipNote.textContent = 'From the VM.';
  });
}

// finish runs once per connection, after its socket closed or noVNC gave up.
function finish(conn) {
  if (conn.done) {
    return;
  }
  conn.done = true;
  if (current === conn) {
    current = null;
  }
  if (!conn.rfbDone && conn.rfb !== null) {
    conn.rfb.disconnect();
  }
  const code = conn.closed ? conn.closed.code : 1006;
  const reason = conn.closed ? conn.closed.reason : '';
  root.dataset.closeCode = String(code);
  attempt = policy.nextAttempt(attempt, conn.connectedAt ? Date.now() - conn.connectedAt : 0);
  if (conn.failure !== '') {
    apply({ state: 'disconnected', action: policy.BUTTON, delayMs: null, message: conn.failure });
    return;
  }
  apply(policy.decideClose(code, reason, attempt));
}

function connected() {
  return current !== null && current.connectedAt !== 0 && current.rfb !== null;
}

function updateClipboard() {
  const canSend = connected() && !viewOnly;
  ui.clipSend.disabled = !canSend;
  if (connected() && viewOnly) {
    ui.clipNote.textContent = 'View only: text cannot be sent to the VM.';
  }
}

function sendClipboard(text) {
  if (!connected() || viewOnly || text === '') {
    return false;
  }
  current.rfb.clipboardPasteFrom(text);
  return true;
}

function wire() {
  ui.reconnect.addEventListener('click', () => {
    attempt = 0;
    connect();
  });
  ui.clipToggle.addEventListener('click', () => {
    const open = ui.clipPanel.hidden;
    ui.clipPanel.hidden = !open;
    ui.clipToggle.setAttribute('aria-expanded', String(open));
    if (open) {
      ui.clipText.focus();
    } else if (connected()) {
      current.rfb.focus({ preventScroll: true });
    }
  });
  ui.clipSend.addEventListener('click', () => {
    if (sendClipboard(ui.clipText.value)) {
      ui.clipNote.textContent = 'Sent to the VM: paste it there.';
      current.rfb.focus({ preventScroll: true });
    }
  });
  // A paste into the screen (the browser's Paste command while the VM has
  // the focus) goes to the VM's clipboard.
  document.addEventListener('paste', (e) => {
    const a = document.activeElement;
    if (a === null || a.tagName !== 'CANVAS' || !ui.screen.contains(a)) {
      return;
    }
    const text = e.clipboardData ? e.clipboardData.getData('text/plain') : '';
    if (sendClipboard(text)) {
      ui.clipText.value = text;
      ui.clipNote.textContent = 'Pasted into the VM\'s clipboard.';
      e.preventDefault();
    }
  });
}

// A new link pasted into the same tab only changes the fragment, which
// does not reload the page: take its token and connect if not connected.
function onHashChange() {
  if (policy.parseFragment(location.hash) === '') {
    return;
  }
  pageToken = takeToken(vmID);
  if (RFB !== null && current === null) {
    attempt = 0;
    connect();
  }
}

async function main() {
  vmID = policy.vmIDFromPath(location.pathname);
  if (vmID === '') {
    setState('disconnected', 'This address names no VM: ask for a new viewer link.');
    return;
  }
  document.title = `hearth viewer — ${policy.shortID(vmID)}`;
  pageToken = takeToken(vmID);
  window.addEventListener('hashchange', onHashChange);
  try {
    ({ default: RFB } = await import('./novnc/core/rfb.js'));
  } catch (err) {
    console.error('hearth viewer: loading noVNC failed:', err);
    setState('disconnected', 'The VNC client did not load: this hearth may have been built without its viewer assets (make web).');
    return;
  }
  wire();
  if (pageToken === '') {
    setState('disconnected', 'No viewer token: ask for a new viewer link.');
    return;
  }
  connect();
}

main();
