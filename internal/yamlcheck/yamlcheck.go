// Package yamlcheck checks a YAML document against the Go type it is about
// to be decoded into, before decoding: unknown and repeated keys, aliases,
// a mapping where a list or a single value belongs (and the other way
// round), and scalar types that have parsers of their own (modes,
// durations). It reports every problem at once, each as
// "<file>:<line>: <field>: <problem>", where field is a path such as
// files[2].mode. Image specs and provider definitions are checked with it;
// their own validation adds errors through the same Checker.
package yamlcheck

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v4"
)

// Scalar is a type whose YAML is one scalar that Parse accepts; Want says
// what is expected when it is not a scalar ("an octal mode such as 0644").
type Scalar struct {
	Want  string
	Parse func(string) error
}

// Checker collects problems about one document with their lines.
type Checker struct {
	file    string
	what    string // the documents, for messages: "image specs"
	scalars map[reflect.Type]Scalar
	lines   map[string]int // field path -> line
	errs    []error
}

// New returns a checker for file (as errors show it); what names the kind
// of document in messages, e.g. "image specs".
func New(file, what string, scalars map[reflect.Type]Scalar) *Checker {
	return &Checker{file: file, what: what, scalars: scalars, lines: map[string]int{}}
}

// Errorf records a problem with field.
func (c *Checker) Errorf(field, format string, args ...any) {
	loc := c.file
	if l := c.Line(field); l > 0 {
		loc += ":" + strconv.Itoa(l)
	}
	c.errs = append(c.errs, fmt.Errorf("%s: %s: %s", loc, field, fmt.Sprintf(format, args...)))
}

// Line is the line of field, or of its nearest parent that has one (0 if
// none does).
func (c *Checker) Line(field string) int {
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

// Has reports whether the document gave field.
func (c *Checker) Has(field string) bool {
	_, ok := c.lines[field]
	return ok
}

// Err returns the problems recorded so far, joined (nil if none).
func (c *Checker) Err() error { return errors.Join(c.errs...) }

// Walk checks the tree under n against t and records each field's line
// (a mapping key's own line).
func (c *Checker) Walk(n *yaml.Node, t reflect.Type) { c.walk(n, t, "") }

func (c *Checker) walk(n *yaml.Node, t reflect.Type, field string) {
	if n.Kind == yaml.AliasNode {
		c.Errorf(orRoot(field), "YAML aliases are not supported in %s", c.what)
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
	if s, ok := c.scalars[t]; ok {
		if n.Kind != yaml.ScalarNode {
			c.Errorf(field, "want %s", s.Want)
		} else if err := s.Parse(n.Value); err != nil {
			c.Errorf(field, "%v", err)
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		c.walkStruct(n, t, field)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			c.Errorf(field, "want a list")
			return
		}
		for i, item := range n.Content {
			c.walk(item, t.Elem(), fmt.Sprintf("%s[%d]", field, i))
		}
	default:
		if n.Kind != yaml.ScalarNode {
			c.Errorf(field, "want a single value, not a %s", kindName(n.Kind))
		}
	}
}

// walkStruct checks a mapping's keys against the struct's yaml tags.
func (c *Checker) walkStruct(n *yaml.Node, t reflect.Type, field string) {
	if n.Kind != yaml.MappingNode {
		c.Errorf(orRoot(field), "want a mapping (key: value), not a %s", kindName(n.Kind))
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
			c.Errorf(sub, "unknown field (known: %s)", strings.Join(names, ", "))
		case seen[k.Value]:
			c.lines[sub] = k.Line
			c.Errorf(sub, "given twice")
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
