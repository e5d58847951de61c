// Package agentapi is the versioned wire protocol spoken between the hearth
// host and the guest agent (cmd/hearth-agent), plus the host side of it.
//
// # Transport
//
// The protocol runs over any reliable byte stream: a virtio-serial port whose
// host end is a per-VM Unix socket (QEMU), or a vsock connection reached
// through the Firecracker vsock device's Unix socket after its CONNECT
// handshake (vmm.DialAgent; the agent listens on VsockPort). Messages are newline-delimited JSON, one per line, at most
// MaxLineSize bytes per line; longer lines are rejected.
//
// # Envelope
//
// Every line is an Envelope:
//
//	{"v":1,"type":"...","id":<uint64, optional>,"body":{...},"error":"optional"}
//
// v is ProtocolVersion. Requests (host→guest messages other than challenge,
// config and rejected) carry a non-zero id and are answered by exactly one
// result with the same id, carrying either a body or an error. New request
// types can be added without a version bump: an agent that does not know a
// request type answers with the error "unknown request type X", and both
// sides ignore unknown fields and unknown unsolicited message types.
//
// # Session
//
// The host speaks first:
//
//	host  → guest  challenge  {protocol, nonce}
//	guest → host   hello      {protocol, agent_version, boot_time, uptime_seconds,
//	                           hostname, kernel, nonce, proof}
//	host  → guest  config     {required_ports, heartbeat_interval_ms,
//	                           network?: {mac, address, gateway?, dns?, mtu?}}
//	               (or rejected {reason}, after which the host closes)
//	guest → host   network_ready  {interface, address, gateway?, dns_error?}
//	               or network_failed {error}   only if the config has a network
//	guest → host   port_ready {port}   once per required port, when it accepts TCP
//	guest → host   ready      {ports, network?: {interface, address}}
//	                          once all required ports are ready
//	guest → host   heartbeat  {seq, uptime_seconds, mem_available_kib, load1}
//
// proof is hex(HMAC-SHA256(key=token, msg=nonce)) where token is the per-VM
// secret delivered to the guest at boot (see FormatToken) and nonce the raw
// bytes of the challenge nonce; hello echoes the base64 nonce it answers.
// A byte stream to a guest can carry stale messages from an earlier
// connection, so the host ignores everything before a hello that echoes its
// nonce, and the guest starts a fresh session whenever it receives a
// challenge. Requests in progress when a session ends are cancelled, and
// their results are never sent into the next session.
//
// # Limits
//
// The host treats the guest as hostile (Limits, enforced from the first
// byte of a connection): each message type has a size far below
// MaxLineSize where the type allows (MaxEventLine for hello and events,
// MaxOtherLine for login_progress and unknown types; only results, which
// answer the host's own requests, may use MaxLineSize); messages and bytes
// are token buckets, except results the host asked for (even late ones);
// a line must be finished within LineTimeout of its first byte; and a line
// longer than MaxLineSize is not read on. Breaking any of these, or any
// rule above, is a protocol violation (ViolationError, a clean reason such
// as "heartbeat flood (…)") that ends the connection. Text the guest
// supplies (hello fields, error texts) is made clean (package safetext)
// before the host keeps it.
//
// # Network
//
// A config may carry a network (NetworkConfig): the guest NIC with the
// given MAC gets exactly that address (other addresses of its family, but
// link-local ones, are removed), MTU and default route, lo is brought up,
// and /etc/resolv.conf names the DNS servers. The guest does this before
// probing ports and answers network_ready, echoing the address and gateway
// it applied and, in dns_error, why resolv.conf could not be written (not
// fatal). If it cannot apply the network it answers network_failed and
// sends nothing else in that session (it still answers requests); a new
// challenge tries again. Applying the same network again is a no-op, so
// the host simply sends the same config after every reconnect. When it
// sent a network, the host treats port_ready or ready before a matching
// network_ready, and a network_ready for another address or gateway, as
// protocol violations; this also catches an agent too old to know networks,
// which ignores the field.
//
// # Requests
//
// ping {} → {guest_time}; shutdown {} → {} (then the guest powers off);
// exec (ExecRequest) → ExecResult: a command run in its own process group
// with a timeout (default 30 s, at most 10 min) after which the whole group
// is killed. stdin and the outputs travel base64-encoded (stdin_b64,
// stdout_b64, stderr_b64) so that any bytes survive; each output is cut at
// MaxExecOutput bytes. A command that cannot start is a result with an
// error. The guest answers requests concurrently, with heartbeats going on,
// and refuses more than a few at once (8 execs). The host waits for an
// exec's answer no longer than its timeout and a grace (ErrNoAnswer).
//
// login (LoginRequest) → LoginResult: run a CLI's login as a guest user on
// a PTY, answer its prompts (expect/send steps), find the authorization URL
// in its output (or from $BROWSER, which points at the agent's own helper)
// and open it in the guest's browser, then wait until every credential file
// is complete and answer with their contents (at most MaxCredentialSize
// bytes each and MaxCredentialTotal together, so the result fits one
// line; more fails the login saying so). Along the way the guest sends
// login_progress {phase: started|prompt|url|credentials, step?, url?} with
// the request's id. cancel {request_id} → {} cancels a request in flight
// (the login's process group is killed). Failures are errors that never
// contain credential contents.
package agentapi
