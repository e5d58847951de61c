// The hearth terminal page: xterm.js on a VM's shell through hearth's
// WebSocket bridge. The page token (URL fragment) buys single-use socket
// tokens (POST …/terminal/ticket); every connection replays the shell's
// kept output from its start, so a reconnect brings the screen back. The
// socket protocol is internal/terminal's: binary messages are output and
// input, text messages JSON events (hello, dropped, exit) and controls
// (resize, signal, eof). Reconnects follow the viewer's policy (policy.js).

import * as policy from './policy.js';
import { Terminal } from './xterm/xterm.mjs';
import { FitAddon } from './xterm/addon-fit.mjs';

const root = document.documentElement;
const $ = (id) => document.getElementById(id);
const ui = { status: $('status'), reconnect: $('reconnect'), screen: $('screen') };

const TOKEN_KEY = 'hearth.terminal.token.';
// RESIZE_DEBOUNCE_MS spaces resize messages while a window is dragged,
// well inside the server's control-message rate.
const RESIZE_DEBOUNCE_MS = 100;

const encoder = new TextEncoder();
let vmID = '';
let pageToken = '';
let attempt = 0;      // failures in a row (policy.nextAttempt)
let generation = 0;   // bumps on every connect, so stale answers are dropped
let retryTimer = null;
let resizeTimer = null;
let current = null;   // the live connection, if any
let term = null;
let fit = null;

function setState(state, text) {
  root.dataset.terminalState = state;
  ui.status.textContent = text;
}

