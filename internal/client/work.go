package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/hearth-project/hearth/api"
)

// A VM's work API: processes and files in its guest.

// noContent reads an answer that has no body (204), or its error answer
// into an *Error.
func noContent(resp *http.Response, err error) error {
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 {
		return answerError(resp)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswer))
	return nil
}

// StartProcess starts a process in a ready VM.
func (c *Client) StartProcess(ctx context.Context, vm string, req api.ProcessStart) (api.Process, error) {
	return decode[api.Process](c.gen.StartProcess(ctx, vm, req))
}

// Processes lists a VM's running and recently ended processes.
func (c *Client) Processes(ctx context.Context, vm string) ([]api.Process, error) {
	l, err := decode[api.ProcessList](c.gen.ListProcesses(ctx, vm))
	return l.Processes, err
}

// Process returns one process.
func (c *Client) Process(ctx context.Context, vm, pid string) (api.Process, error) {
	return decode[api.Process](c.gen.GetProcess(ctx, vm, pid))
}

// SignalProcess sends signal (TERM, KILL, …) to a process, or to its
// whole process group.
func (c *Client) SignalProcess(ctx context.Context, vm, pid, signal string, group bool) error {
	return noContent(c.gen.SignalProcess(ctx, vm, pid, api.ProcessSignal{Signal: api.ProcessSignalSignal(signal), Group: group}))
}

// ResizeProcess changes the terminal size of a process on a pty.
func (c *Client) ResizeProcess(ctx context.Context, vm, pid string, size api.WindowSize) error {
	return noContent(c.gen.ResizeProcess(ctx, vm, pid, size))
}

// Stdin streams r into a process's stdin, closing it after if eof.
func (c *Client) Stdin(ctx context.Context, vm, pid string, r io.Reader, eof bool) error {
	return noContent(c.gen.ProcessStdinWithBody(ctx, vm, pid, &api.ProcessStdinParams{EOF: opt(eof)}, "application/octet-stream", r))
}

// Output events.
const (
	OutputStdout  = "stdout"
	OutputStderr  = "stderr"
	OutputDropped = "dropped"
	OutputExit    = "exit"
)

// OutputEvent is one event of a process's output stream.
type OutputEvent struct {
	// ID is the output offset just past the event: resume from it.
	ID int64
	// Type is OutputStdout, OutputStderr, OutputDropped or OutputExit;
	// the field of that name is set.
	Type    string
	Output  api.ProcessOutput
	Dropped api.ProcessOutputDropped
	Exit    api.ProcessExit
}

// OutputStream reads a process's output stream.
type OutputStream struct{ r *sseReader }

// ProcessOutput follows a process's output from offset until it ends.
func (c *Client) ProcessOutput(ctx context.Context, vm, pid string, offset int64) (*OutputStream, error) {
	body, err := stream(c.gen.ProcessOutput(ctx, vm, pid, &api.ProcessOutputParams{Offset: &offset}))
	if err != nil {
		return nil, err
	}
	return &OutputStream{r: newSSEReader(body)}, nil
}

// Next returns the next event; io.EOF once the stream has ended (after
// the exit event, or when the connection closed: resume from the last
// event's ID).
func (s *OutputStream) Next() (OutputEvent, error) {
	e, err := s.r.next()
	if err != nil {
		return OutputEvent{}, err
	}
	out := OutputEvent{ID: e.id, Type: e.event}
	var v any
	switch e.event {
	case OutputStdout, OutputStderr:
		v = &out.Output
	case OutputDropped:
		v = &out.Dropped
	case OutputExit:
		v = &out.Exit
	default:
		return out, fmt.Errorf("output event of unknown type %q", e.event)
	}
	if err := json.Unmarshal([]byte(e.data), v); err != nil {
		return out, fmt.Errorf("output event %q: %w", e.event, err)
	}
	return out, nil
}

// Close ends the stream.
func (s *OutputStream) Close() error { return s.r.body.Close() }

// FileReader is a file of a guest being downloaded.
type FileReader struct {
	io.ReadCloser
	// Size is the whole file's size (-1: not said); Mode its permission
	// bits in octal ("0644"), UID and GID its owner.
	Size     int64
	Mode     string
	UID, GID int
}

// ReadFile downloads path from a VM as user ("": the workspace user),
// from byte offset.
func (c *Client) ReadFile(ctx context.Context, vm, user, path string, offset int64) (*FileReader, error) {
	p := &api.ReadFileParams{Path: path, User: opt(user)}
	if offset > 0 {
		p.Range = opt("bytes=" + strconv.FormatInt(offset, 10) + "-")
	}
	resp, err := c.gen.ReadFile(ctx, vm, p)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent {
		defer resp.Body.Close()
		return nil, answerError(resp)
	}
	f := &FileReader{ReadCloser: resp.Body, Size: -1, Mode: resp.Header.Get("X-Hearth-Mode")}
	if n, err := strconv.ParseInt(resp.Header.Get("X-Hearth-Size"), 10, 64); err == nil {
		f.Size = n
	}
	f.UID, _ = strconv.Atoi(resp.Header.Get("X-Hearth-Uid"))
	f.GID, _ = strconv.Atoi(resp.Header.Get("X-Hearth-Gid"))
	return f, nil
}

// WriteFile uploads r to path in a VM as user ("": the workspace user)
// with mode ("": the default); length is r's size, or -1 if unknown.
func (c *Client) WriteFile(ctx context.Context, vm, user, path, mode string, r io.Reader, length int64) (api.FileInfo, error) {
	setLength := func(_ context.Context, req *http.Request) error {
		if length >= 0 {
			req.ContentLength = length
		}
		if length == 0 {
			req.Body = http.NoBody
		}
		return nil
	}
	return decode[api.FileInfo](c.gen.WriteFileWithBody(ctx, vm, &api.WriteFileParams{Path: path, Mode: opt(mode), User: opt(user)},
		"application/octet-stream", r, setLength))
}

