package yamlcheck

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v4"
)

type mode string

type doc struct {
	Name  string `yaml:"name"`
	Files []struct {
		Path string `yaml:"path"`
		Mode mode   `yaml:"mode"`
	} `yaml:"files"`
	Opts struct {
		Fast bool `yaml:"fast"`
	} `yaml:"opts"`
}

func check(t *testing.T, src string) (*Checker, []string) {
	t.Helper()
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(src), &n); err != nil {
		t.Fatal(err)
	}
	c := New("x.yaml", "test documents", map[reflect.Type]Scalar{
		reflect.TypeOf(mode("")): {Want: "an octal mode", Parse: func(s string) error {
			if strings.Trim(s, "01234567") != "" {
				return errors.New("bad mode " + s)
			}
			return nil
		}},
	})
	c.Walk(n.Content[0], reflect.TypeOf(doc{}))
	if c.Err() == nil {
		return c, nil
	}
	return c, strings.Split(c.Err().Error(), "\n")
}

func TestWalk(t *testing.T) {
	c, errs := check(t, "name: a\nfiles:\n  - path: /x\n    mode: \"0644\"\nopts:\n  fast: true\n")
	if errs != nil {
		t.Fatalf("valid document: %v", errs)
	}
	if !c.Has("files[0].mode") || c.Has("files[1]") || c.Line("opts.fast") != 6 || c.Line("files[0].path.nothing") != 3 {
		t.Fatalf("lines: %v", c.lines)
	}
	_, errs = check(t, `name: [a]
files:
  path: /x
opts:
  fast: true
  fast: false
  slow: true
extra: &a 1
more: *a
`)
	want := []string{
		"x.yaml:1: name: want a single value, not a list",
		"x.yaml:2: files: want a list",
		"x.yaml:6: opts.fast: given twice",
		"x.yaml:7: opts.slow: unknown field (known: fast)",
		"x.yaml:8: extra: unknown field (known: name, files, opts)",
		"x.yaml:9: more: unknown field (known: name, files, opts)",
	}
	if strings.Join(errs, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got:\n%s\nwant:\n%s", strings.Join(errs, "\n"), strings.Join(want, "\n"))
	}
	_, errs = check(t, "files:\n  - mode: 9\n  - mode: {a: 1}\n")
	if len(errs) != 2 || errs[0] != "x.yaml:2: files[0].mode: bad mode 9" || errs[1] != "x.yaml:3: files[1].mode: want an octal mode" {
		t.Fatalf("scalars: %q", errs)
	}
}

func TestAliasesRefused(t *testing.T) {
	_, errs := check(t, "name: &n a\nopts:\n  fast: true\nfiles: []\n---\n")
	if errs != nil {
		t.Fatalf("an anchor alone is fine: %v", errs)
	}
	var n yaml.Node
	if err := yaml.Unmarshal([]byte("base: &b {fast: true}\nopts: *b\n"), &n); err != nil {
		t.Fatal(err)
	}
	type withBase struct {
		Base map[string]bool `yaml:"base"`
		Opts struct {
			Fast bool `yaml:"fast"`
		} `yaml:"opts"`
	}
	c := New("y.yaml", "test documents", nil)
	c.Walk(n.Content[0], reflect.TypeOf(withBase{}))
	if err := c.Err(); err == nil || !strings.Contains(err.Error(), "y.yaml:2: opts: YAML aliases are not supported in test documents") {
		t.Fatalf("alias: %v", err)
	}
}
