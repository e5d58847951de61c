// Command fakeprompt is a fake of the AI coding CLIs' non-interactive
// prompt runs for hearth's tests. Installed (or linked) as claude, codex
// or gemini, or run as `fakeprompt claude|codex|gemini ...`, it accepts
// the command lines of providers/*.yaml's prompt sections
// (`claude -p --output-format stream-json --verbose ...`,
// `codex exec --json ... -`, `gemini --output-format stream-json ... -p ""`),
// reads the prompt from stdin (or the argument), and prints a short
// transcript in that CLI's real output format (docs/providers.md,
// "Prompts"): a session start, a tool call that prints the working
// directory and its result, the answer "You said: <prompt>", usage and
// the result.
//
// Like the real CLIs it fails without its credential file
// (~/.claude/.credentials.json, ~/.codex/auth.json,
// ~/.gemini/oauth_creds.json): exit 1 with a message on stderr. The
// prompt steers it: one containing FAIL makes it print an error on stderr
// and exit 3 after its session start; one containing SLOW makes it print
// one assistant text event per second for a minute
// ($FAKEPROMPT_SLOW_SECONDS overrides the count) before it answers.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if name == "fakeprompt" && len(args) > 0 {
		name, args = args[0], args[1:]
	}
	os.Exit(run(name, args, os.Stdin, os.Stdout, os.Stderr))
}

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1 // bad command line, no credential, no prompt
	exitAsked  = 3 // the prompt said FAIL
)

// cli is what differs between the fakes.
type cli struct {
	credential string          // under $HOME
	valueFlags map[string]bool // flags that take a value
	check      func(flags map[string]string, bools map[string]bool, pos []string) error
	// usesStdin says the prompt comes from stdin, given the positionals.
	usesStdin func(flags map[string]string, pos []string) bool
	prompt    func(flags map[string]string, pos []string, stdin string) string
	newWriter func(w io.Writer, model string) transcript
	model     string // when --model is not given
}

// transcript writes one run in a CLI's format.
type transcript interface {
	start(cwd string)
	toolUse(id, command string)
	toolResult(id, output string)
	text(s string)
	result(text string, turns int)
}

var clis = map[string]cli{
	"claude": {
		credential: ".claude/.credentials.json",
		valueFlags: set("--output-format", "--model", "--max-turns", "--permission-mode", "--effort", "--allowed-tools", "--allowedTools", "--disallowed-tools", "--disallowedTools", "--input-format"),
		check: func(f map[string]string, b map[string]bool, _ []string) error {
			if !b["-p"] && !b["--print"] {
				return fmt.Errorf("the fake runs only with -p")
			}
			if f["--output-format"] != "stream-json" {
				return fmt.Errorf("the fake writes only --output-format stream-json")
			}
			if !b["--verbose"] {
				return fmt.Errorf("Error: When using --print, --output-format=stream-json requires --verbose")
			}
			return nil
		},
		usesStdin: func(_ map[string]string, pos []string) bool { return len(pos) == 0 },
		prompt: func(_ map[string]string, pos []string, stdin string) string {
			if len(pos) > 0 {
				return pos[0]
			}
			return stdin
		},
		newWriter: func(w io.Writer, model string) transcript { return &claudeWriter{w: w, model: model} },
		model:     "claude-sonnet-4-5-20250929",
	},
	"codex": {
		credential: ".codex/auth.json",
		valueFlags: set("--color", "-c", "--config", "-m", "--model", "-s", "--sandbox", "-C", "--cd"),
		check: func(_ map[string]string, b map[string]bool, pos []string) error {
			if len(pos) == 0 || pos[0] != "exec" {
				return fmt.Errorf("the fake runs only `codex exec`")
			}
			if !b["--json"] {
				return fmt.Errorf("the fake writes only --json")
			}
			return nil
		},
		usesStdin: func(_ map[string]string, pos []string) bool { return len(pos) < 2 || pos[1] == "-" },
		prompt: func(_ map[string]string, pos []string, stdin string) string {
			if len(pos) >= 2 && pos[1] != "-" {
				return pos[1]
			}
			return stdin
		},
		newWriter: func(w io.Writer, _ string) transcript { return &codexWriter{w: w} },
		model:     "gpt-5-codex",
	},
	"gemini": {
		credential: ".gemini/oauth_creds.json",
		valueFlags: set("-o", "--output-format", "-m", "--model", "--approval-mode", "--allowed-tools", "-p", "--prompt"),
		check: func(f map[string]string, _ map[string]bool, _ []string) error {
			if f["-o"]+f["--output-format"] != "stream-json" {
				return fmt.Errorf("the fake writes only --output-format stream-json")
			}
			if _, ok := f["-p"]; !ok {
				if _, ok := f["--prompt"]; !ok {
					return fmt.Errorf("the fake runs only headless (-p)")
				}
			}
			return nil
		},
		usesStdin: func(map[string]string, []string) bool { return true },
		// Like gemini: stdin first, then the -p text.
		prompt: func(f map[string]string, _ []string, stdin string) string {
			p := f["-p"] + f["--prompt"]
			if stdin != "" && p != "" {
				return stdin + "\n\n" + p
			}
			return stdin + p
		},
		newWriter: func(w io.Writer, model string) transcript { return &geminiWriter{w: w, model: model} },
		model:     "gemini-2.5-pro",
	},
}

