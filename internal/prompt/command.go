package prompt

import (
	"encoding/json"
	"fmt"
	"math"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/provider"
)

// Request is a prompt to run through a provider's CLI.
type Request struct {
	// Prompt is the text sent to the CLI.
	Prompt string `json:"prompt"`
	// Cwd is the working directory in the guest (absolute; empty for the
	// workspace user's home).
	Cwd string `json:"cwd,omitempty"`
	// Options are the provider's prompt options by name (see its
	// prompt.options): strings, whole numbers and lists of strings as
	// JSON decodes them.
	Options map[string]any `json:"options,omitempty"`
}

// Bounds on a request.
const (
	// MaxPromptBytes bounds a prompt's text.
	MaxPromptBytes = 256 << 10
	// maxArgBytes is the kernel's bound on one argv string (MAX_ARG_STRLEN
	// on Linux, including the NUL).
	maxArgBytes = 128<<10 - 1
	maxCwdBytes = 4096
)

// BuildCommand returns what runs req through p's CLI: the argv (the
// provider's prompt argv with the options' flags where it says {options}
// and, for input argument, the prompt in place of {prompt}), the
// variables to add to the workspace user's environment, and what to
// write to the CLI's standard input before closing it (nil for input
// argument). The run's working directory is req.Cwd and its bound
// p.Prompt.Timeout. Errors wrap errdefs.ErrInvalid and name the field
// (prompt, cwd, options.<name>).
func BuildCommand(p provider.Provider, req Request) (argv, env []string, stdin []byte, err error) {
	spec := p.Prompt
	if spec == nil {
		return nil, nil, nil, errdefs.Invalidf("provider %s does not run prompts", p.Name)
	}
	if err := checkPrompt(req.Prompt, spec.Input); err != nil {
		return nil, nil, nil, err
	}
	if err := checkCwd(req.Cwd); err != nil {
		return nil, nil, nil, err
	}
	flags, err := optionArgs(*spec, req.Options)
	if err != nil {
		return nil, nil, nil, err
	}
	for _, a := range spec.Argv {
		switch {
		case a == provider.PlaceholderOptions:
			argv = append(argv, flags...)
		case spec.Input == provider.InputArgument && strings.Contains(a, provider.PlaceholderPrompt):
			if a == provider.PlaceholderPrompt && strings.HasPrefix(req.Prompt, "-") {
				return nil, nil, nil, errdefs.Invalidf("prompt: %s takes the prompt as an argument, where one starting with \"-\" would be read as a flag", p.Name)
			}
			a = strings.Replace(a, provider.PlaceholderPrompt, req.Prompt, 1)
			if len(a) > maxArgBytes {
				return nil, nil, nil, errdefs.Invalidf("prompt: %d bytes is more than %s takes as an argument (%d)", len(req.Prompt), p.Name, maxArgBytes)
			}
			argv = append(argv, a)
		default:
			argv = append(argv, a)
		}
	}
	if spec.Input == provider.InputStdin {
		stdin = []byte(req.Prompt)
	}
	return argv, slices.Clone(spec.Env), stdin, nil
}

func checkPrompt(s, input string) error {
	switch {
	case strings.TrimSpace(s) == "":
		return errdefs.Invalidf("prompt: missing")
	case len(s) > MaxPromptBytes:
		return errdefs.Invalidf("prompt: %d bytes is more than %d", len(s), MaxPromptBytes)
	case !utf8.ValidString(s):
		return errdefs.Invalidf("prompt: not valid UTF-8")
	case strings.ContainsRune(s, 0):
		return errdefs.Invalidf("prompt: contains a NUL character")
	}
	return nil
}

func checkCwd(cwd string) error {
	switch {
	case cwd == "":
		return nil
	case len(cwd) > maxCwdBytes:
		return errdefs.Invalidf("cwd: longer than %d bytes", maxCwdBytes)
	case !strings.HasPrefix(cwd, "/"):
		return errdefs.Invalidf("cwd: %q is not an absolute path", cwd)
	case path.Clean(cwd) != cwd:
		return errdefs.Invalidf("cwd: %q is not clean (no //, /./, /../ or trailing slash)", cwd)
	case strings.ContainsFunc(cwd, func(r rune) bool { return r < 0x20 || r == 0x7f }) || !utf8.ValidString(cwd):
		return errdefs.Invalidf("cwd: %q has control characters or is not UTF-8", cwd)
	}
	return nil
}

