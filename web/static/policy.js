// The viewer's reconnect policy: pure functions from what ended a
// connection (a WebSocket close code and reason, or the ticket request's
// HTTP answer) and the attempt number to what the page shows and does.
// Nothing here touches the DOM, timers or the network, so node's test runner
// covers it (web/test/policy.test.mjs).

// Close codes hearth's bridge sends, with its reason texts. A close event's
// own reason is shown when it has one; these stand in when it is empty.
export const CLOSE_TEXT = Object.freeze({
  1000: 'viewer closed',
  1001: 'server shutting down',
  1003: 'binary messages only',
  1005: 'closed without a status',
  1006: 'connection dropped',
  1011: 'internal error',
  1013: 'server busy: try again later',
  4000: 'vm destroyed',
  4001: 'token expired',
  4002: 'idle timeout',
  4003: 'guest vnc unreachable',
  4004: 'max lifetime reached',
  4005: 'guest vnc closed',
  4006: 'keepalive timeout',
  4007: 'invalid token',
  4008: 'unsupported input in view-only mode',
  4009: 'vm failed',
  4010: 'login ended',
  4011: 'too many viewers on this link',
  4012: 'too many viewers on this vm',
  4013: 'viewer links revoked',
  4014: 'socket token expired',
  // The terminal's bridge (the terminal page shares this policy).
  4015: 'no such process',
  4016: 'guest agent unreachable',
  4017: 'client too slow to take output',
});

// What the page does next.
export const STOP = 'stop';     // nothing: the link or the VM is no longer usable
export const BUTTON = 'button'; // offer a Reconnect button, do not retry by itself
export const RETRY = 'retry';   // reconnect by itself after delayMs

// Automatic reconnects: the delay doubles from BASE_DELAY_MS up to
// MAX_DELAY_MS, with jitter, for at most MAX_ATTEMPTS attempts in a row;
// then the page gives up and offers the Reconnect button.
export const BASE_DELAY_MS = 1000;
export const MAX_DELAY_MS = 30000;
export const MAX_ATTEMPTS = 8;

// A connection that stayed up at least this long counts as a success: the
// next failure starts the attempt count afresh. A shorter one does not, so a
// guest that accepts and at once drops connections cannot loop forever.
export const STABLE_MS = 15000;

const NEW_LINK = 'Ask for a new viewer link.';
const REVOKED = `The VM's owner closed its viewers and revoked their links. ${NEW_LINK}`;
const FULL = 'Close another viewer of this VM, then press Reconnect.';

// Close codes that end the session for good, with what to tell the user.
const FINAL_CLOSE = {
  1000: '',
  4000: 'The VM no longer exists.',
  4001: NEW_LINK,
  4004: 'This viewer session reached its maximum lifetime. ' + NEW_LINK,
  4007: NEW_LINK,
  4008: '',
  4009: 'The VM failed; its owner can see why in the API.',
  4010: 'This sign-in is over; you can close this page.',
  4013: REVOKED,
  4015: 'The shell is gone: ask for a new terminal link.',
};

// Close codes after which only the user can tell when to try again: a
// full link or VM frees a slot when someone closes a viewer.
const BUTTON_CLOSE = {
  4002: 'Press Reconnect to continue.',
  4011: FULL,
  4012: FULL,
};

// Close codes after which the page reconnects by itself (transient). 4014
// is a socket token that came too late (or from before hearth restarted):
// the page token buys a fresh one.
const RETRY_CLOSE = new Set([1001, 1006, 1011, 1013, 4003, 4005, 4006, 4014, 4016, 4017]);

// backoffDelay returns the wait in milliseconds before automatic attempt
// number attempt (1 for the first retry): BASE_DELAY_MS·2^(attempt−1),
// capped at MAX_DELAY_MS, then jittered into [half, full] of that with
// random() (a number in [0, 1), Math.random by default).
export function backoffDelay(attempt, random = Math.random) {
  const n = Math.max(1, Math.floor(attempt));
  const full = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** Math.min(n - 1, 30));
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.round(full / 2 + (full / 2) * r);
}

// nextAttempt returns the attempt number for a failure after a connection
// that lasted connectedMs (0 if it never got connected), given the number of
// the attempt that made it.
export function nextAttempt(prevAttempt, connectedMs) {
  if (connectedMs >= STABLE_MS) {
    return 1;
  }
  return Math.max(0, Math.floor(prevAttempt)) + 1;
}

// closeText returns the human text for a close: the reason the server gave,
// else hearth's text for the code, else a generic one.
export function closeText(code, reason) {
  const r = typeof reason === 'string' ? reason.trim() : '';
  if (r !== '') {
    return r;
  }
  return CLOSE_TEXT[code] || 'connection closed';
}

// retryOrGiveUp turns a transient failure into RETRY with a delay (at
// least minDelayMs), or into BUTTON once attempt exceeds MAX_ATTEMPTS.
function retryOrGiveUp(what, attempt, random, minDelayMs = 0) {
  if (attempt > MAX_ATTEMPTS) {
    return {
      state: 'disconnected',
      action: BUTTON,
      delayMs: null,
      message: `${what}. Gave up after ${MAX_ATTEMPTS} attempts.`,
    };
  }
  return {
    state: 'reconnecting',
    action: RETRY,
    delayMs: Math.max(backoffDelay(attempt, random), minDelayMs),
    message: `${what}. Reconnecting (attempt ${attempt} of ${MAX_ATTEMPTS})`,
  };
}

