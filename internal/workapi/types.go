package workapi

import (
	"fmt"
	"time"
)

const (
	// PortName is the data channel's virtio-serial port (QEMU).
	PortName = "hearth.data"
	// VsockPort is the data channel's guest vsock port (Firecracker); the
	// control channel is on agentapi.VsockPort.
	VsockPort = 1025

	// DefaultUser is whom processes and file operations act as unless the
	// request names another user: the workspace user.
	DefaultUser = "hearth"

	// DefaultHistoryBytes and MaxHistoryBytes bound a process's output
	// history (ProcessSpec.HistoryBytes).
	DefaultHistoryBytes = 1 << 20
	MaxHistoryBytes     = 16 << 20
	// StallLimit is how long a following reader may hold a process's
	// output up before the agent reads on and the reader is told what it
	// dropped.
	StallLimit = 10 * time.Second

	// MaxRunning bounds the processes running at once in one guest;
	// MaxEnded bounds the ended ones kept for listing and re-attach, each
	// for at most EndedRetention.
	MaxRunning     = 64
	MaxEnded       = 64
	EndedRetention = 15 * time.Minute

	// MaxFrameData is the most output bytes one frame carries.
	MaxFrameData = 64 << 10
	// MaxJSONBody bounds every JSON body either side sends (file lists
	// included), so that a reader can refuse a larger one.
	MaxJSONBody = 4 << 20
	// MaxListEntries bounds a FileList.
	MaxListEntries = 10000
)

// ProcessSpec is what to run. Exactly one of Argv and Command is set:
// Command runs as `$SHELL -lc Command` (the user's login shell).
type ProcessSpec struct {
	Argv    []string `json:"argv,omitempty"`
	Command string   `json:"command,omitempty"`
	// Env adds KEY=VALUE entries to the user's login environment.
	Env []string `json:"env,omitempty"`
	// Cwd defaults to the user's home directory.
	Cwd string `json:"cwd,omitempty"`
	// User defaults to DefaultUser.
	User string `json:"user,omitempty"`
	// PTY, when set, runs the process on a terminal of that size (stdout
	// and stderr are then one stream, FrameStdout).
	PTY *WindowSize `json:"pty,omitempty"`
	// Stdin keeps the process's stdin open for /stdin; without it stdin is
	// empty. A PTY always has input.
	Stdin bool `json:"stdin,omitempty"`
	// HistoryBytes is the output history kept (DefaultHistoryBytes if 0).
	HistoryBytes int `json:"history_bytes,omitempty"`
	// TimeoutSeconds, if set, kills the process group after that long.
	TimeoutSeconds int `json:"timeout_seconds,omitempty"`
	// DieWithClient kills the process group once no reader follows its
	// output (after the first one attached): for callers whose client
	// going away means the work is no longer wanted.
	DieWithClient bool `json:"die_with_client,omitempty"`
	// Tag is the caller's label (e.g. "terminal", "prompt:codex"), kept
	// and listed, at most 64 bytes.
	Tag string `json:"tag,omitempty"`
}

// WindowSize is a terminal's size in character cells.
type WindowSize struct {
	Cols int `json:"cols"`
	Rows int `json:"rows"`
}

// Validate checks a window size: 1 to 1000 columns and rows.
func (w WindowSize) Validate() error {
	if w.Cols < 1 || w.Cols > 1000 || w.Rows < 1 || w.Rows > 1000 {
		return fmt.Errorf("terminal size %dx%d: columns and rows must be 1 to 1000", w.Cols, w.Rows)
	}
	return nil
}

// Process states.
const (
	StateRunning = "running"
	StateExited  = "exited"
)

// Process is what the agent knows of a process it started.
type Process struct {
	ID        string      `json:"id"`
	PID       int         `json:"pid"`
	Argv      []string    `json:"argv"`
	User      string      `json:"user"`
	Cwd       string      `json:"cwd"`
	Tag       string      `json:"tag,omitempty"`
	PTY       *WindowSize `json:"pty,omitempty"`
	State     string      `json:"state"`
	StartedAt time.Time   `json:"started_at"`
	// Exit is set once the process has ended.
	Exit *Exit `json:"exit,omitempty"`
	// StdoutBytes, StderrBytes: bytes the process wrote so far; the end
	// of the history is their sum (HistoryEnd).
	StdoutBytes int64 `json:"stdout_bytes"`
	StderrBytes int64 `json:"stderr_bytes"`
	// HistoryStart is the oldest offset still in the history.
	HistoryStart int64 `json:"history_start"`
	// DroppedBytes counts bytes some follower could not be given.
	DroppedBytes int64 `json:"dropped_bytes"`
	// Followers is how many readers follow the output now.
	Followers int `json:"followers"`
}

