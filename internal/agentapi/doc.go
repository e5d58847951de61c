// Package agentapi is the versioned wire protocol spoken between the hearth
// host and the guest agent (cmd/hearth-agent), plus the host side of it.
//
// # Transport
//
// The protocol runs over any reliable byte stream: a virtio-serial port whose
// host end is a per-VM Unix socket (QEMU), and later a vsock connection
// (Firecracker). Messages are newline-delimited JSON, one per line, at most
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
//	host  → guest  config     {required_ports, heartbeat_interval_ms}
//	               (or rejected {reason}, after which the host closes)
//	guest → host   port_ready {port}   once per required port, when it accepts TCP
//	guest → host   ready      {ports}  once all required ports are ready
//	guest → host   heartbeat  {seq, uptime_seconds, mem_available_kib, load1}
//
// proof is hex(HMAC-SHA256(key=token, msg=nonce)) where token is the per-VM
// secret delivered to the guest at boot (see FormatToken) and nonce the raw
// bytes of the challenge nonce; hello echoes the base64 nonce it answers.
// A byte stream to a guest can carry stale messages from an earlier
// connection, so the host ignores everything before a hello that echoes its
// nonce, and the guest starts a fresh session whenever it receives a
// challenge.
package agentapi