// optionArgs validates the request's options against the spec and
// returns their flags, in the spec's order.
func optionArgs(spec provider.Prompt, opts map[string]any) ([]string, error) {
	var unknown []string
	for name := range opts {
		if _, ok := spec.Option(name); !ok {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		known := "none"
		if names := spec.OptionNames(); len(names) > 0 {
			known = strings.Join(names, ", ")
		}
		return nil, errdefs.Invalidf("options.%s: unknown option (known: %s)", clipName(unknown[0]), known)
	}
	var args []string
	for _, o := range spec.Options {
		v, ok := opts[o.Name]
		if !ok || v == nil {
			continue
		}
		values, err := optionValues(o, v)
		if err != nil {
			return nil, errdefs.Invalidf("options.%s: %s", o.Name, err)
		}
		for _, val := range values {
			for _, a := range o.Argv {
				args = append(args, strings.Replace(a, provider.PlaceholderValue, val, 1))
			}
		}
	}
	return args, nil
}

// optionValues checks v against o and returns the {value} of each
// repetition of o's argv.
func optionValues(o provider.PromptOption, v any) ([]string, error) {
	switch o.Type {
	case provider.OptionString:
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("want a string, got %s", kind(v))
		}
		if err := checkValue(o, s); err != nil {
			return nil, err
		}
		return []string{s}, nil
	case provider.OptionEnum:
		s, ok := v.(string)
		if !ok || !slices.Contains(o.Values, s) {
			return nil, fmt.Errorf("want one of %s, got %s", strings.Join(o.Values, ", "), describe(v))
		}
		return []string{s}, nil
	case provider.OptionInteger:
		n, ok := integer(v)
		if !ok {
			return nil, fmt.Errorf("want a whole number, got %s", describe(v))
		}
		if n < *o.Min || n > *o.Max {
			return nil, fmt.Errorf("%d is out of range (%d to %d)", n, *o.Min, *o.Max)
		}
		return []string{strconv.FormatInt(n, 10)}, nil
	case provider.OptionList:
		items, err := stringList(v, o.MaxItems)
		if err != nil {
			return nil, err
		}
		for i, s := range items {
			if err := checkValue(o, s); err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
			if o.Join != "" && strings.Contains(s, o.Join) {
				return nil, fmt.Errorf("[%d]: %q contains the separator %q", i, clipName(s), o.Join)
			}
		}
		if len(items) == 0 {
			return nil, nil
		}
		if o.Join != "" {
			return []string{strings.Join(items, o.Join)}, nil
		}
		return items, nil
	}
	return nil, fmt.Errorf("option type %q is not supported", o.Type)
}

// checkValue checks a string value (or list item) against o's bounds.
func checkValue(o provider.PromptOption, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty")
	case len(s) > o.MaxLength:
		return fmt.Errorf("%d bytes is longer than %d", len(s), o.MaxLength)
	case strings.HasPrefix(s, "-"):
		return fmt.Errorf("%q starts with \"-\" (a value may not look like a flag)", clipName(s))
	case !utf8.ValidString(s) || strings.ContainsRune(s, 0):
		return fmt.Errorf("not valid UTF-8 or contains NUL")
	case o.PatternRegexp() == nil || !o.PatternRegexp().MatchString(s):
		return fmt.Errorf("%q does not match %s", clipName(s), o.Pattern)
	}
	return nil
}

// integer reads a whole number as JSON decodes one (float64 or
// json.Number) or as Go code gives one.
func integer(v any) (int64, bool) {
	switch n := v.(type) {
	case int:
		return int64(n), true
	case int64:
		return n, true
	case json.Number:
		i, err := n.Int64()
		return i, err == nil
	case float64:
		if n != math.Trunc(n) || math.Abs(n) > 1<<53 {
			return 0, false
		}
		return int64(n), true
	}
	return 0, false
}

func stringList(v any, maxItems int) ([]string, error) {
	var items []string
	switch l := v.(type) {
	case []string:
		items = l
	case []any:
		if len(l) > maxItems {
			return nil, fmt.Errorf("more than %d items", maxItems)
		}
		items = make([]string, 0, len(l))
		for i, x := range l {
			s, ok := x.(string)
			if !ok {
				return nil, fmt.Errorf("[%d]: want a string, got %s", i, kind(x))
			}
			items = append(items, s)
		}
	default:
		return nil, fmt.Errorf("want a list of strings, got %s", kind(v))
	}
	if len(items) > maxItems {
		return nil, fmt.Errorf("more than %d items", maxItems)
	}
	return items, nil
}

func kind(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case float64, json.Number, int, int64:
		return "a number"
	case bool:
		return "a boolean"
	case []any, []string:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// describe shows a short value in an error: strings quoted and clipped,
// other kinds by kind.
func describe(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(clipName(x))
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case json.Number:
		return clipName(x.String())
	}
	return kind(v)
}

// clipName bounds a caller's text quoted back in an error.
func clipName(s string) string {
	out, _ := clip(s, 64)
	return out
}
