package provider

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	yaml "go.yaml.in/yaml/v4"
)

var (
	providerType = reflect.TypeOf(Provider{})
	durationType = reflect.TypeOf(Duration(0))
	fileModeType = reflect.TypeOf(FileMode(0))
)

var (
	nameRE   = regexp.MustCompile(`^[a-z][a-z0-9_]{0,30}$`)
	envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// fieldSegRE is one segment of a dotted field path: a JSON object key
	// without dots or spaces.
	fieldSegRE = regexp.MustCompile(`^[A-Za-z0-9_$@:-]+$`)
)

// Limits on what a provider may ask for.
const (
	maxLoginTimeout = time.Hour
	maxStepTimeout  = 30 * time.Minute
)

// Parse parses and validates a provider definition. file names the source
// in errors, which read "<file>:<line>: <field>: <problem>", every problem
// at once.
func Parse(data []byte, file string) (*Provider, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, fmt.Errorf("%s: empty provider definition", file)
	}
	root := doc.Content[0]
	c := &checker{file: file, lines: map[string]int{}}
	c.walk(root, providerType, "")
	if err := c.err(); err != nil {
		return nil, err
	}
	var p Provider
	if err := root.Decode(&p); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	p.Source = file
	c.validate(&p)
	if err := c.err(); err != nil {
		return nil, err
	}
	return &p, nil
}

// UnmarshalYAML reads a Go duration such as "30s" or "10m".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseDuration(n.Value)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

func parseDuration(s string) (time.Duration, error) {
	v, err := time.ParseDuration(s)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("bad duration %q (want a positive Go duration such as 30s or 10m)", s)
	}
	return v, nil
}

// UnmarshalYAML reads an octal mode.
func (m *FileMode) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseFileMode(n.Value)
	if err != nil {
		return err
	}
	*m = v
	return nil
}

func parseFileMode(s string) (FileMode, error) {
	v := strings.TrimPrefix(strings.TrimPrefix(s, "0o"), "0O")
	n, err := strconv.ParseUint(v, 8, 32)
	if err != nil || v == "" || n > 0o777 {
		return 0, fmt.Errorf("bad mode %q (want octal permission bits such as 0600)", s)
	}
	return FileMode(n), nil
}

// checker collects errors about a provider with their YAML lines.
type checker struct {
	file  string
	lines map[string]int // field path -> line
	errs  []error
}

func (c *checker) errorf(field, format string, args ...any) {
	loc := c.file
	if l := c.line(field); l > 0 {
		loc += ":" + strconv.Itoa(l)
	}
	c.errs = append(c.errs, fmt.Errorf("%s: %s: %s", loc, field, fmt.Sprintf(format, args...)))
}

// line finds the line of field or of its nearest recorded parent.
func (c *checker) line(field string) int {
	for f := field; f != ""; {
		if l, ok := c.lines[f]; ok {
			return l
		}
		i := strings.LastIndexAny(f, ".[")
		if i < 0 {
			break
		}
		f = f[:i]
	}
	return 0
}

func (c *checker) err() error { return errors.Join(c.errs...) }

// walk checks the YAML tree against the Go type: unknown and repeated
// keys, mapping vs. list vs. scalar, durations and modes. It records each
// field's line.
func (c *checker) walk(n *yaml.Node, t reflect.Type, field string) {
	if n.Kind == yaml.AliasNode {
		c.errorf(orRoot(field), "YAML aliases are not supported in provider definitions")
		return
	}
	if _, ok := c.lines[field]; field != "" && !ok {
		c.lines[field] = n.Line
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Tag == "!!null" {
		return
	}
	switch {
	case t == durationType:
		if n.Kind != yaml.ScalarNode {
			c.errorf(field, "want a duration such as 30s")
		} else if _, err := parseDuration(n.Value); err != nil {
			c.errorf(field, "%v", err)
		}
	case t == fileModeType:
		if n.Kind != yaml.ScalarNode {
			c.errorf(field, "want an octal mode such as 0600")
		} else if _, err := parseFileMode(n.Value); err != nil {
			c.errorf(field, "%v", err)
		}
	case t.Kind() == reflect.Struct:
		c.walkStruct(n, t, field)
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			c.errorf(field, "want a list")
			return
		}
		for i, item := range n.Content {
			c.walk(item, t.Elem(), fmt.Sprintf("%s[%d]", field, i))
		}
	default:
		if n.Kind != yaml.ScalarNode {
			c.errorf(field, "want a single value, not a %s", kindName(n.Kind))
		}
	}
}

