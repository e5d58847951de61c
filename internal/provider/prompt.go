package provider

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Prompt output formats: how a CLI writes its structured output on stdout
// when it runs a prompt non-interactively. internal/prompt has one parser
// per format.
const (
	// FormatClaudeStreamJSON is `claude -p --output-format stream-json
	// --verbose`: one JSON message per line (system/init, assistant,
	// user, result).
	FormatClaudeStreamJSON = "claude_stream_json"
	// FormatCodexExecJSONL is `codex exec --json`: one thread event per
	// line (thread.started, item.*, turn.completed, ...).
	FormatCodexExecJSONL = "codex_exec_jsonl"
	// FormatGeminiStreamJSON is `gemini --output-format stream-json`:
	// one event per line (init, message, tool_use, tool_result, error,
	// result).
	FormatGeminiStreamJSON = "gemini_stream_json"
)

// PromptFormats lists the prompt output formats, sorted.
func PromptFormats() []string {
	return []string{FormatClaudeStreamJSON, FormatCodexExecJSONL, FormatGeminiStreamJSON}
}

// How the prompt text reaches the CLI.
const (
	// InputStdin writes the prompt to the CLI's standard input and closes
	// it: a long prompt is no argument the kernel may refuse, and a
	// prompt starting with "-" cannot be taken for a flag.
	InputStdin = "stdin"
	// InputArgument puts the prompt in the argv element holding
	// "{prompt}".
	InputArgument = "argument"
)

// Option types.
const (
	OptionString  = "string"  // a string matching pattern
	OptionInteger = "integer" // a whole number in [min, max]
	OptionEnum    = "enum"    // one of values
	OptionList    = "list"    // a list of strings, each matching pattern
)

// Placeholders in prompt argv templates.
const (
	PlaceholderOptions = "{options}" // where the request's option flags go
	PlaceholderPrompt  = "{prompt}"  // the prompt text (input: argument)
	PlaceholderValue   = "{value}"   // an option's value in its argv
)

// Defaults and limits for prompts.
const (
	DefaultPromptTimeout = 30 * time.Minute
	maxPromptTimeout     = 6 * time.Hour
	maxOptionStr         = 1024 // bound on a string option's max_length
	maxListItems         = 256
)

// Prompt is how hearth runs one prompt through the CLI non-interactively
// in a workspace VM: Argv (with the request's options expanded where it
// says {options}) run as the workspace user with Env added, the prompt
// passed as Input says, the CLI's stdout parsed as Format, the run
// stopped after Timeout.
type Prompt struct {
	Argv []string `yaml:"argv"`
	// Env is KEY=VALUE; an empty VALUE sets the variable to "".
	Env     []string       `yaml:"env"`
	Input   string         `yaml:"input"` // stdin | argument
	Format  string         `yaml:"format"`
	Timeout Duration       `yaml:"timeout"`
	Options []PromptOption `yaml:"options"`
}

// PromptOption is a setting a prompt request may give (a model, a turn
// limit, a sandbox mode...) and the flags it becomes. Argv holds {value}
// once; for a list without Join it is repeated for each item.
type PromptOption struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	Type        string `yaml:"type"`
	// Pattern is an RE2 expression the whole value (each item of a list)
	// must match (string, list).
	Pattern string `yaml:"pattern"`
	// MaxLength bounds a string or each list item in bytes (default 256).
	MaxLength int `yaml:"max_length"`
	// Values are an enum's choices.
	Values []string `yaml:"values"`
	// Min and Max bound an integer.
	Min *int64 `yaml:"min"`
	Max *int64 `yaml:"max"`
	// MaxItems bounds a list's length (default 32).
	MaxItems int `yaml:"max_items"`
	// Join, for a list, joins the items into one {value} with this
	// separator (no item may contain it); empty repeats Argv per item.
	Join string   `yaml:"join"`
	Argv []string `yaml:"argv"`

	patternRE *regexp.Regexp
}

// PatternRegexp returns the compiled pattern, anchored at both ends (nil
// for an option without one).
func (o PromptOption) PatternRegexp() *regexp.Regexp { return o.patternRE }

// Option returns the prompt option called name.
func (p Prompt) Option(name string) (PromptOption, bool) {
	i := slices.IndexFunc(p.Options, func(o PromptOption) bool { return o.Name == name })
	if i < 0 {
		return PromptOption{}, false
	}
	return p.Options[i], true
}