// decideClose says what to do after the WebSocket closed with code and
// reason. attempt is the number of this failure in a row (see nextAttempt),
// counting from 1. The result has:
//   state    'reconnecting' or 'disconnected' (the page's data-viewer-state)
//   action   STOP, BUTTON or RETRY
//   delayMs  for RETRY, the wait before reconnecting; else null
//   message  what the status bar says (close reason and code first)
//   code     the close code
export function decideClose(code, reason, attempt, random = Math.random) {
  const what = `${closeText(code, reason)} (${code})`;
  let d;
  if (Object.hasOwn(FINAL_CLOSE, code)) {
    const hint = FINAL_CLOSE[code];
    d = { state: 'disconnected', action: STOP, delayMs: null, message: hint ? `${what}. ${hint}` : what };
  } else if (Object.hasOwn(BUTTON_CLOSE, code)) {
    d = { state: 'disconnected', action: BUTTON, delayMs: null, message: `${what}. ${BUTTON_CLOSE[code]}` };
  } else if (RETRY_CLOSE.has(code)) {
    d = retryOrGiveUp(what, attempt, random);
  } else {
    // Anything else (another 4xxx, 1002, 1005, 1008 …) is not known to be
    // transient: let the user decide.
    d = { state: 'disconnected', action: BUTTON, delayMs: null, message: what };
  }
  return { ...d, code };
}

// decideTicket says what to do when POST ticket did not return a ticket.
// status is the HTTP status (0 when the request itself failed: network
// down, server unreachable); errorCode and errorMessage are from the JSON
// error body, if any; retryAfter is the Retry-After header (seconds), if
// any. The result is shaped as decideClose's, without code.
export function decideTicket(status, errorCode, errorMessage, attempt, random = Math.random, retryAfter = '') {
  const detail = typeof errorMessage === 'string' && errorMessage.trim() !== '' ? `: ${errorMessage.trim()}` : '';
  const stop = (message) => ({ state: 'disconnected', action: STOP, delayMs: null, message });
  if (status === 401) {
    if (errorCode === 'token_expired') {
      return stop(`Viewer link expired. ${NEW_LINK}`);
    }
    if (errorCode === 'link_revoked') {
      return stop(REVOKED);
    }
    return stop(`Viewer link not valid${detail}. ${NEW_LINK}`);
  }
  if (status === 403) {
    return stop(`Viewing this VM is not allowed${detail}.`);
  }
  if (status === 404) {
    return stop('The VM no longer exists.');
  }
  if (status === 409 && errorCode === 'viewer_limit') {
    return { state: 'disconnected', action: BUTTON, delayMs: null, message: `No room for another viewer${detail}. ${FULL}` };
  }
  if (status === 409) {
    return retryOrGiveUp(`VM not ready yet${detail}`, attempt, random);
  }
  if (status === 429) {
    const secs = Number.parseInt(String(retryAfter), 10);
    const wait = Number.isFinite(secs) && secs > 0 ? Math.min(secs, 3600) * 1000 : 0;
    return retryOrGiveUp(`Too many connection attempts${detail}`, attempt, random, wait);
  }
  if (status === 0) {
    return retryOrGiveUp('Cannot reach hearth', attempt, random);
  }
  if (status >= 500) {
    return retryOrGiveUp(`hearth is unavailable (HTTP ${status}${detail})`, attempt, random);
  }
  return { state: 'disconnected', action: BUTTON, delayMs: null, message: `Viewer ticket refused (HTTP ${status}${detail})` };
}

// shortID is the VM id as the page title shows it.
export function shortID(id) {
  return id.length > 12 ? id.slice(0, 12) : id;
}

// parseFragment returns the page token carried in a URL fragment
// ("#token=…"), or '' if there is none.
export function parseFragment(hash) {
  const h = typeof hash === 'string' ? hash.replace(/^#/, '') : '';
  return new URLSearchParams(h).get('token') || '';
}

// vmIDFromPath returns the VM id from the page's path (…/{page}/{vmID},
// page "viewer" or "terminal"), or '' if the path has none.
export function vmIDFromPath(pathname, page = 'viewer') {
  const parts = pathname.split('/');
  const last = parts[parts.length - 1];
  if (parts.length < 2 || last === '' || parts[parts.length - 2] !== page) {
    return '';
  }
  try {
    return decodeURIComponent(last);
  } catch {
    return '';
  }
}

// ticketURL returns where to POST for a ticket: the API's
// v1/vms/{vmID}/{page}/ticket beside the page's {page}/ directory
// (…/viewer/{vmID} → …/v1/vms/{vmID}/viewer/ticket), keeping any path
// prefix a proxy puts in front, and dropping the page's query and fragment.
export function ticketURL(pageURL, page = 'viewer') {
  const u = new URL(pageURL);
  const last = u.pathname.split('/').pop();
  return new URL(`../v1/vms/${last}/${page}/ticket`, u).href;
}

// websocketURL resolves the ticket's websocket_url against the page URL and
// gives it a ws: or wss: scheme, so the server may answer with an absolute
// URL, an absolute path or a path relative to the page.
export function websocketURL(raw, pageURL) {
  const u = new URL(raw, pageURL);
  if (u.protocol === 'http:') {
    u.protocol = 'ws:';
  } else if (u.protocol === 'https:') {
    u.protocol = 'wss:';
  }
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') {
    throw new Error(`websocket_url has scheme ${u.protocol}`);
  }
  u.hash = '';
  return u.href;
}