// walkStruct checks a mapping's keys against the struct's yaml tags.
func (c *checker) walkStruct(n *yaml.Node, t reflect.Type, field string) {
	if n.Kind != yaml.MappingNode {
		c.errorf(orRoot(field), "want a mapping (key: value), not a %s", kindName(n.Kind))
		return
	}
	known := map[string]reflect.Type{}
	var names []string
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			known[name] = t.Field(i).Type
			names = append(names, name)
		}
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		sub := k.Value
		if field != "" {
			sub = field + "." + k.Value
		}
		ft, ok := known[k.Value]
		switch {
		case !ok:
			c.lines[sub] = k.Line
			c.errorf(sub, "unknown field (known: %s)", strings.Join(names, ", "))
		case seen[k.Value]:
			c.lines[sub] = k.Line
			c.errorf(sub, "given twice")
		default:
			seen[k.Value] = true
			c.lines[sub] = k.Line // the key's line, not its value's
			c.walk(v, ft, sub)
		}
	}
}

func orRoot(field string) string {
	if field == "" {
		return "(top level)"
	}
	return field
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	case yaml.ScalarNode:
		return "scalar"
	}
	return "node"
}

// validate checks the decoded values and compiles the patterns; it fills
// in default timeouts and modes.
func (c *checker) validate(p *Provider) {
	switch {
	case p.Name == "":
		c.errorf("name", "missing")
	case !nameRE.MatchString(p.Name):
		c.errorf("name", "bad provider name %q (want [a-z][a-z0-9_]*, at most 31 characters)", p.Name)
	}
	if strings.TrimSpace(p.DisplayName) == "" {
		c.errorf("display_name", "missing")
	}
	c.validateLogin(&p.Login)
	c.validateCredentials(p.Credentials)
	c.validateInstall(p.Install)
}

func (c *checker) validateLogin(l *Login) {
	if _, ok := c.lines["login"]; !ok {
		c.errorf("login", "missing")
		return
	}
	if len(l.Argv) == 0 {
		c.errorf("login.argv", "missing (want the command and its arguments, e.g. [codex, login])")
	}
	for i, a := range l.Argv {
		if a == "" {
			c.errorf(fmt.Sprintf("login.argv[%d]", i), "empty argument")
		}
	}
	seen := map[string]bool{}
	for i, kv := range l.Env {
		f := fmt.Sprintf("login.env[%d]", i)
		k, _, ok := strings.Cut(kv, "=")
		switch {
		case !ok:
			c.errorf(f, "want KEY=VALUE, got %q", kv)
		case !envKeyRE.MatchString(k):
			c.errorf(f, "bad variable name %q", k)
		case seen[k]:
			c.errorf(f, "variable %s set twice", k)
		}
		seen[k] = true
	}
	for i := range l.Steps {
		s := &l.Steps[i]
		f := fmt.Sprintf("login.steps[%d]", i)
		if s.Expect == "" {
			c.errorf(f+".expect", "missing")
		} else if re, err := regexp.Compile(s.Expect); err != nil {
			c.errorf(f+".expect", "bad regular expression: %v", err)
		} else {
			s.expectRE = re
		}
		if s.Timeout == 0 {
			s.Timeout = Duration(DefaultStepTimeout)
		} else if s.Timeout.D() > maxStepTimeout {
			c.errorf(f+".timeout", "%s is longer than %s", s.Timeout.D(), maxStepTimeout)
		}
	}
	if l.URLPattern == "" {
		c.errorf("login.url_pattern", "missing")
	} else if re, err := regexp.Compile(l.URLPattern); err != nil {
		c.errorf("login.url_pattern", "bad regular expression: %v", err)
	} else if re.NumSubexp() > 0 {
		c.errorf("login.url_pattern", "has capturing groups (the whole match is the URL; use (?:...))")
	} else {
		l.urlRE = re
	}
	if l.Timeout == 0 {
		l.Timeout = Duration(DefaultLoginTimeout)
	} else if l.Timeout.D() > maxLoginTimeout {
		c.errorf("login.timeout", "%s is longer than %s", l.Timeout.D(), maxLoginTimeout)
	}
}

