// The viewer's reconnect policy (web/static/policy.js): node --test, no
// dependencies.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  BASE_DELAY_MS, BUTTON, CLOSE_TEXT, MAX_ATTEMPTS, MAX_DELAY_MS, RETRY, STABLE_MS, STOP,
  backoffDelay, closeText, decideClose, decideTicket, nextAttempt, parseFragment, shortID,
  ticketURL, vmIDFromPath, websocketURL,
} from '../static/policy.js';

const low = () => 0;        // jitter at its lowest: half the delay
const high = () => 0.999999; // jitter at its highest: the whole delay

// Every close code hearth's bridge sends, with its reason text and what the
// page must do.
const table = [
  [4000, 'vm destroyed', STOP],
  [4001, 'token expired', STOP],
  [4002, 'idle timeout', BUTTON],
  [4003, 'guest vnc unreachable', RETRY],
  [4004, 'max lifetime reached', STOP],
  [4005, 'guest vnc closed', RETRY],
  [4006, 'keepalive timeout', RETRY],
  [4007, 'invalid token', STOP],
  [4008, 'unsupported input in view-only mode', STOP],
  [4009, 'vm failed', STOP],
  [4010, 'login ended', STOP],
  [4011, 'too many viewers on this link', BUTTON],
  [4012, 'too many viewers on this vm', BUTTON],
  [4013, 'viewer links revoked', STOP],
  [4014, 'socket token expired', RETRY],
  [1000, 'viewer closed', STOP],
  [1001, 'server shutting down', RETRY],
  [1003, 'binary messages only', BUTTON],
  [1006, '', RETRY],
  [1011, 'internal error', RETRY],
  [1013, 'server busy: try again later', RETRY],
];

test('close decision table', () => {
  for (const [code, reason, action] of table) {
    const d = decideClose(code, reason, 1, low);
    assert.equal(d.action, action, `code ${code}`);
    assert.equal(d.code, code);
    assert.equal(d.state, action === RETRY ? 'reconnecting' : 'disconnected', `code ${code}`);
    assert.equal(d.delayMs === null, action !== RETRY, `code ${code} delay ${d.delayMs}`);
    // The reason and the code lead the message: what users never saw before.
    assert.ok(d.message.startsWith(`${closeText(code, reason)} (${code})`), `code ${code}: ${d.message}`);
  }
});

test('every code hearth sends has a reason text of its own', () => {
  for (const [code, reason] of table) {
    if (reason !== '') {
      assert.equal(CLOSE_TEXT[code], reason, `code ${code}`);
    }
  }
  assert.equal(closeText(1006, ''), 'connection dropped');
});

test('the server reason wins over the built-in text', () => {
  assert.equal(closeText(4003, 'guest vnc unreachable: connection refused'), 'guest vnc unreachable: connection refused');
  assert.equal(closeText(4003, '   '), 'guest vnc unreachable');
  assert.equal(closeText(4999, ''), 'connection closed');
  assert.match(decideClose(4003, 'guest vnc unreachable: refused', 1, low).message, /^guest vnc unreachable: refused \(4003\)/);
});

test('expired link and lifetime tell the user to get a new link', () => {
  for (const code of [4001, 4004, 4007]) {
    assert.match(decideClose(code, CLOSE_TEXT[code], 1).message, /new viewer link/, `code ${code}`);
  }
  for (const code of [4000, 1000, 4008]) {
    assert.doesNotMatch(decideClose(code, CLOSE_TEXT[code], 1).message, /new viewer link/, `code ${code}`);
  }
  assert.match(decideClose(4000, 'vm destroyed', 1).message, /no longer exists/);
});

test('final closes never reconnect, whatever the attempt', () => {
  for (const code of [4000, 4001, 4004, 4007, 4008, 4013, 1000]) {
    for (const attempt of [1, 2, MAX_ATTEMPTS, MAX_ATTEMPTS + 5]) {
      assert.equal(decideClose(code, '', attempt).action, STOP, `code ${code} attempt ${attempt}`);
    }
  }
});

