// Package workapi is the work API of the guest agent: processes (streamed
// output, stdin, signals, PTYs, as the workspace user) and files (streamed
// both ways, as the user), spoken between the hearth host and the agent
// over each VM's data channel. It holds the wire types, the output frame
// codec and the channel's preamble; the agent serves the API
// (internal/agent), the host calls it (internal/vm).
//
// # Channel
//
// The data channel is a second host↔guest stream, separate from the
// control channel of package agentapi so that bulk bytes never queue behind
// (or in front of) heartbeats and control requests: a second virtio-serial
// port named PortName under QEMU, vsock port VsockPort under Firecracker.
// On a fresh connection the host sends a challenge line and the guest
// answers with a hello line proving it holds the VM's token (Preamble);
// both sides skip stale bytes an earlier connection left in the stream,
// and the host repeats its challenge until it is answered. Then the
// connection carries HTTP/2 with prior knowledge (no TLS: the channel is
// host↔guest only), the agent being the server. One connection serves
// every request of a VM concurrently, each stream with its own flow
// control, so a slow reader of one process holds up nothing else.
//
// # Routes (agent side)
//
//	POST   /processes                  ProcessSpec → 201 Process
//	GET    /processes                  → ProcessList (running and recently ended)
//	GET    /processes/{id}             → Process
//	GET    /processes/{id}/output      ?offset=N&follow=1 → frames (see below)
//	POST   /processes/{id}/stdin       raw body, written to stdin; ?eof=1 closes it after
//	POST   /processes/{id}/signal      SignalRequest → 204
//	POST   /processes/{id}/resize      ResizeRequest → 204
//	GET    /files/content              ?path= → the file's bytes; headers HeaderMode, HeaderSize, HeaderUID,
//	                                   HeaderGID; `Range: bytes=N-` resumes (206)
//	PUT    /files/content              ?path=&mode= ; body → FileInfo (written to a temporary file, renamed into place)
//	GET    /files/stat                 ?path= → FileInfo
//	GET    /files/list                 ?path= → FileList
//	POST   /files/mkdir                MkdirRequest → 201 FileInfo (200 if Parents found it)
//	POST   /files/rename               RenameRequest → 204
//	DELETE /files                      ?path=&recursive=1 → 204
//	GET    /files/watch                ?path=&recursive=1 → newline-delimited WatchEvent JSON
//
// Every route takes ?user= (default DefaultUser): processes run as that
// user with its login environment, and file operations are checked by the
// guest kernel against that user's credentials. Errors are an ErrorBody
// with a status saying whose fault it was (400 bad request, 403 permission,
// 404 no such process or file, 409 state, 429 too many, 500 the agent's).
//
// # Output frames
//
// A process's stdout and stderr (or its PTY) are kept in one bounded
// history (ProcessSpec.HistoryBytes) with one byte offset counting both in
// the order they arrived. /output sends, from ?offset=, frames of
// FrameHeaderSize bytes — kind (1 byte), payload length (4 bytes, big
// endian) — then the payload:
//
//	FrameStdout, FrameStderr  offset (8 bytes, big endian), then the bytes
//	FrameDropped              Dropped JSON: bytes the reader missed
//	FrameExit                 Exit JSON; the last frame
//
// With follow=1 the stream stays open until the process ends; without,
// it ends at the end of the history. A reader that falls behind the
// history gets a FrameDropped for what it lost, never a silent gap. While a
// reader follows, the agent reads the process's output only as fast as the
// slowest follower takes it, up to the history's size, and no longer than
// StallLimit; a process nobody follows is never held up.
package workapi
