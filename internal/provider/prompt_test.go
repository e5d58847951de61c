package provider

import (
	"strings"
	"testing"
)

// validPrompt is a prompt section the table tests break; it is appended
// to validProvider.
const validPrompt = `prompt:
  argv: [tiny, run, --json, "{options}"]
  env: [TINY_QUIET=1]
  input: stdin
  format: codex_exec_jsonl
  timeout: 10m
  options:
    - name: model
      type: string
      pattern: '[a-z0-9-]+'
      max_length: 40
      argv: [--model, "{value}"]
    - name: turns
      type: integer
      min: 1
      max: 50
      argv: ["--turns={value}"]
    - name: mode
      type: enum
      values: [safe, fast]
      argv: [--mode, "{value}"]
    - name: tools
      type: list
      pattern: '[A-Za-z]+'
      join: ","
      argv: [--tools, "{value}"]
`

func TestParsePrompt(t *testing.T) {
	p, err := Parse([]byte(validProvider+validPrompt), "tiny.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pr := p.Prompt
	if pr == nil || pr.Input != InputStdin || pr.Format != FormatCodexExecJSONL || pr.Timeout.D().String() != "10m0s" {
		t.Fatalf("prompt = %+v", pr)
	}
	if got := strings.Join(pr.OptionNames(), ","); got != "model,turns,mode,tools" {
		t.Errorf("OptionNames() = %s", got)
	}
	m, ok := pr.Option("model")
	if !ok || m.MaxLength != 40 || m.PatternRegexp() == nil {
		t.Fatalf("model option %+v", m)
	}
	// The pattern is anchored: a value with more around it fails.
	if !m.PatternRegexp().MatchString("gpt-5") || m.PatternRegexp().MatchString("gpt-5 --yolo") {
		t.Errorf("pattern %s not anchored", m.PatternRegexp())
	}
	if tl, _ := pr.Option("tools"); tl.MaxItems != 32 || tl.MaxLength != 256 {
		t.Errorf("list defaults: %+v", tl)
	}
	if _, ok := pr.Option("nope"); ok {
		t.Error("found an option that is not there")
	}
}

func TestParseWithoutPrompt(t *testing.T) {
	p, err := Parse([]byte(validProvider), "tiny.yaml")
	if err != nil || p.Prompt != nil {
		t.Fatalf("p.Prompt = %+v, err = %v", p, err)
	}
}

func TestParsePromptDefaults(t *testing.T) {
	src := strings.Replace(validProvider+validPrompt, "  timeout: 10m\n", "", 1)
	p, err := Parse([]byte(src), "tiny.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if p.Prompt.Timeout.D() != DefaultPromptTimeout {
		t.Errorf("timeout = %s", p.Prompt.Timeout.D())
	}
}

func TestParsePromptErrors(t *testing.T) {
	tests := []struct {
		name, from, to string
		want           string
	}{
		{"unknown key", "  input: stdin", "  input: stdin\n  shell: bash", "prompt.shell: unknown field"},
		{"unknown option key", "      max_length: 40", "      max_length: 40\n      default: x", "prompt.options[0].default: unknown field"},
		{"no argv", `  argv: [tiny, run, --json, "{options}"]`, "  argv: []", "prompt.argv: missing"},
		{"no options placeholder", `"{options}"]`, `x]`, "prompt.argv: want {options} exactly once"},
		{"options twice", `"{options}"]`, `"{options}", "{options}"]`, "found it 2 times"},
		{"options inside", `"{options}"]`, `"{options}", "a{options}"]`, "prompt.argv[4]: {options} must be a whole argument"},
		{"command placeholder", `argv: [tiny, run,`, `argv: ["{prompt}", run,`, "prompt.argv[0]: the command cannot be a placeholder"},
		{"prompt with stdin", `"{options}"]`, `"{options}", "{prompt}"]`, "prompt.argv: has {prompt} but input is stdin"},
		{"argument without prompt", "input: stdin", "input: argument", "prompt.argv: want {prompt} exactly once with input argument"},
		{"bad input", "input: stdin", "input: pipe", `prompt.input: unknown input "pipe" (want stdin or argument)`},
		{"missing format", "  format: codex_exec_jsonl\n", "", "prompt.format: missing (want claude_stream_json, codex_exec_jsonl, gemini_stream_json)"},
		{"bad format", "format: codex_exec_jsonl", "format: xml", `prompt.format: unknown format "xml"`},
		{"bad env", "env: [TINY_QUIET=1]", "env: [TINY_QUIET]", `prompt.env[0]: want KEY=VALUE`},
		{"too long", "timeout: 10m", "timeout: 7h", "prompt.timeout: 7h0m0s is longer than 6h0m0s"},
		{"bad option name", "name: model", "name: Model", `prompt.options[0].name: bad option name "Model"`},
		{"option twice", "name: turns", "name: model", "prompt.options[1].name: option model given twice"},
		{"missing type", "      type: string\n", "", "prompt.options[0].type: missing"},
		{"bad type", "type: string", "type: float", `prompt.options[0].type: unknown type "float"`},
		{"string without pattern", "      pattern: '[a-z0-9-]+'\n", "", "prompt.options[0].pattern: missing"},
		{"bad pattern", "pattern: '[a-z0-9-]+'", "pattern: '[a-'", "prompt.options[0].pattern: bad regular expression"},
		{"no value", `argv: [--model, "{value}"]`, `argv: [--model]`, "prompt.options[0].argv: want {value} exactly once, found it 0 times"},
		{"not a flag", `argv: [--model, "{value}"]`, `argv: [model, "{value}"]`, `prompt.options[0].argv[0]: want a flag`},
		{"placeholder in option", `argv: [--model, "{value}"]`, `argv: [--model, "{value}", "{prompt}"]`, "prompt.options[0].argv[2]: only {value} may appear"},
		{"value in argv", `"{options}"]`, `"{options}", "{value}"]`, "prompt.argv[4]: {value} belongs in an option's argv"},
		{"integer without max", "      max: 50\n", "", "prompt.options[1]: an integer option needs min and max"},
		{"negative min", "min: 1", "min: -5", "prompt.options[1].min: -5 is negative"},
		{"min over max", "min: 1", "min: 60", "prompt.options[1].max: 50 is less than min 60"},
		{"integer with pattern", "      min: 1\n", "      min: 1\n      pattern: x\n", "prompt.options[1].pattern: does not apply to an option of type integer"},
		{"enum without values", "values: [safe, fast]", "values: []", "prompt.options[2].values: missing"},
		{"enum value a flag", "values: [safe, fast]", "values: [safe, --fast]", `prompt.options[2].values[1]: bad choice "--fast"`},
		{"enum value twice", "values: [safe, fast]", "values: [safe, safe]", `prompt.options[2].values[1]: "safe" given twice`},
		{"enum with join", "values: [safe, fast]", "values: [safe, fast]\n      join: ','", "prompt.options[2].join: does not apply to an option of type enum"},
		{"string with join", "max_length: 40", "max_length: 40\n      join: ','", "prompt.options[0].join: does not apply to an option of type string"},
		{"max_length range", "max_length: 40", "max_length: 5000", "prompt.options[0].max_length: 5000 is out of range"},
		{"max_items range", "      join: \",\"", "      join: \",\"\n      max_items: 1000", "prompt.options[3].max_items: 1000 is out of range"},
		{"integer not a number", "max: 50", "max: lots", "tiny.yaml"},
	}
	src := validProvider + validPrompt
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(src, tt.from) {
				t.Fatalf("test bug: %q not in the valid prompt", tt.from)
			}
			bad := strings.Replace(src, tt.from, tt.to, 1)
			_, err := Parse([]byte(bad), "tiny.yaml")
			if err == nil {
				t.Fatalf("no error; source:\n%s", bad)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q\nlacks %q", err, tt.want)
			}
		})
	}
}

func TestShippedPrompts(t *testing.T) {
	r, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	formats := map[string]string{"claude_code": FormatClaudeStreamJSON, "codex": FormatCodexExecJSONL, "gemini_cli": FormatGeminiStreamJSON}
	for name, format := range formats {
		p, err := r.Get(name)
		if err != nil {
			t.Fatal(err)
		}
		if p.Prompt == nil {
			t.Fatalf("%s has no prompt section", name)
		}
		if p.Prompt.Format != format || p.Prompt.Input != InputStdin || p.Prompt.Argv[0] != p.Login.Argv[0] {
			t.Errorf("%s: prompt %+v", name, p.Prompt)
		}
		if _, ok := p.Prompt.Option("model"); !ok {
			t.Errorf("%s: no model option", name)
		}
	}
}
