package provider

import (
	"encoding/json"
	"fmt"
	"path"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	yaml "go.yaml.in/yaml/v4"

	"github.com/hearth-project/hearth/internal/yamlcheck"
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
	c := newChecker(file)
	c.Walk(root, providerType)
	if err := c.Err(); err != nil {
		return nil, err
	}
	var p Provider
	if err := root.Decode(&p); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	p.Source = file
	c.validate(&p)
	if err := c.Err(); err != nil {
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

// checker checks a provider definition: the shared YAML checks
// (yamlcheck) and the definition's own rules.
type checker struct {
	*yamlcheck.Checker
}

func newChecker(file string) checker {
	return checker{yamlcheck.New(file, "provider definitions", map[reflect.Type]yamlcheck.Scalar{
		durationType: {Want: "a duration such as 30s", Parse: func(s string) error { _, err := parseDuration(s); return err }},
		fileModeType: {Want: "an octal mode such as 0600", Parse: func(s string) error { _, err := parseFileMode(s); return err }},
	})}
}

// validate checks the decoded values and compiles the patterns; it fills
// in default timeouts and modes.
func (c checker) validate(p *Provider) {
	switch {
	case p.Name == "":
		c.Errorf("name", "missing")
	case !nameRE.MatchString(p.Name):
		c.Errorf("name", "bad provider name %q (want [a-z][a-z0-9_]*, at most 31 characters)", p.Name)
	}
	if strings.TrimSpace(p.DisplayName) == "" {
		c.Errorf("display_name", "missing")
	}
	c.validateLogin(&p.Login)
	c.validateCredentials(p.Credentials)
	c.validateInstall(p.Install)
	c.validatePrompt(p.Prompt)
}

func (c checker) validateLogin(l *Login) {
	if !c.Has("login") {
		c.Errorf("login", "missing")
		return
	}
	if len(l.Argv) == 0 {
		c.Errorf("login.argv", "missing (want the command and its arguments, e.g. [codex, login])")
	}
	for i, a := range l.Argv {
		if a == "" {
			c.Errorf(fmt.Sprintf("login.argv[%d]", i), "empty argument")
		}
	}
	c.validateEnv("login.env", l.Env)
	for i := range l.Steps {
		s := &l.Steps[i]
		f := fmt.Sprintf("login.steps[%d]", i)
		if s.Expect == "" {
			c.Errorf(f+".expect", "missing")
		} else if re, err := regexp.Compile(s.Expect); err != nil {
			c.Errorf(f+".expect", "bad regular expression: %v", err)
		} else {
			s.expectRE = re
		}
		if s.Timeout == 0 {
			s.Timeout = Duration(DefaultStepTimeout)
		} else if s.Timeout.D() > maxStepTimeout {
			c.Errorf(f+".timeout", "%s is longer than %s", s.Timeout.D(), maxStepTimeout)
		}
	}
	if l.URLPattern == "" {
		c.Errorf("login.url_pattern", "missing")
	} else if re, err := regexp.Compile(l.URLPattern); err != nil {
		c.Errorf("login.url_pattern", "bad regular expression: %v", err)
	} else if re.NumSubexp() > 0 {
		c.Errorf("login.url_pattern", "has capturing groups (the whole match is the URL; use (?:...))")
	} else {
		l.urlRE = re
	}
	if l.Timeout == 0 {
		l.Timeout = Duration(DefaultLoginTimeout)
	} else if l.Timeout.D() > maxLoginTimeout {
		c.Errorf("login.timeout", "%s is longer than %s", l.Timeout.D(), maxLoginTimeout)
	}
}

func (c checker) validateCredentials(creds []Credential) {
	if len(creds) == 0 {
		c.Errorf("credentials", "missing (want at least one credential file)")
	}
	seen := map[string]bool{}
	for i, cr := range creds {
		f := fmt.Sprintf("credentials[%d]", i)
		if msg := badGuestPath(cr.Path); msg != "" {
			c.Errorf(f+".path", "%s", msg)
		} else if seen[cr.Path] {
			c.Errorf(f+".path", "%s given twice", cr.Path)
		}
		seen[cr.Path] = true
		switch cr.Format {
		case FormatJSON:
		case "":
			c.Errorf(f+".format", "missing (want %s)", FormatJSON)
		default:
			c.Errorf(f+".format", "unknown format %q (want %s)", cr.Format, FormatJSON)
		}
		if len(cr.Required) == 0 {
			c.Errorf(f+".required", "missing (want the fields that must be present, e.g. [access_token])")
		}
		for j, r := range cr.Required {
			if msg := badFieldPath(r); msg != "" {
				c.Errorf(fmt.Sprintf("%s.required[%d]", f, j), "%s", msg)
			}
		}
		if e := cr.ExpiresAt; e != nil {
			if e.Field == "" {
				c.Errorf(f+".expires_at.field", "missing")
			} else if msg := badFieldPath(e.Field); msg != "" {
				c.Errorf(f+".expires_at.field", "%s", msg)
			}
			switch e.Unit {
			case UnitMilliseconds, UnitSeconds, UnitRFC3339, UnitJWTExp:
			case "":
				c.Errorf(f+".expires_at.unit", "missing (want ms, s, rfc3339 or jwt_exp)")
			default:
				c.Errorf(f+".expires_at.unit", "unknown unit %q (want ms, s, rfc3339 or jwt_exp)", e.Unit)
			}
		}
	}
}

func (c checker) validateInstall(files []InstallFile) {
	seen := map[string]bool{}
	for i := range files {
		in := &files[i]
		f := fmt.Sprintf("install[%d]", i)
		if msg := badGuestPath(in.Path); msg != "" {
			c.Errorf(f+".path", "%s", msg)
		} else if seen[in.Path] {
			c.Errorf(f+".path", "%s given twice", in.Path)
		}
		seen[in.Path] = true
		if !c.Has(f + ".mode") {
			in.Mode = 0o600
		}
		if in.Content == "" {
			c.Errorf(f+".content", "missing")
		}
		switch in.Merge {
		case MergeNone:
		case MergeJSON:
			var obj map[string]any
			if err := json.Unmarshal([]byte(in.Content), &obj); err != nil || obj == nil {
				c.Errorf(f+".content", "merge json needs a JSON object as content")
			}
		default:
			c.Errorf(f+".merge", "unknown merge %q (want json, or leave it out to write the file)", in.Merge)
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