// takeToken moves the page token from the fragment to session storage, so
// a reload keeps working and the token leaves the address bar.
function takeToken(id) {
  const key = TOKEN_KEY + id;
  const fromURL = policy.parseFragment(location.hash);
  if (fromURL !== '') {
    history.replaceState(history.state, '', location.pathname + location.search);
    try {
      sessionStorage.setItem(key, fromURL);
    } catch {
      // Storage refused (private mode): the token lives in memory only.
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

// apply shows a decision and carries it out.
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
    // Not JSON: the status says enough.
  }
  return { code: '', message: '' };
}

// connect buys a socket token with the page token and opens the socket.
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
    res = await fetch(policy.ticketURL(location.href, 'terminal'), {
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
  let url;
  try {
    const ticket = await res.json();
    if (!ticket || typeof ticket.websocket_url !== 'string' || ticket.websocket_url === '') {
      throw new Error('no websocket_url');
    }
    url = policy.websocketURL(ticket.websocket_url, location.href);
  } catch (err) {
    fail({ state: 'disconnected', action: policy.BUTTON, delayMs: null, message: `hearth sent an unusable terminal ticket (${err.message})` });
    return;
  }
  if (gen === generation) {
    open(url);
  }
}

function send(conn, data) {
  if (current === conn && conn.ws.readyState === WebSocket.OPEN) {
    conn.ws.send(data);
  }
}

function sendResize(conn) {
  send(conn, JSON.stringify({ type: 'resize', cols: term.cols, rows: term.rows }));
}

function open(url) {
  let ws;
  try {
    ws = new WebSocket(url);
  } catch (err) {
    fail({ state: 'disconnected', action: policy.BUTTON, delayMs: null, message: `Cannot open the terminal connection (${err.message})` });
    return;
  }
  ws.binaryType = 'arraybuffer';
  const conn = { ws, connectedAt: 0, exit: null, closed: null, done: false };
  current = conn;
  ws.addEventListener('open', () => sendResize(conn));
  ws.addEventListener('message', (e) => {
    if (current !== conn) {
      return;
    }
    if (typeof e.data !== 'string') {
      term.write(new Uint8Array(e.data));
      return;
    }
    let ev;
    try {
      ev = JSON.parse(e.data);
    } catch {
      return;
    }
    switch (ev.type) {
      case 'hello':
        // The output replays from the shell's kept history: start from a
        // clean screen so it draws as it did.
        term.reset();
        conn.connectedAt = Date.now();
        attempt = 0;
        ui.reconnect.hidden = true;
        setState('connected', `Connected to ${vmID} (${term.cols}×${term.rows})`);
        term.focus();
        break;
      case 'dropped':
        term.write(`\r\n\x1b[2m[${ev.to - ev.from} bytes of output were not kept]\x1b[0m\r\n`);
        break;
      case 'exit':
        conn.exit = ev;
        break;
      default:
        break;
    }
  });
  ws.addEventListener('close', (e) => {
    conn.closed = { code: e.code, reason: e.reason };
    finish(conn);
  });
}

function exitText(ev) {
  if (ev.signal) {
    return `The shell was ended by signal ${ev.signal}${ev.reason ? ` (${ev.reason})` : ''}`;
  }
  return `The shell exited with code ${ev.code ?? '?'}`;
}

function finish(conn) {
  if (conn.done) {
    return;
  }
  conn.done = true;
  if (current === conn) {
    current = null;
  }
  const code = conn.closed ? conn.closed.code : 1006;
  const reason = conn.closed ? conn.closed.reason : '';
  root.dataset.closeCode = String(code);
  if (conn.exit !== null) {
    apply({ state: 'disconnected', action: policy.STOP, delayMs: null,
      message: `${exitText(conn.exit)}. Ask for a new terminal link to start another` });
    return;
  }
  attempt = policy.nextAttempt(attempt, conn.connectedAt ? Date.now() - conn.connectedAt : 0);
  apply(policy.decideClose(code, reason, attempt));
}

// fitNow fits the terminal to the window; a changed size reaches the
// shell through onResize.
function fitNow() {
  resizeTimer = null;
  try {
    fit.fit();
  } catch {
    // Not laid out yet (a hidden window): the next resize fits it.
  }
}

// copyPaste gives Ctrl+Shift+C and Ctrl+Shift+V (as in terminal
// emulators) copy and paste; the browser's own menu and Ctrl+Insert /
// Shift+Insert work as they do in xterm.js.
function copyPaste(e) {
  if (e.type !== 'keydown' || !e.ctrlKey || !e.shiftKey || e.altKey || e.metaKey) {
    return true;
  }
  const key = e.key.toLowerCase();
  if (key === 'c' && term.hasSelection()) {
    navigator.clipboard?.writeText(term.getSelection()).catch(() => {});
    e.preventDefault();
    return false;
  }
  if (key === 'v') {
    navigator.clipboard?.readText().then((t) => term.paste(t)).catch(() => {});
    e.preventDefault();
    return false;
  }
  return true;
}

function main() {
  vmID = policy.vmIDFromPath(location.pathname, 'terminal');
  if (vmID === '') {
    setState('disconnected', 'This page needs a terminal link (…/terminal/{vm}#token=…).');
    return;
  }
  document.title = `hearth terminal ${policy.shortID(vmID)}`;
  pageToken = takeToken(vmID);
  if (pageToken === '') {
    setState('disconnected', 'This terminal link has no token: ask for a new one.');
    return;
  }
  term = new Terminal({
    cursorBlink: true,
    scrollback: 5000,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
    fontSize: 14,
  });
  fit = new FitAddon();
  term.loadAddon(fit);
  term.open(ui.screen);
  term.attachCustomKeyEventHandler(copyPaste);
  fitNow();
  term.onData((d) => current && send(current, encoder.encode(d)));
  term.onBinary((d) => current && send(current, Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff)));
  term.onResize(() => {
    if (current !== null) {
      sendResize(current);
      if (current.connectedAt) {
        setState('connected', `Connected to ${vmID} (${term.cols}×${term.rows})`);
      }
    }
  });
  window.addEventListener('resize', () => {
    if (resizeTimer === null) {
      resizeTimer = setTimeout(fitNow, RESIZE_DEBOUNCE_MS);
    }
  });
  ui.reconnect.addEventListener('click', () => {
    attempt = 0;
    connect();
  });
  // For tests and the curious: the terminal, its buffer and its size.
  window.hearthTerminal = term;
  connect();
}

main();
