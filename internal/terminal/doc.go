// Package terminal joins WebSocket clients to processes in a VM: the
// bridge between a socket and a process of the VM's work API (package
// workapi), used by the attach route for API clients and by terminal
// sessions, and the sessions themselves: each VM's login shell on a PTY,
// opened in a browser through signed links (the viewer's token model,
// package viewer) and kept running for a while after its last socket
// closes so that a reconnecting page gets its screen back.
//
// # Socket protocol
//
// Server to client, after the upgrade:
//
//   - binary messages are output bytes: a PTY's one stream, or stdout and
//     stderr in the order they came;
//   - text messages are JSON events (api.TerminalEvent): first
//     {"type":"hello","process":ID,"offset":N} (the output offset the
//     binary messages start at), then {"type":"dropped","from":F,"to":T}
//     for output the client missed because it fell behind the process's
//     kept history, and last {"type":"exit","code":C} (or "signal":"KILL",
//     with "reason" when hearth ended it) once the process has ended,
//     after which the socket closes with 1000 "process exited".
//
// Client to server:
//
//   - binary messages (at most MaxInput bytes) are input, written to the
//     process's stdin in order;
//   - text messages are JSON controls (api.TerminalControl):
//     {"type":"resize","cols":C,"rows":R}, {"type":"signal","signal":"INT"}
//     (sent to the process's group) and {"type":"eof"} (closes stdin).
//     They are rate-limited (Options.ControlRate a second); a malformed
//     one, or one too many, closes the socket with 1008.
//
// The server pings every Options.PingInterval so idle terminals survive
// proxies, and drops a client whose pong is late (4006) or that does not
// take a message within Options.WriteTimeout (4017). Output is read from
// the agent one frame at a time, only after the previous one was written,
// so a slow client holds at most one frame in hearth. Every close says
// why; codes 4000-4014 are the viewer's (package viewer), 4015 no such
// process, 4016 guest agent unreachable, 4017 client too slow.
//
// Tokens are secrets: nothing here logs them.
package terminal