test('a revoked link stops for good and says who closed it', () => {
  for (const attempt of [1, MAX_ATTEMPTS + 1]) {
    const d = decideClose(4013, 'viewer links revoked', attempt);
    assert.equal(d.action, STOP);
    assert.match(d.message, /^viewer links revoked \(4013\)\. The VM's owner .*revoked.*new viewer link/);
  }
  const t = decideTicket(401, 'link_revoked', 'the vm\'s viewer links were revoked: ask for a new one', 1, low);
  assert.equal(t.action, STOP);
  assert.match(t.message, /revoked.*new viewer link/);
});

test('a full link or VM waits for the user, never retrying by itself', () => {
  for (const code of [4011, 4012]) {
    for (const attempt of [1, 2, MAX_ATTEMPTS + 1]) {
      const d = decideClose(code, CLOSE_TEXT[code], attempt, high);
      assert.equal(d.action, BUTTON, `code ${code} attempt ${attempt}`);
      assert.equal(d.delayMs, null);
      assert.match(d.message, /Close another viewer.*Reconnect/);
    }
  }
  const t = decideTicket(409, 'viewer_limit', 'this vm already has 8 open viewers, the most allowed', 1, high);
  assert.equal(t.action, BUTTON);
  assert.match(t.message, /8 open viewers.*Close another viewer/);
});

test('a late socket token is bought again, within the attempt limit', () => {
  assert.equal(decideClose(4014, 'socket token expired', 1, low).action, RETRY);
  assert.equal(decideClose(4014, 'socket token expired', MAX_ATTEMPTS + 1, low).action, BUTTON);
});

test('a rate-limited ticket waits at least Retry-After, within the attempt limit', () => {
  const d = decideTicket(429, 'rate_limited', 'too many viewer tickets for this link: retry in 12 s', 1, high, '12');
  assert.equal(d.action, RETRY);
  assert.equal(d.delayMs, 12000);
  assert.match(d.message, /Too many connection attempts: too many viewer tickets/);
  assert.equal(decideTicket(429, 'rate_limited', '', 6, high, '2').delayMs, backoffDelay(6, high)); // backoff is longer
  assert.equal(decideTicket(429, 'rate_limited', '', 1, high, 'soon').delayMs, BASE_DELAY_MS);
  assert.equal(decideTicket(429, 'rate_limited', '', 1, high, '99999').delayMs, 3600e3);
  assert.equal(decideTicket(429, 'rate_limited', '', MAX_ATTEMPTS + 1, high, '1').action, BUTTON);
});

test('idle timeout offers Reconnect and never retries by itself', () => {
  for (const attempt of [1, 3, MAX_ATTEMPTS + 1]) {
    const d = decideClose(4002, 'idle timeout', attempt);
    assert.equal(d.action, BUTTON);
    assert.equal(d.delayMs, null);
    assert.match(d.message, /Reconnect/);
  }
});

test('unknown codes let the user decide', () => {
  for (const code of [1002, 1005, 1008, 1009, 4018, 4999]) {
    assert.equal(decideClose(code, '', 1).action, BUTTON, `code ${code}`);
  }
});

test('transient closes retry with growing delays, then give up with a button', () => {
  for (const code of [4003, 4005, 4006, 4014, 4016, 4017, 1001, 1006, 1011, 1013]) {
    let prev = 0;
    for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
      const d = decideClose(code, '', attempt, high);
      assert.equal(d.action, RETRY, `code ${code} attempt ${attempt}`);
      assert.ok(d.delayMs >= prev, `code ${code}: delay ${d.delayMs} after ${prev}`);
      assert.ok(d.delayMs <= MAX_DELAY_MS);
      assert.match(d.message, new RegExp(`attempt ${attempt} of ${MAX_ATTEMPTS}`));
      prev = d.delayMs;
    }
    const d = decideClose(code, '', MAX_ATTEMPTS + 1, high);
    assert.equal(d.action, BUTTON, `code ${code} after ${MAX_ATTEMPTS} attempts`);
    assert.equal(d.state, 'disconnected');
    assert.equal(d.delayMs, null);
    assert.match(d.message, new RegExp(`Gave up after ${MAX_ATTEMPTS} attempts`));
  }
});