// HistoryEnd is the offset just past the last byte of output.
func (p Process) HistoryEnd() int64 { return p.StdoutBytes + p.StderrBytes }

// Exit is how a process ended: an exit code, or the signal that killed it.
type Exit struct {
	Code       *int      `json:"code,omitempty"`
	Signal     string    `json:"signal,omitempty"` // e.g. "TERM", "KILL"
	EndedAt    time.Time `json:"ended_at"`
	DurationMS int64     `json:"duration_ms"`
	// Reason says why hearth ended it, if it did: "timeout",
	// "client gone", "killed on request".
	Reason string `json:"reason,omitempty"`
}

// ProcessList is GET /processes.
type ProcessList struct {
	Processes []Process `json:"processes"`
}

// SignalRequest names a signal: HUP, INT, QUIT, KILL, TERM, USR1, USR2,
// STOP, CONT, WINCH (with or without "SIG").
type SignalRequest struct {
	Signal string `json:"signal"`
	// Group sends it to the whole process group (default: the process).
	Group bool `json:"group,omitempty"`
}

// ResizeRequest is a PTY's new size.
type ResizeRequest = WindowSize

// Dropped says which output bytes a reader missed: [From, To).
type Dropped struct {
	From int64 `json:"from"`
	To   int64 `json:"to"`
}

// FileInfo describes one file.
type FileInfo struct {
	Path    string    `json:"path"`
	Name    string    `json:"name"`
	Type    string    `json:"type"` // "file", "dir", "symlink", "other"
	Size    int64     `json:"size"`
	Mode    string    `json:"mode"` // octal permission bits, e.g. "0644"
	UID     int       `json:"uid"`
	GID     int       `json:"gid"`
	Owner   string    `json:"owner,omitempty"`
	ModTime time.Time `json:"mod_time"`
	// Target is a symlink's target.
	Target string `json:"target,omitempty"`
}

// FileList is a directory's entries, sorted by name.
type FileList struct {
	Path    string     `json:"path"`
	Entries []FileInfo `json:"entries"`
	// Truncated says there were more than MaxListEntries.
	Truncated bool `json:"truncated,omitempty"`
}

// MkdirRequest makes a directory (and its parents with Parents).
type MkdirRequest struct {
	Path    string `json:"path"`
	Mode    string `json:"mode,omitempty"` // default "0755"
	Parents bool   `json:"parents,omitempty"`
}

// RenameRequest moves From to To (replacing a file at To).
type RenameRequest struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// Watch event kinds.
const (
	WatchCreate = "create"
	WatchWrite  = "write"
	WatchRemove = "remove"
	WatchRename = "rename"
	WatchAttrib = "attrib"
	// WatchOverflow: the guest kernel dropped events; rescan.
	WatchOverflow = "overflow"
	// WatchError: part of the tree is not watched (Error says why, e.g.
	// the stream's limit of watched directories); the stream goes on.
	WatchError = "error"
)

// WatchEvent is one change in a watched directory.
type WatchEvent struct {
	Kind string    `json:"kind"`
	Path string    `json:"path"`
	Dir  bool      `json:"dir,omitempty"`
	Time time.Time `json:"time"`
	// Error is set on a WatchError event.
	Error string `json:"error,omitempty"`
}

// ErrorBody is every error response's body.
type ErrorBody struct {
	Error string `json:"error"`
}

// Response headers of GET /files/content.
const (
	HeaderMode = "X-Hearth-Mode" // octal, e.g. "0644"
	HeaderSize = "X-Hearth-Size"
	HeaderUID  = "X-Hearth-Uid"
	HeaderGID  = "X-Hearth-Gid"
)