// Stat describes a file of a VM as user sees it.
func (c *Client) Stat(ctx context.Context, vm, user, path string) (api.FileInfo, error) {
	return decode[api.FileInfo](c.gen.StatFile(ctx, vm, &api.StatFileParams{Path: path, User: opt(user)}))
}

// ListFiles lists a directory of a VM as user.
func (c *Client) ListFiles(ctx context.Context, vm, user, path string) (api.FileList, error) {
	return decode[api.FileList](c.gen.ListFiles(ctx, vm, &api.ListFilesParams{Path: path, User: opt(user)}))
}

// MakeDirectory makes a directory in a VM as user.
func (c *Client) MakeDirectory(ctx context.Context, vm, user string, req api.MakeDirectory) (api.FileInfo, error) {
	return decode[api.FileInfo](c.gen.MakeDirectory(ctx, vm, &api.MakeDirectoryParams{User: opt(user)}, req))
}

// RenameFile moves a file in a VM as user.
func (c *Client) RenameFile(ctx context.Context, vm, user, from, to string) error {
	return noContent(c.gen.RenameFile(ctx, vm, &api.RenameFileParams{User: opt(user)}, api.RenameFile{From: from, To: to}))
}

// RemoveFile removes a file (a directory and its contents with
// recursive) in a VM as user.
func (c *Client) RemoveFile(ctx context.Context, vm, user, path string, recursive bool) error {
	return noContent(c.gen.RemoveFile(ctx, vm, &api.RemoveFileParams{Path: path, User: opt(user), Recursive: opt(recursive)}))
}

// WatchStream reads the changes in a watched directory.
type WatchStream struct{ r *sseReader }

// WatchFiles follows the changes in a directory of a VM (and below it
// with recursive) as user.
func (c *Client) WatchFiles(ctx context.Context, vm, user, path string, recursive bool) (*WatchStream, error) {
	body, err := stream(c.gen.WatchFiles(ctx, vm, &api.WatchFilesParams{Path: path, User: opt(user), Recursive: opt(recursive)}))
	if err != nil {
		return nil, err
	}
	return &WatchStream{r: newSSEReader(body)}, nil
}

// Next returns the next change; io.EOF once the stream has ended.
func (s *WatchStream) Next() (api.WatchEvent, error) {
	var ev api.WatchEvent
	e, err := s.r.next()
	if err != nil {
		return ev, err
	}
	if err := json.Unmarshal([]byte(e.data), &ev); err != nil {
		return ev, fmt.Errorf("watch event %q: %w", e.data, err)
	}
	return ev, nil
}

// Close ends the stream.
func (s *WatchStream) Close() error { return s.r.body.Close() }

// sseReader reads server-sent events as hearth writes them: an optional
// id, an event name and one data line, then a blank line; comments keep
// the stream alive.
type sseReader struct {
	body io.ReadCloser
	sc   *bufio.Scanner
}

// sseEvent is one event; id is -1 when it has none.
type sseEvent struct {
	id    int64
	event string
	data  string
}

func newSSEReader(body io.ReadCloser) *sseReader {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 64<<10), maxEventLine)
	return &sseReader{body: body, sc: sc}
}

// next returns the next event; io.EOF at the stream's end.
func (r *sseReader) next() (sseEvent, error) {
	e := sseEvent{id: -1}
	for r.sc.Scan() {
		line := r.sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			id, err := strconv.ParseInt(strings.TrimPrefix(line, "id: "), 10, 64)
			if err != nil {
				return e, fmt.Errorf("event id %q: %w", line, err)
			}
			e.id = id
		case strings.HasPrefix(line, "event: "):
			e.event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			e.data = strings.TrimPrefix(line, "data: ")
		case line == "" && e.data != "":
			return e, nil
		}
	}
	if err := r.sc.Err(); err != nil {
		return e, err
	}
	return e, io.EOF
}

// PromptStream reads a prompt's events.
type PromptStream struct {
	r *sseReader
	// Process is the id of the CLI's process (for CancelPrompt).
	Process string
}

// RunPrompt runs a prompt through a provider's CLI in a VM and returns
// its events as they come. Closing the stream cancels the prompt.
func (c *Client) RunPrompt(ctx context.Context, vm string, req api.PromptRequest) (*PromptStream, error) {
	resp, err := c.gen.RunPrompt(ctx, vm, req)
	process := ""
	if resp != nil {
		process = resp.Header.Get("X-Hearth-Process")
	}
	body, err := stream(resp, err)
	if err != nil {
		return nil, err
	}
	return &PromptStream{r: newSSEReader(body), Process: process}, nil
}

// Next returns the next event; io.EOF once the stream has ended.
func (s *PromptStream) Next() (api.PromptEvent, error) {
	var ev api.PromptEvent
	e, err := s.r.next()
	if err != nil {
		return ev, err
	}
	if err := json.Unmarshal([]byte(e.data), &ev); err != nil {
		return ev, fmt.Errorf("prompt event %q: %w", e.event, err)
	}
	return ev, nil
}

// Close ends the stream, and with it the prompt's CLI.
func (s *PromptStream) Close() error { return s.r.body.Close() }

// CancelPrompt stops a running prompt's CLI.
func (c *Client) CancelPrompt(ctx context.Context, vm, process string) error {
	return noContent(c.gen.CancelPrompt(ctx, vm, process))
}