test('backoff doubles from the base and is capped', () => {
  assert.equal(backoffDelay(1, high), BASE_DELAY_MS);
  assert.equal(backoffDelay(2, high), 2 * BASE_DELAY_MS);
  assert.equal(backoffDelay(3, high), 4 * BASE_DELAY_MS);
  assert.equal(backoffDelay(4, high), 8 * BASE_DELAY_MS);
  for (const attempt of [6, 10, 50, 1e6]) {
    assert.equal(backoffDelay(attempt, high), MAX_DELAY_MS, `attempt ${attempt}`);
    assert.equal(backoffDelay(attempt, low), MAX_DELAY_MS / 2, `attempt ${attempt}`);
  }
  // Nonsense attempts count as the first.
  assert.equal(backoffDelay(0, high), BASE_DELAY_MS);
  assert.equal(backoffDelay(-3, high), BASE_DELAY_MS);
});

test('jitter stays within half to all of the delay', () => {
  for (let attempt = 1; attempt <= MAX_ATTEMPTS + 2; attempt++) {
    const full = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** (attempt - 1));
    for (const r of [0, 0.25, 0.5, 0.75, 0.999999]) {
      const d = backoffDelay(attempt, () => r);
      assert.ok(d >= full / 2 && d <= full, `attempt ${attempt} r ${r}: ${d}`);
    }
    const spread = new Set(Array.from({ length: 20 }, () => backoffDelay(attempt)));
    assert.ok(spread.size > 1, `attempt ${attempt}: Math.random gives no jitter`);
  }
  // A broken random source cannot push the delay out of range.
  assert.equal(backoffDelay(1, () => 7), BASE_DELAY_MS);
  assert.equal(backoffDelay(1, () => -1), BASE_DELAY_MS / 2);
});

test('the attempt count restarts only after a stable connection', () => {
  assert.equal(nextAttempt(0, 0), 1);
  assert.equal(nextAttempt(3, 0), 4);
  assert.equal(nextAttempt(3, STABLE_MS - 1), 4); // connected, dropped at once: still counting
  assert.equal(nextAttempt(3, STABLE_MS), 1);
  assert.equal(nextAttempt(MAX_ATTEMPTS + 4, 3600e3), 1);
});

test('ticket answers', () => {
  const cases = [
    [401, 'token_expired', STOP, /expired.*new viewer link/],
    [401, 'invalid_token', STOP, /not valid.*new viewer link/],
    [401, '', STOP, /new viewer link/],
    [403, 'forbidden', STOP, /not allowed/],
    [404, 'not_found', STOP, /no longer exists/],
    [409, 'conflict', RETRY, /not ready/],
    [503, 'unavailable', RETRY, /unavailable/],
    [502, '', RETRY, /HTTP 502/],
    [500, 'internal', RETRY, /HTTP 500/],
    [429, 'rate_limited', RETRY, /Too many connection attempts/],
    [409, 'viewer_limit', BUTTON, /Close another viewer/],
    [401, 'link_revoked', STOP, /revoked/],
    [0, '', RETRY, /Cannot reach hearth/],
    [400, 'bad_request', BUTTON, /HTTP 400/],
  ];
  for (const [status, code, action, re] of cases) {
    const d = decideTicket(status, code, '', 1, low);
    assert.equal(d.action, action, `HTTP ${status} ${code}`);
    assert.match(d.message, re, `HTTP ${status} ${code}`);
    assert.equal(d.delayMs === null, action !== RETRY);
  }
  assert.match(decideTicket(409, 'conflict', 'vm is starting', 1, low).message, /VM not ready yet: vm is starting/);
});