func (c *checker) validateCredentials(creds []Credential) {
	if len(creds) == 0 {
		c.errorf("credentials", "missing (want at least one credential file)")
	}
	seen := map[string]bool{}
	for i, cr := range creds {
		f := fmt.Sprintf("credentials[%d]", i)
		if msg := badGuestPath(cr.Path); msg != "" {
			c.errorf(f+".path", "%s", msg)
		} else if seen[cr.Path] {
			c.errorf(f+".path", "%s given twice", cr.Path)
		}
		seen[cr.Path] = true
		switch cr.Format {
		case FormatJSON:
		case "":
			c.errorf(f+".format", "missing (want %s)", FormatJSON)
		default:
			c.errorf(f+".format", "unknown format %q (want %s)", cr.Format, FormatJSON)
		}
		if len(cr.Required) == 0 {
			c.errorf(f+".required", "missing (want the fields that must be present, e.g. [access_token])")
		}
		for j, r := range cr.Required {
			if msg := badFieldPath(r); msg != "" {
				c.errorf(fmt.Sprintf("%s.required[%d]", f, j), "%s", msg)
			}
		}
		if e := cr.ExpiresAt; e != nil {
			if e.Field == "" {
				c.errorf(f+".expires_at.field", "missing")
			} else if msg := badFieldPath(e.Field); msg != "" {
				c.errorf(f+".expires_at.field", "%s", msg)
			}
			switch e.Unit {
			case UnitMilliseconds, UnitSeconds, UnitRFC3339, UnitJWTExp:
			case "":
				c.errorf(f+".expires_at.unit", "missing (want ms, s, rfc3339 or jwt_exp)")
			default:
				c.errorf(f+".expires_at.unit", "unknown unit %q (want ms, s, rfc3339 or jwt_exp)", e.Unit)
			}
		}
	}
}

func (c *checker) validateInstall(files []InstallFile) {
	seen := map[string]bool{}
	for i := range files {
		in := &files[i]
		f := fmt.Sprintf("install[%d]", i)
		if msg := badGuestPath(in.Path); msg != "" {
			c.errorf(f+".path", "%s", msg)
		} else if seen[in.Path] {
			c.errorf(f+".path", "%s given twice", in.Path)
		}
		seen[in.Path] = true
		if _, ok := c.lines[f+".mode"]; !ok {
			in.Mode = 0o600
		}
		if in.Content == "" {
			c.errorf(f+".content", "missing")
		}
		switch in.Merge {
		case MergeNone:
		case MergeJSON:
			var obj map[string]any
			if err := json.Unmarshal([]byte(in.Content), &obj); err != nil || obj == nil {
				c.errorf(f+".content", "merge json needs a JSON object as content")
			}
		default:
			c.errorf(f+".merge", "unknown merge %q (want json, or leave it out to write the file)", in.Merge)
		}
	}
}

// badGuestPath explains what is wrong with a guest path, absolute or
// "~/..." ("" if nothing).
func badGuestPath(p string) string {
	rel, home := strings.CutPrefix(p, "~/")
	switch {
	case p == "":
		return "missing"
	case !home && !strings.HasPrefix(p, "/"):
		return fmt.Sprintf("path %q is neither absolute nor under ~/", p)
	case home && (rel == "" || path.Clean(rel) != rel || strings.HasPrefix(rel, "../") || rel == ".."),
		!home && (path.Clean(p) != p || p == "/"):
		return fmt.Sprintf("path %q is not clean (no //, /./, /../ or trailing slash)", p)
	case strings.ContainsAny(p, "\x00\n\r\t"):
		return fmt.Sprintf("path %q has control characters", p)
	}
	return ""
}

// badFieldPath explains what is wrong with a dotted field path ("" if
// nothing).
func badFieldPath(f string) string {
	if f == "" {
		return "empty field path"
	}
	for _, seg := range strings.Split(f, ".") {
		if !fieldSegRE.MatchString(seg) {
			return fmt.Sprintf("bad field path %q (want dotted JSON keys such as tokens.access_token)", f)
		}
	}
	return ""
}