func set(names ...string) map[string]bool {
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
	}
	return m
}

func run(name string, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c, ok := clis[name]
	if !ok {
		fmt.Fprintf(stderr, "fakeprompt: run me as claude, codex or gemini, not %q\n", name)
		return exitFailed
	}
	flags, bools, pos := parseArgs(args, c.valueFlags)
	if err := c.check(flags, bools, pos); err != nil {
		fmt.Fprintln(stderr, err)
		return exitFailed
	}
	home, err := os.UserHomeDir()
	if err != nil {
		fmt.Fprintf(stderr, "%s: no home directory: %v\n", name, err)
		return exitFailed
	}
	if _, err := os.Stat(filepath.Join(home, c.credential)); err != nil {
		fmt.Fprintf(stderr, "%s: not logged in: %v\n", name, err)
		return exitFailed
	}
	var in string
	if c.usesStdin(flags, pos) {
		b, err := io.ReadAll(io.LimitReader(stdin, 8<<20))
		if err != nil {
			fmt.Fprintf(stderr, "%s: read stdin: %v\n", name, err)
			return exitFailed
		}
		in = string(b)
	}
	prompt := c.prompt(flags, pos, in)
	if strings.TrimSpace(prompt) == "" {
		fmt.Fprintf(stderr, "%s: no prompt provided via stdin or argument\n", name)
		return exitFailed
	}
	model := flags["--model"] + flags["-m"]
	if model == "" {
		model = c.model
	}
	cwd, err := os.Getwd()
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return exitFailed
	}

	t := c.newWriter(stdout, model)
	t.start(cwd)
	if strings.Contains(prompt, "FAIL") {
		fmt.Fprintf(stderr, "%s: failing as asked by the prompt\n", name)
		return exitAsked
	}
	turns := 2
	if strings.Contains(prompt, "SLOW") {
		n := 60
		if s, err := strconv.Atoi(os.Getenv("FAKEPROMPT_SLOW_SECONDS")); err == nil && s >= 0 {
			n = s
		}
		for i := range n {
			t.text(fmt.Sprintf("tick %d\n", i+1))
			time.Sleep(time.Second)
		}
	}
	t.text("I will look at the working directory.")
	t.toolUse("call_1", "pwd")
	t.toolResult("call_1", cwd+"\n")
	answer := "You said: " + prompt
	t.text(answer)
	t.result(answer, turns)
	return exitOK
}

// parseArgs splits args into flags with values (--f v or --f=v), flags
// without values and positionals.
func parseArgs(args []string, valueFlags map[string]bool) (map[string]string, map[string]bool, []string) {
	flags, bools := map[string]string{}, map[string]bool{}
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "-" || !strings.HasPrefix(a, "-") {
			pos = append(pos, a)
			continue
		}
		if k, v, ok := strings.Cut(a, "="); ok && valueFlags[k] {
			flags[k] = v
			continue
		}
		if valueFlags[a] && i+1 < len(args) {
			flags[a] = args[i+1]
			i++
			continue
		}
		bools[a] = true
	}
	return flags, bools, pos
}

// line writes v as one JSON line.
func line(w io.Writer, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only the fake's own maps are encoded
	}
	_, _ = w.Write(append(b, '\n'))
}

type obj = map[string]any

// claudeWriter writes `claude -p --output-format stream-json --verbose`.
type claudeWriter struct {
	w     io.Writer
	model string
	began time.Time
}

const fakeSession = "00000000-0000-4000-8000-00000000fa4e"

func (c *claudeWriter) start(cwd string) {
	c.began = time.Now()
	line(c.w, obj{"type": "system", "subtype": "init", "cwd": cwd, "session_id": fakeSession, "tools": []string{"Bash", "Read", "Edit"},
		"mcp_servers": []any{}, "model": c.model, "permissionMode": "default", "slash_commands": []string{}, "apiKeySource": "none",
		"claude_code_version": "2.1.332", "output_style": "default", "uuid": "00000000-0000-4000-8000-000000000001"})
}