// OptionNames lists the option names in their order.
func (p Prompt) OptionNames() []string {
	names := make([]string, len(p.Options))
	for i, o := range p.Options {
		names[i] = o.Name
	}
	return names
}

// validatePrompt checks a provider's prompt section (which is optional)
// and fills in defaults.
func (c checker) validatePrompt(p *Prompt) {
	if p == nil {
		return
	}
	c.validatePromptArgv(p)
	c.validateEnv("prompt.env", p.Env)
	if !slices.Contains(PromptFormats(), p.Format) {
		c.Errorf("prompt.format", "%s (want %s)", missingOrUnknown("format", p.Format), strings.Join(PromptFormats(), ", "))
	}
	if p.Timeout == 0 {
		p.Timeout = Duration(DefaultPromptTimeout)
	} else if p.Timeout.D() > maxPromptTimeout {
		c.Errorf("prompt.timeout", "%s is longer than %s", p.Timeout.D(), maxPromptTimeout)
	}
	seen := map[string]bool{}
	for i := range p.Options {
		o := &p.Options[i]
		f := fmt.Sprintf("prompt.options[%d]", i)
		switch {
		case o.Name == "":
			c.Errorf(f+".name", "missing")
		case !nameRE.MatchString(o.Name):
			c.Errorf(f+".name", "bad option name %q (want [a-z][a-z0-9_]*, at most 31 characters)", o.Name)
		case seen[o.Name]:
			c.Errorf(f+".name", "option %s given twice", o.Name)
		}
		seen[o.Name] = true
		c.validateOption(f, o)
	}
}

func (c checker) validatePromptArgv(p *Prompt) {
	if len(p.Argv) == 0 {
		c.Errorf("prompt.argv", "missing (want the command and its arguments, e.g. [codex, exec, --json, %q, -])", PlaceholderOptions)
		return
	}
	if strings.Contains(p.Argv[0], "{") {
		c.Errorf("prompt.argv[0]", "the command cannot be a placeholder")
	}
	var options, prompts int
	for i, a := range p.Argv {
		f := fmt.Sprintf("prompt.argv[%d]", i)
		switch {
		case a == PlaceholderOptions:
			options++
		case strings.Contains(a, PlaceholderOptions):
			c.Errorf(f, "%s must be a whole argument", PlaceholderOptions)
		case strings.Contains(a, PlaceholderValue):
			c.Errorf(f, "%s belongs in an option's argv", PlaceholderValue)
		}
		if strings.Contains(a, PlaceholderPrompt) {
			prompts += strings.Count(a, PlaceholderPrompt)
		}
		if strings.ContainsAny(a, "\x00\n\r") {
			c.Errorf(f, "has control characters")
		}
	}
	if options != 1 {
		c.Errorf("prompt.argv", "want %s exactly once (where the request's option flags go), found it %d times", PlaceholderOptions, options)
	}
	switch p.Input {
	case InputStdin:
		if prompts > 0 {
			c.Errorf("prompt.argv", "has %s but input is stdin", PlaceholderPrompt)
		}
	case InputArgument:
		if prompts != 1 {
			c.Errorf("prompt.argv", "want %s exactly once with input argument, found it %d times", PlaceholderPrompt, prompts)
		}
	default:
		c.Errorf("prompt.input", "%s (want stdin or argument)", missingOrUnknown("input", p.Input))
	}
}

