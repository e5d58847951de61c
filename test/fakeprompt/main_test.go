package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearth-project/hearth/internal/prompt"
	"github.com/hearth-project/hearth/internal/provider"
)

// binDir holds the fake built once and linked as claude, codex and gemini.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fakeprompt")
	if err != nil {
		panic(err)
	}
	binDir = dir
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "fakeprompt"), ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		panic(err)
	}
	for _, n := range []string{"claude", "codex", "gemini"} {
		if err := os.Symlink("fakeprompt", filepath.Join(dir, n)); err != nil {
			panic(err)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// runEnv is a workspace user's environment: HOME with the provider's
// credential files (unless bare), the fakes first in PATH.
func runEnv(t *testing.T, p provider.Provider, bare bool) (home string, env []string) {
	t.Helper()
	home = t.TempDir()
	if !bare {
		for _, c := range p.Credentials {
			path := filepath.Join(home, strings.TrimPrefix(c.Path, "~/"))
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte("{}"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	return home, []string{"HOME=" + home, "PATH=" + binDir + ":/usr/bin:/bin", "FAKEPROMPT_SLOW_SECONDS=60"}
}

// command builds the provider's prompt command for text and sets it up
// to run in a fresh working directory.
func command(t *testing.T, name, text string, bare bool) (*exec.Cmd, provider.Provider, string) {
	t.Helper()
	r, err := provider.Load()
	if err != nil {
		t.Fatal(err)
	}
	p, err := r.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	cwd := t.TempDir()
	argv, env, stdin, err := prompt.BuildCommand(p, prompt.Request{Prompt: text, Cwd: cwd, Options: map[string]any{"model": "test-model"}})
	if err != nil {
		t.Fatal(err)
	}
	_, base := runEnv(t, p, bare)
	cmd := exec.Command(filepath.Join(binDir, argv[0]), argv[1:]...)
	cmd.Dir = cwd
	cmd.Env = append(base, env...)
	cmd.Stdin = bytes.NewReader(stdin)
	return cmd, p, cwd
}

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func parse(t *testing.T, p provider.Provider, out, stderr []byte, code int) []prompt.Event {
	t.Helper()
	ps, err := prompt.NewParser(p.Prompt.Format, p.Prompt.Argv[0])
	if err != nil {
		t.Fatal(err)
	}
	evs := append(ps.Feed(out), ps.Finish(code, stderr)...)
	if st := ps.Stats(); st.Skipped != 0 || st.TooLong != 0 {
		t.Errorf("stats %+v", st)
	}
	return evs
}

func TestTranscriptPerCLI(t *testing.T) {
	for _, name := range []string{"claude_code", "codex", "gemini_cli"} {
		t.Run(name, func(t *testing.T) {
			text := "-- list the files\nplease"
			cmd, p, cwd := command(t, name, text, false)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("%v: %s", err, stderr.Bytes())
			}
			evs := parse(t, p, out, stderr.Bytes(), 0)
			var types []string
			for _, e := range evs {
				types = append(types, string(e.Type))
			}
			want := "session assistant_text tool_use tool_result assistant_text usage result"
			if got := strings.Join(types, " "); got != want {
				t.Fatalf("events %s\nwant   %s", got, want)
			}
			if evs[0].SessionID == "" || name != "codex" && evs[0].Model != "test-model" {
				t.Errorf("session %+v", evs[0])
			}
			if evs[2].ToolID != evs[3].ToolID || evs[3].Output != cwd+"\n" {
				t.Errorf("tool use %+v, result %+v (cwd %s)", evs[2], evs[3], cwd)
			}
			last := evs[len(evs)-1]
			if last.IsError || last.Text != "You said: "+text {
				t.Errorf("result %+v", last)
			}
		})
	}
}

func TestFailAsked(t *testing.T) {
	for _, name := range []string{"claude_code", "codex", "gemini_cli"} {
		t.Run(name, func(t *testing.T) {
			cmd, p, _ := command(t, name, "please FAIL now", false)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if code := exitCode(err); code != exitAsked {
				t.Fatalf("exit %d, want %d", code, exitAsked)
			}
			evs := parse(t, p, out, stderr.Bytes(), exitAsked)
			last := evs[len(evs)-1]
			if evs[0].Type != prompt.TypeSession || last.Type != prompt.TypeError ||
				!strings.Contains(last.Message, "exited with status 3") || !strings.Contains(last.Message, "failing as asked") {
				t.Errorf("events %+v", evs)
			}
		})
	}
}

func TestNoCredential(t *testing.T) {
	for _, name := range []string{"claude_code", "codex", "gemini_cli"} {
		t.Run(name, func(t *testing.T) {
			cmd, _, _ := command(t, name, "hello", true)
			out, err := cmd.Output()
			if code := exitCode(err); code != exitFailed || len(out) != 0 {
				t.Fatalf("exit %d, stdout %q", code, out)
			}
			if ee := err.(*exec.ExitError); !strings.Contains(string(ee.Stderr), "not logged in") {
				t.Errorf("stderr %q", ee.Stderr)
			}
		})
	}
}

// TestSlowCanBeStopped reads the slow run's events as they come and
// stops it after the second tick, as a cancelled prompt would be.
func TestSlowCanBeStopped(t *testing.T) {
	for _, name := range []string{"claude_code", "codex", "gemini_cli"} {
		t.Run(name, func(t *testing.T) {
			cmd, p, _ := command(t, name, "be SLOW", false)
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			ps, _ := prompt.NewParser(p.Prompt.Format, name)
			var evs []prompt.Event
			ticks := 0
			sc := bufio.NewScanner(stdout)
			for ticks < 2 && sc.Scan() {
				for _, e := range ps.Feed(append(sc.Bytes(), '\n')) {
					evs = append(evs, e)
					if e.Type == prompt.TypeAssistantText && strings.HasPrefix(e.Text, "tick ") {
						ticks++
					}
				}
			}
			if ticks != 2 {
				t.Fatalf("saw %d ticks before the output ended", ticks)
			}
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			err = cmd.Wait()
			evs = append(evs, ps.Finish(exitCode(err), nil)...)
			last := evs[len(evs)-1]
			if last.Type != prompt.TypeError || !strings.Contains(last.Message, "stopped by a signal") {
				t.Errorf("last event %+v", last)
			}
		})
	}
}

func TestBadCommandLines(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"claude", []string{"-p", "--output-format", "stream-json"}, "requires --verbose"},
		{"claude", []string{"--output-format", "stream-json", "--verbose"}, "only with -p"},
		{"codex", []string{"--json", "-"}, "only `codex exec`"},
		{"gemini", []string{"-p", "hi"}, "stream-json"},
		{"other", nil, "run me as claude, codex or gemini"},
	}
	for _, tt := range tests {
		var stderr bytes.Buffer
		if code := run(tt.name, tt.args, strings.NewReader("hi"), &bytes.Buffer{}, &stderr); code != exitFailed || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("%s %q: exit %d, stderr %q", tt.name, tt.args, code, stderr.String())
		}
	}
}