func (c *claudeWriter) assistant(content ...obj) {
	line(c.w, obj{"type": "assistant", "message": obj{"id": "msg_fake", "type": "message", "role": "assistant", "model": c.model,
		"content": content, "stop_reason": nil, "usage": obj{"input_tokens": 3, "output_tokens": 5}},
		"parent_tool_use_id": nil, "session_id": fakeSession, "uuid": "00000000-0000-4000-8000-000000000002"})
}

func (c *claudeWriter) text(s string) { c.assistant(obj{"type": "text", "text": s}) }

func (c *claudeWriter) toolUse(id, command string) {
	c.assistant(obj{"type": "tool_use", "id": id, "name": "Bash", "input": obj{"command": command}})
}

func (c *claudeWriter) toolResult(id, output string) {
	line(c.w, obj{"type": "user", "message": obj{"role": "user", "content": []obj{{"tool_use_id": id, "type": "tool_result", "content": output, "is_error": false}}},
		"parent_tool_use_id": nil, "session_id": fakeSession, "uuid": "00000000-0000-4000-8000-000000000003"})
}

func (c *claudeWriter) result(text string, turns int) {
	d := time.Since(c.began).Milliseconds()
	line(c.w, obj{"type": "result", "subtype": "success", "is_error": false, "duration_ms": d, "duration_api_ms": d, "num_turns": turns,
		"result": text, "stop_reason": "end_turn", "session_id": fakeSession, "total_cost_usd": 0.001,
		"usage":      obj{"input_tokens": 6, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 10},
		"modelUsage": obj{}, "permission_denials": []any{}, "uuid": "00000000-0000-4000-8000-000000000004"})
}

// codexWriter writes `codex exec --json`.
type codexWriter struct {
	w     io.Writer
	items int
}

func (c *codexWriter) item(event string, item obj) { line(c.w, obj{"type": event, "item": item}) }

func (c *codexWriter) nextID() string { c.items++; return fmt.Sprintf("item_%d", c.items-1) }

func (c *codexWriter) start(string) {
	line(c.w, obj{"type": "thread.started", "thread_id": fakeSession})
	line(c.w, obj{"type": "turn.started"})
}

func (c *codexWriter) text(s string) {
	c.item("item.completed", obj{"id": c.nextID(), "type": "agent_message", "text": s})
}

func (c *codexWriter) toolUse(id, command string) {
	c.item("item.started", obj{"id": id, "type": "command_execution", "command": command, "aggregated_output": "", "exit_code": nil, "status": "in_progress"})
}

func (c *codexWriter) toolResult(id, output string) {
	c.item("item.completed", obj{"id": id, "type": "command_execution", "command": "pwd", "aggregated_output": output, "exit_code": 0, "status": "completed"})
}

func (c *codexWriter) result(string, int) {
	line(c.w, obj{"type": "turn.completed", "usage": obj{"input_tokens": 6, "cached_input_tokens": 0, "output_tokens": 10}})
}

// geminiWriter writes `gemini --output-format stream-json`.
type geminiWriter struct {
	w     io.Writer
	model string
	began time.Time
}

func now() string { return time.Now().UTC().Format("2006-01-02T15:04:05.000Z") }

func (g *geminiWriter) start(string) {
	g.began = time.Now()
	line(g.w, obj{"type": "init", "timestamp": now(), "session_id": fakeSession, "model": g.model})
}

func (g *geminiWriter) text(s string) {
	line(g.w, obj{"type": "message", "timestamp": now(), "role": "assistant", "content": s, "delta": true})
}

func (g *geminiWriter) toolUse(id, command string) {
	line(g.w, obj{"type": "tool_use", "timestamp": now(), "tool_name": "run_shell_command", "tool_id": id, "parameters": obj{"command": command}})
}

func (g *geminiWriter) toolResult(id, output string) {
	line(g.w, obj{"type": "tool_result", "timestamp": now(), "tool_id": id, "status": "success", "output": output})
}

func (g *geminiWriter) result(string, int) {
	stats := obj{"total_tokens": 16, "input_tokens": 6, "output_tokens": 10, "cached": 0, "input": 6,
		"duration_ms": time.Since(g.began).Milliseconds(), "tool_calls": 1, "models": obj{}}
	line(g.w, obj{"type": "result", "timestamp": now(), "status": "success", "stats": stats})
}