func (c checker) validateOption(f string, o *PromptOption) {
	c.validateOptionArgv(f, o)
	if o.MaxLength < 0 || o.MaxLength > maxOptionStr {
		c.Errorf(f+".max_length", "%d is out of range (1 to %d)", o.MaxLength, maxOptionStr)
	} else if o.MaxLength == 0 {
		o.MaxLength = 256
	}
	if o.MaxItems < 0 || o.MaxItems > maxListItems {
		c.Errorf(f+".max_items", "%d is out of range (1 to %d)", o.MaxItems, maxListItems)
	} else if o.MaxItems == 0 {
		o.MaxItems = 32
	}
	unused := func(field string, set bool) {
		if set {
			c.Errorf(f+"."+field, "does not apply to an option of type %s", o.Type)
		}
	}
	switch o.Type {
	case OptionString, OptionList:
		if o.Pattern == "" {
			c.Errorf(f+".pattern", "missing (a %s option's values must be constrained)", o.Type)
		} else if re, err := regexp.Compile(`^(?:` + o.Pattern + `)$`); err != nil {
			c.Errorf(f+".pattern", "bad regular expression: %v", err)
		} else {
			o.patternRE = re
		}
		unused("values", o.Values != nil)
		unused("min", o.Min != nil)
		unused("max", o.Max != nil)
		if o.Type == OptionString {
			unused("max_items", c.Has(f+".max_items"))
			unused("join", o.Join != "")
		} else if strings.ContainsAny(o.Join, "\x00\n\r") {
			c.Errorf(f+".join", "has control characters")
		}
	case OptionEnum:
		if len(o.Values) == 0 {
			c.Errorf(f+".values", "missing (want the choices)")
		}
		seen := map[string]bool{}
		for j, v := range o.Values {
			vf := fmt.Sprintf("%s.values[%d]", f, j)
			switch {
			case v == "" || strings.HasPrefix(v, "-") || strings.ContainsAny(v, "\x00\n\r"):
				c.Errorf(vf, "bad choice %q (empty, a flag or with control characters)", v)
			case seen[v]:
				c.Errorf(vf, "%q given twice", v)
			}
			seen[v] = true
		}
		unused("pattern", o.Pattern != "")
		unused("min", o.Min != nil)
		unused("max", o.Max != nil)
		unused("max_items", c.Has(f+".max_items"))
		unused("max_length", c.Has(f+".max_length"))
		unused("join", o.Join != "")
	case OptionInteger:
		switch {
		case o.Min == nil || o.Max == nil:
			c.Errorf(f, "an integer option needs min and max")
		case *o.Min < 0:
			c.Errorf(f+".min", "%d is negative (a value may not look like a flag)", *o.Min)
		case *o.Min > *o.Max:
			c.Errorf(f+".max", "%d is less than min %d", *o.Max, *o.Min)
		}
		unused("pattern", o.Pattern != "")
		unused("values", o.Values != nil)
		unused("max_items", c.Has(f+".max_items"))
		unused("max_length", c.Has(f+".max_length"))
		unused("join", o.Join != "")
	case "":
		c.Errorf(f+".type", "missing (want string, integer, enum or list)")
	default:
		c.Errorf(f+".type", "unknown type %q (want string, integer, enum or list)", o.Type)
	}
}

func (c checker) validateOptionArgv(f string, o *PromptOption) {
	if len(o.Argv) == 0 {
		c.Errorf(f+".argv", "missing (want the flags, e.g. [--model, %q])", PlaceholderValue)
		return
	}
	values := 0
	for j, a := range o.Argv {
		af := fmt.Sprintf("%s.argv[%d]", f, j)
		values += strings.Count(a, PlaceholderValue)
		switch {
		case a == "":
			c.Errorf(af, "empty argument")
		case strings.Contains(a, PlaceholderOptions) || strings.Contains(a, PlaceholderPrompt):
			c.Errorf(af, "only %s may appear in an option's argv", PlaceholderValue)
		case strings.ContainsAny(a, "\x00\n\r"):
			c.Errorf(af, "has control characters")
		}
	}
	if values != 1 {
		c.Errorf(f+".argv", "want %s exactly once, found it %d times", PlaceholderValue, values)
	}
	if !strings.HasPrefix(o.Argv[0], "-") {
		c.Errorf(f+".argv[0]", "want a flag (starting with -), got %q", o.Argv[0])
	}
}

// validateEnv checks KEY=VALUE entries.
func (c checker) validateEnv(field string, env []string) {
	seen := map[string]bool{}
	for i, kv := range env {
		f := fmt.Sprintf("%s[%d]", field, i)
		k, _, ok := strings.Cut(kv, "=")
		switch {
		case !ok:
			c.Errorf(f, "want KEY=VALUE, got %q", kv)
		case !envKeyRE.MatchString(k):
			c.Errorf(f, "bad variable name %q", k)
		case seen[k]:
			c.Errorf(f, "variable %s set twice", k)
		}
		seen[k] = true
	}
}

func missingOrUnknown(what, v string) string {
	if v == "" {
		return "missing"
	}
	return fmt.Sprintf("unknown %s %q", what, v)
}
