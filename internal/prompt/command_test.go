package prompt

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/provider"
)

func shipped(t *testing.T, name string) provider.Provider {
	t.Helper()
	r, err := provider.Load()
	if err != nil {
		t.Fatal(err)
	}
	p, err := r.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// jsonOptions decodes options as the API would.
func jsonOptions(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestBuildCommandShipped(t *testing.T) {
	tests := []struct {
		provider, options string
		want              []string
		env               []string
	}{
		{"claude_code", `{"model": "sonnet", "max_turns": 5, "permission_mode": "acceptEdits", "allowed_tools": ["Edit", "Bash(git:*)"]}`,
			[]string{"claude", "-p", "--output-format", "stream-json", "--verbose", "--model", "sonnet", "--max-turns", "5", "--permission-mode", "acceptEdits", "--allowed-tools", "Edit,Bash(git:*)"},
			[]string{"DISABLE_AUTOUPDATER=1", "DISABLE_TELEMETRY=1"}},
		{"claude_code", `{}`, []string{"claude", "-p", "--output-format", "stream-json", "--verbose"}, []string{"DISABLE_AUTOUPDATER=1", "DISABLE_TELEMETRY=1"}},
		{"codex", `{"sandbox": "workspace-write", "model": "gpt-5-codex"}`,
			[]string{"codex", "exec", "--json", "--color", "never", "--skip-git-repo-check", "-c", `cli_auth_credentials_store="file"`, "--model", "gpt-5-codex", "--sandbox", "workspace-write", "-"}, nil},
		{"gemini_cli", `{"approval_mode": "yolo", "allowed_tools": []}`,
			[]string{"gemini", "--output-format", "stream-json", "--approval-mode", "yolo", "-p", ""},
			[]string{"GOOGLE_GENAI_USE_GCA=true", "GEMINI_CLI_TRUST_WORKSPACE=true"}},
	}
	for _, tt := range tests {
		t.Run(tt.provider, func(t *testing.T) {
			prompt := "-rf: a prompt that starts with a dash\nand has lines"
			argv, env, stdin, err := BuildCommand(shipped(t, tt.provider), Request{Prompt: prompt, Cwd: "/home/hearth/project", Options: jsonOptions(t, tt.options)})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(argv, tt.want) {
				t.Errorf("argv %q\nwant %q", argv, tt.want)
			}
			if !slices.Equal(env, tt.env) {
				t.Errorf("env %q, want %q", env, tt.env)
			}
			if string(stdin) != prompt {
				t.Errorf("stdin %q", stdin)
			}
		})
	}
}

// tiny is a provider whose prompt takes its text as an argument.
func tiny(t *testing.T) provider.Provider {
	t.Helper()
	p, err := provider.Parse([]byte(`name: tiny
display_name: Tiny
login:
  argv: [tiny, login]
  url_pattern: 'https://\S+'
credentials:
  - path: ~/.tiny.json
    format: json
    required: [token]
prompt:
  argv: [tiny, "{options}", --, "{prompt}"]
  input: argument
  format: gemini_stream_json
  options:
    - name: tags
      type: list
      pattern: '[a-z]+'
      max_items: 3
      argv: [--tag, "{value}"]
    - name: level
      type: integer
      min: 0
      max: 9
      argv: ["--level={value}"]
`), "tiny.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return *p
}

func TestBuildCommandArgument(t *testing.T) {
	argv, env, stdin, err := BuildCommand(tiny(t), Request{Prompt: "hello", Options: map[string]any{"tags": []string{"a", "b"}, "level": json.Number("0")}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"tiny", "--tag", "a", "--tag", "b", "--level=0", "--", "hello"}
	if !slices.Equal(argv, want) || env != nil || stdin != nil {
		t.Errorf("argv %q env %q stdin %q", argv, env, stdin)
	}
	// As a whole argument, a prompt that looks like a flag is refused
	// (even after "--", which not every CLI honours).
	if _, _, _, err := BuildCommand(tiny(t), Request{Prompt: "--help"}); err == nil || !strings.Contains(err.Error(), `starting with "-"`) {
		t.Errorf("err = %v", err)
	}
	if _, _, _, err := BuildCommand(tiny(t), Request{Prompt: strings.Repeat("x", 200<<10)}); err == nil || !strings.Contains(err.Error(), "as an argument") {
		t.Errorf("err = %v", err)
	}
}

func TestBuildCommandErrors(t *testing.T) {
	claude := shipped(t, "claude_code")
	tests := []struct {
		name string
		p    provider.Provider
		req  Request
		want string
	}{
		{"no prompt section", provider.Provider{Name: "x"}, Request{Prompt: "hi"}, "provider x does not run prompts"},
		{"empty prompt", claude, Request{Prompt: " \n"}, "prompt: missing"},
		{"prompt too long", claude, Request{Prompt: strings.Repeat("x", MaxPromptBytes+1)}, "prompt: 262145 bytes is more than 262144"},
		{"prompt not utf8", claude, Request{Prompt: "a\xffb"}, "prompt: not valid UTF-8"},
		{"prompt NUL", claude, Request{Prompt: "a\x00b"}, "prompt: contains a NUL"},
		{"relative cwd", claude, Request{Prompt: "hi", Cwd: "project"}, `cwd: "project" is not an absolute path`},
		{"unclean cwd", claude, Request{Prompt: "hi", Cwd: "/home/../etc"}, "cwd: \"/home/../etc\" is not clean"},
		{"cwd control", claude, Request{Prompt: "hi", Cwd: "/tmp/a\nb"}, "cwd: "},
		{"unknown option", claude, Request{Prompt: "hi", Options: map[string]any{"yolo": true}}, "options.yolo: unknown option (known: model, max_turns, permission_mode, effort, allowed_tools, disallowed_tools)"},
		{"model not a string", claude, Request{Prompt: "hi", Options: map[string]any{"model": 3.0}}, "options.model: want a string, got a number"},
		{"model pattern", claude, Request{Prompt: "hi", Options: map[string]any{"model": "son net"}}, `options.model: "son net" does not match`},
		{"model flag", claude, Request{Prompt: "hi", Options: map[string]any{"model": "--dangerously-skip-permissions"}}, `options.model: "--dangerously-skip-permissions" starts with "-"`},
		{"model too long", claude, Request{Prompt: "hi", Options: map[string]any{"model": strings.Repeat("a", 101)}}, "options.model: 101 bytes is longer than 100"},
		{"turns fraction", claude, Request{Prompt: "hi", Options: map[string]any{"max_turns": 2.5}}, "options.max_turns: want a whole number, got 2.5"},
		{"turns range", claude, Request{Prompt: "hi", Options: map[string]any{"max_turns": 0.0}}, "options.max_turns: 0 is out of range (1 to 1000)"},
		{"turns string", claude, Request{Prompt: "hi", Options: map[string]any{"max_turns": "5"}}, `options.max_turns: want a whole number, got "5"`},
		{"enum", claude, Request{Prompt: "hi", Options: map[string]any{"permission_mode": "yolo"}}, `options.permission_mode: want one of acceptEdits, auto, bypassPermissions, manual, dontAsk, plan, got "yolo"`},
		{"list not a list", claude, Request{Prompt: "hi", Options: map[string]any{"allowed_tools": "Edit"}}, "options.allowed_tools: want a list of strings, got a string"},
		{"list item type", claude, Request{Prompt: "hi", Options: map[string]any{"allowed_tools": []any{"Edit", 1.0}}}, "options.allowed_tools: [1]: want a string, got a number"},
		{"list item pattern", claude, Request{Prompt: "hi", Options: map[string]any{"allowed_tools": []any{"Bash(rm -rf /)"}}}, `options.allowed_tools: [0]: "Bash(rm -rf /)" does not match`},
		{"list too long", claude, Request{Prompt: "hi", Options: map[string]any{"allowed_tools": make([]any, 65)}}, "options.allowed_tools: more than 64 items"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, _, err := BuildCommand(tt.p, tt.req)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("error %v is not ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q\nlacks %q", err, tt.want)
			}
		})
	}
}

func TestBuildCommandNilOptionIsLeftOut(t *testing.T) {
	argv, _, _, err := BuildCommand(shipped(t, "codex"), Request{Prompt: "hi", Options: map[string]any{"model": nil}})
	if err != nil || slices.Contains(argv, "--model") {
		t.Fatalf("argv %q err %v", argv, err)
	}
}