test('ticket 409 and 503 back off and give up like closes do', () => {
  for (const status of [409, 503]) {
    assert.equal(decideTicket(status, '', '', 1, high).delayMs, BASE_DELAY_MS);
    assert.equal(decideTicket(status, '', '', 3, high).delayMs, 4 * BASE_DELAY_MS);
    assert.equal(decideTicket(status, '', '', MAX_ATTEMPTS, high).action, RETRY);
    const d = decideTicket(status, '', '', MAX_ATTEMPTS + 1, high);
    assert.equal(d.action, BUTTON);
    assert.equal(d.state, 'disconnected');
  }
  for (const attempt of [1, MAX_ATTEMPTS + 1]) {
    assert.equal(decideTicket(401, 'token_expired', '', attempt).action, STOP);
    assert.equal(decideTicket(404, 'not_found', '', attempt).action, STOP);
  }
});

test('the token comes from the fragment', () => {
  assert.equal(parseFragment('#token=abc.def-_'), 'abc.def-_');
  assert.equal(parseFragment('token=x'), 'x');
  assert.equal(parseFragment('#foo=1&token=x%2By'), 'x+y');
  assert.equal(parseFragment(''), '');
  assert.equal(parseFragment('#'), '');
  assert.equal(parseFragment('#tok=1'), '');
  assert.equal(parseFragment(undefined), '');
});

test('the VM id comes from the path', () => {
  assert.equal(vmIDFromPath('/viewer/vm-abcdefghijklmnop'), 'vm-abcdefghijklmnop');
  assert.equal(vmIDFromPath('/prefix/hearth/viewer/vm-1'), 'vm-1');
  assert.equal(vmIDFromPath('/viewer/a%20b'), 'a b');
  assert.equal(vmIDFromPath('/viewer/'), '');
  assert.equal(vmIDFromPath('/viewer'), '');
  assert.equal(vmIDFromPath('/other/vm-1'), '');
  assert.equal(vmIDFromPath('/viewer/%E0%A4%A'), '');
  assert.equal(shortID('vm-abcdefghijklmnop'), 'vm-abcdefghi');
  assert.equal(shortID('vm-1'), 'vm-1');
});

test('the ticket is the API route beside the page, under any prefix', () => {
  assert.equal(ticketURL('https://h.example/viewer/vm-1#token=x'), 'https://h.example/v1/vms/vm-1/viewer/ticket');
  assert.equal(ticketURL('https://h.example/p/q/viewer/vm-1?a=b'), 'https://h.example/p/q/v1/vms/vm-1/viewer/ticket');
  assert.equal(ticketURL('http://127.0.0.1:8080/viewer/vm%3A1'), 'http://127.0.0.1:8080/v1/vms/vm%3A1/viewer/ticket');
});

test('websocket_url may be absolute, a path, or relative to the page', () => {
  const page = 'https://h.example/p/viewer/vm-1';
  assert.equal(websocketURL('wss://other.example/ws?t=1', page), 'wss://other.example/ws?t=1');
  assert.equal(websocketURL('/p/viewer/vm-1/ws?t=1', page), 'wss://h.example/p/viewer/vm-1/ws?t=1');
  assert.equal(websocketURL('vm-1/ws?t=1', page), 'wss://h.example/p/viewer/vm-1/ws?t=1');
  assert.equal(websocketURL('https://h.example/ws#x', page), 'wss://h.example/ws');
  assert.equal(websocketURL('/ws', 'http://127.0.0.1:1/viewer/vm-1'), 'ws://127.0.0.1:1/ws');
  assert.throws(() => websocketURL('javascript:alert(1)', page));
  assert.throws(() => websocketURL('ftp://h.example/ws', page));
});

test('the terminal page finds its VM and ticket beside terminal/', () => {
  assert.equal(vmIDFromPath('/p/terminal/vm_1', 'terminal'), 'vm_1');
  assert.equal(vmIDFromPath('/p/viewer/vm_1', 'terminal'), '');
  assert.equal(ticketURL('https://h.example/p/terminal/vm_1#token=x', 'terminal'), 'https://h.example/p/v1/vms/vm_1/terminal/ticket');
});

test('a terminal whose shell is gone stops; an unreachable agent retries', () => {
  assert.equal(decideClose(4015, '', 1).action, STOP);
  assert.equal(decideClose(4016, '', 1).action, RETRY);
  assert.equal(decideClose(1000, 'process exited', 1).action, STOP);
});
