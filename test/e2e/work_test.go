package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/images"
	"github.com/hearth-project/hearth/internal/client"
)

// workSpec is the minimal image with the fake AI CLIs (test/fakeprompt)
// as claude, codex and gemini, for the prompt tests.
func workSpec(t *testing.T) string {
	t.Helper()
	src, err := images.FS.ReadFile("minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(filepath.Join(binDir, "fakeprompt"))
	if err != nil {
		t.Fatal(err)
	}
	files := "\nfiles:\n  - path: /usr/local/bin/fakeprompt\n    mode: \"0755\"\n    content_base64: " + base64.StdEncoding.EncodeToString(bin) + "\n"
	for _, cli := range []string{"claude", "codex", "gemini"} {
		files += "  - path: /usr/local/bin/" + cli + "\n    mode: \"0755\"\n    content: |\n      #!/bin/sh\n      exec /usr/local/bin/fakeprompt " + cli + " \"$@\"\n"
	}
	s := strings.Replace(string(src), "name: minimal\n", "name: work\n", 1)
	s = strings.Replace(s, "\nfiles:\n", files, 1)
	path := filepath.Join(t.TempDir(), "work.yaml")
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// output is what an output stream delivered.
type output struct {
	stdout, stderr bytes.Buffer
	dropped        int64
	exit           *api.ProcessExit
	lastID         int64
}

// follow reads a process's output from offset until its exit or until
// stop says so after an event.
func follow(t *testing.T, ctx context.Context, c *client.Client, vm, pid string, offset int64, stop func(*output) bool) *output {
	t.Helper()
	s, err := c.ProcessOutput(ctx, vm, pid, offset)
	if err != nil {
		t.Fatalf("output of %s: %v", pid, err)
	}
	defer s.Close()
	o := &output{}
	for {
		e, err := s.Next()
		if err != nil {
			t.Fatalf("output of %s after %q: %v", pid, o.stdout.String(), err)
		}
		o.lastID = e.ID
		switch e.Type {
		case client.OutputStdout:
			o.stdout.Write(e.Output.Data)
		case client.OutputStderr:
			o.stderr.Write(e.Output.Data)
		case client.OutputDropped:
			o.dropped += e.Dropped.To - e.Dropped.From
		case client.OutputExit:
			o.exit = &e.Exit
			return o
		}
		if stop != nil && stop(o) {
			return o
		}
	}
}

// TestWorkInAGuest: processes, files and prompts in a real guest, through
// the API, as the workspace user. One VM (the minimal image with the fake
// AI CLIs) serves every part.
func TestWorkInAGuest(t *testing.T) {
	d := newDaemon(t)
	if err := buildSpecImage(d, workSpec(t)); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 15*time.Minute)
	v, err := d.alice.CreateVM(ctx, api.CreateVM{Image: "work", MemoryMiB: 512})
	if err != nil {
		t.Fatal(err)
	}
	if v, err = d.alice.WaitVM(ctx, v.ID, "ready", bootWait); err != nil {
		t.Fatal(err)
	}
	start := func(t *testing.T, req api.ProcessStart) api.Process {
		t.Helper()
		p, err := d.alice.StartProcess(ctx, v.ID, req)
		if err != nil {
			t.Fatalf("start %+v: %v", req, err)
		}
		return p
	}

	t.Run("as the workspace user", func(t *testing.T) {
		p := start(t, api.ProcessStart{Command: "id -un; echo $HOME; pwd"})
		o := follow(t, ctx, d.alice, v.ID, p.ID, 0, nil)
		if got := o.stdout.String(); got != "hearth\n/home/hearth\n/home/hearth\n" || o.exit.Code == nil || *o.exit.Code != 0 {
			t.Fatalf("id -un, HOME, pwd: %q %+v", got, o.exit)
		}
		res, err := d.alice.Exec(ctx, v.ID, api.ExecRequest{Argv: []string{"id", "-u"}})
		if err != nil || strings.TrimSpace(res.Stdout) != "1000" {
			t.Fatalf("exec runs as %q (%v), want uid 1000", res.Stdout, err)
		}
	})

	t.Run("output as it is written", func(t *testing.T) {
		// "a" arrives while the process has written nothing else: it
		// is still asleep before "b".
		p := start(t, api.ProcessStart{Argv: []string{"sh", "-c", "echo a; sleep 3; echo b"}})
		var during api.Process
		o := follow(t, ctx, d.alice, v.ID, p.ID, 0, func(o *output) bool {
			if o.stdout.String() == "a\n" && during.ID == "" {
				var err error
				if during, err = d.alice.Process(ctx, v.ID, p.ID); err != nil {
					t.Fatal(err)
				}
			}
			return false
		})
		if during.State != api.ProcessStateRunning || during.StdoutBytes != 2 {
			t.Fatalf("when a arrived the process was %+v, want running with 2 bytes written", during)
		}
		if o.stdout.String() != "a\nb\n" {
			t.Fatalf("output %q", o.stdout.String())
		}
	})

	t.Run("stdin and signals", func(t *testing.T) {
		p := start(t, api.ProcessStart{Argv: []string{"cat"}, Stdin: true})
		if err := d.alice.Stdin(ctx, v.ID, p.ID, strings.NewReader("echo me\n"), false); err != nil {
			t.Fatal(err)
		}
		o := follow(t, ctx, d.alice, v.ID, p.ID, 0, func(o *output) bool { return o.stdout.String() == "echo me\n" })
		if o.exit != nil {
			t.Fatalf("cat ended early: %+v", o.exit)
		}
		if err := d.alice.SignalProcess(ctx, v.ID, p.ID, "TERM", false); err != nil {
			t.Fatal(err)
		}
		o = follow(t, ctx, d.alice, v.ID, p.ID, o.lastID, nil)
		if o.exit.Signal != "TERM" || o.exit.Code != nil {
			t.Fatalf("after SIGTERM: %+v", o.exit)
		}
	})

	t.Run("a terminal outlives its client", func(t *testing.T) {
		p := start(t, api.ProcessStart{Argv: []string{"sh"}, Pty: api.WindowSize{Cols: 80, Rows: 24}})
		if err := d.alice.Stdin(ctx, v.ID, p.ID, strings.NewReader("echo mark-$((6*7))\n"), false); err != nil {
			t.Fatal(err)
		}
		// The first client goes away once it has seen the answer...
		follow(t, ctx, d.alice, v.ID, p.ID, 0, func(o *output) bool { return strings.Contains(o.stdout.String(), "mark-42") })
		if err := d.alice.ResizeProcess(ctx, v.ID, p.ID, api.WindowSize{Cols: 120, Rows: 40}); err != nil {
			t.Fatal(err)
		}
		if err := d.alice.Stdin(ctx, v.ID, p.ID, strings.NewReader("stty size\n"), false); err != nil {
			t.Fatal(err)
		}
		// ...and the next one finds the shell running, the history from
		// the start and the new size.
		o := follow(t, ctx, d.alice, v.ID, p.ID, 0, func(o *output) bool { return strings.Contains(o.stdout.String(), "40 120") })
		if !strings.Contains(o.stdout.String(), "mark-42") {
			t.Fatalf("re-attached history %q lacks the first answer", o.stdout.String())
		}
		if err := d.alice.SignalProcess(ctx, v.ID, p.ID, "KILL", true); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("50 MiB to a slow reader", func(t *testing.T) {
		const size = 50 << 20
		// It writes once it is followed: what it writes before anyone
		// follows is only kept as far as its history reaches.
		p := start(t, api.ProcessStart{Command: fmt.Sprintf("read go; yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c %d", size), Stdin: true})
		want := sha256.New()
		line := []byte("0123456789abcdefghijklmnopqrstuvwxyz\n")
		for n := 0; n < size; n += len(line) {
			want.Write(line[:min(len(line), size-n)])
		}
		got := sha256.New()
		s, err := d.alice.ProcessOutput(ctx, v.ID, p.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := d.alice.Stdin(ctx, v.ID, p.ID, strings.NewReader("go\n"), true); err != nil {
			t.Fatal(err)
		}
		var n, dropped int64
		for {
			e, err := s.Next()
			if err != nil {
				t.Fatalf("after %d bytes: %v", n, err)
			}
			if e.Type == client.OutputExit {
				break
			}
			if e.Type == client.OutputDropped {
				dropped += e.Dropped.To - e.Dropped.From
				continue
			}
			got.Write(e.Output.Data)
			n += int64(len(e.Output.Data))
			// Slower than the guest writes, never stalled for long.
			time.Sleep(2 * time.Millisecond)
		}
		if n != size || dropped != 0 || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
			t.Fatalf("%d bytes (%d dropped), sha256 equal %v; want %d intact", n, dropped, bytes.Equal(got.Sum(nil), want.Sum(nil)), size)
		}
	})

	t.Run("another user sees none of it", func(t *testing.T) {
		_, err := d.bob.Processes(ctx, v.ID)
		var ae *client.Error
		if !errors.As(err, &ae) || ae.Status != 404 {
			t.Fatalf("bob listing alice's processes: %v, want 404", err)
		}
		if _, err := d.bob.ReadFile(ctx, v.ID, "", "/home/hearth/.profile", 0); !errors.As(err, &ae) || ae.Status != 404 {
			t.Fatalf("bob reading alice's files: %v, want 404", err)
		}
	})

	t.Run("100 MiB up and down", func(t *testing.T) {
		const size = 100 << 20
		src := func() io.Reader { return io.LimitReader(&counting{}, size) }
		h := sha256.New()
		_, _ = io.Copy(h, src())
		want := fmt.Sprintf("%x", h.Sum(nil))
		begin := time.Now()
		fi, err := d.alice.WriteFile(ctx, v.ID, "", "/tmp/big", "0640", src(), size)
		if err != nil {
			t.Fatal(err)
		}
		up := time.Since(begin)
		if fi.Size != size || fi.Mode != "0640" || fi.UID != 1000 {
			t.Fatalf("uploaded %+v", fi)
		}
		code, out := guest(t, d.alice, v.ID, "sha256sum", "/tmp/big")
		if code != 0 || !strings.HasPrefix(out, want) {
			t.Fatalf("the guest's sha256 %q, want %s", out, want)
		}
		begin = time.Now()
		f, err := d.alice.ReadFile(ctx, v.ID, "", "/tmp/big", 0)
		if err != nil {
			t.Fatal(err)
		}
		h.Reset()
		n, err := io.Copy(h, f)
		f.Close()
		if err != nil || n != size || fmt.Sprintf("%x", h.Sum(nil)) != want {
			t.Fatalf("downloaded %d bytes (%v), sha256 equal %v", n, err, fmt.Sprintf("%x", h.Sum(nil)) == want)
		}
		t.Logf("100 MiB up in %s, down in %s", up.Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))
		_ = d.alice.RemoveFile(ctx, v.ID, "", "/tmp/big", false)
	})

	t.Run("the guest kernel decides", func(t *testing.T) {
		if _, err := d.alice.WriteFile(ctx, v.ID, "root", "/root/secret", "0600", strings.NewReader("s3cret"), 6); err != nil {
			t.Fatal(err)
		}
		_, err := d.alice.ReadFile(ctx, v.ID, "", "/root/secret", 0)
		var ae *client.Error
		if !errors.As(err, &ae) || (ae.Status != 403 && ae.Status != 404) {
			t.Fatalf("the user reading root's file: %v, want 403 or 404", err)
		}
	})

	t.Run("watch", func(t *testing.T) {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		w, err := d.alice.WatchFiles(wctx, v.ID, "", "/home/hearth", false)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		p := start(t, api.ProcessStart{Command: "echo x > w1 && mv w1 w2 && rm w2"})
		follow(t, ctx, d.alice, v.ID, p.ID, 0, nil)
		var kinds []string
		for len(kinds) < 4 {
			ev, err := w.Next()
			if err != nil {
				t.Fatalf("after %v: %v", kinds, err)
			}
			kinds = append(kinds, string(ev.Kind)+" "+filepath.Base(ev.Path))
		}
		want := []string{"create w1", "write w1", "rename w1", "rename w2"}
		for i := range want {
			if kinds[i] != want[i] {
				t.Fatalf("watched %v, want %v then a remove", kinds, want)
			}
		}
	})

	t.Run("prompts", func(t *testing.T) {
		run := func(t *testing.T, provider, text string) ([]api.PromptEvent, string) {
			t.Helper()
			s, err := d.alice.RunPrompt(ctx, v.ID, api.PromptRequest{Provider: provider, Prompt: text})
			if err != nil {
				t.Fatalf("%s: %v", provider, err)
			}
			defer s.Close()
			var evs []api.PromptEvent
			for {
				ev, err := s.Next()
				if errors.Is(err, io.EOF) {
					return evs, s.Process
				}
				if err != nil {
					t.Fatalf("%s after %d events: %v", provider, len(evs), err)
				}
				evs = append(evs, ev)
			}
		}
		// Not signed in: refused before anything runs.
		_, err := d.alice.RunPrompt(ctx, v.ID, api.PromptRequest{Provider: "codex", Prompt: "hi"})
		var ae *client.Error
		if !errors.As(err, &ae) || ae.Status != 409 || !strings.Contains(ae.Message, "sign in first") {
			t.Fatalf("a prompt without a credential: %v, want a 409 saying to sign in", err)
		}
		creds := map[string]string{"claude_code": ".claude/.credentials.json", "codex": ".codex/auth.json", "gemini_cli": ".gemini/oauth_creds.json"}
		for provider, cred := range creds {
			if _, err := d.alice.MakeDirectory(ctx, v.ID, "", api.MakeDirectory{Path: "/home/hearth/" + filepath.Dir(cred), Parents: true}); err != nil {
				t.Fatal(err)
			}
			if _, err := d.alice.WriteFile(ctx, v.ID, "", "/home/hearth/"+cred, "0600", strings.NewReader("{}"), 2); err != nil {
				t.Fatal(err)
			}
			t.Run(provider, func(t *testing.T) {
				evs, _ := run(t, provider, "hello from hearth")
				var types []string
				text := ""
				for _, ev := range evs {
					types = append(types, string(ev.Type))
					if ev.Type == api.PromptEventTypeAssistantText {
						text += ev.Text
					}
				}
				if len(evs) == 0 || evs[0].Type != api.PromptEventTypeSession || evs[len(evs)-1].Type != api.PromptEventTypeResult ||
					evs[len(evs)-1].IsError || !strings.Contains(text, "hello from hearth") || !strings.Contains(strings.Join(types, " "), "tool_use tool_result") {
					t.Fatalf("events %v, text %q", types, text)
				}
				evs, _ = run(t, provider, "FAIL please")
				last := evs[len(evs)-1]
				if last.Type != api.PromptEventTypeError || !strings.Contains(last.Message, "exit") {
					t.Fatalf("a failing CLI ended with %+v", last)
				}
			})
		}
		// Cancelled: the CLI stops and the stream ends with it.
		s, err := d.alice.RunPrompt(ctx, v.ID, api.PromptRequest{Provider: "claude_code", Prompt: "SLOW"})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Next(); err != nil {
			t.Fatal(err)
		}
		if err := d.alice.CancelPrompt(ctx, v.ID, s.Process); err != nil {
			t.Fatal(err)
		}
		for {
			if _, err := s.Next(); err != nil {
				break
			}
		}
		p, err := d.alice.Process(ctx, v.ID, s.Process)
		if err != nil || p.State != api.ProcessStateExited || p.Exit.Signal != "TERM" {
			t.Fatalf("the cancelled CLI: %+v %v", p, err)
		}
	})
}

// counting produces the bytes 0, 1, 2, ... 255, 0, ... for ever.
type counting struct{ n byte }

func (c *counting) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = c.n
		c.n++
	}
	return len(p), nil
}

// buildSpecImage builds an image from a spec file with the daemon's CLI.
func buildSpecImage(d *daemon, spec string) error {
	out, err := hearthCmd(d, "image", "build", "--local", "--profile", spec, "--agent", filepath.Join(binDir, "hearth-agent"))
	if err != nil {
		return fmt.Errorf("image build: %v\n%s", err, out)
	}
	d.t.Logf("image: %s", lastLine(out))
	return nil
}
