// Package fctest is a fake Firecracker for tests: an API server that speaks
// Firecracker v1.16.1's HTTP protocol on a Unix socket, holds every request
// to Firecracker's own swagger document (embedded here, unchanged) and
// follows Firecracker's pre-boot/post-boot rules, plus a fake guest behind
// it (serial output, logger and metrics files, MMDS v2 on loopback, the
// hybrid vsock CONNECT handshake, an optional guest agent process).
//
// It exists because real Firecracker cannot run where hearth's tests run
// (no KVM). A driver test that only talks to this fake, and whose requests
// the fake reports no violation for, sends nothing real Firecracker would
// refuse on protocol grounds. The fake boots nothing: the "guest" is a few
// lines of text, an HTTP server and the agent process, if any.
//
// The binary test/fakefirecracker serves a Server the way the firecracker
// binary serves its API.
package fctest

import (
	_ "embed"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"

	yaml "go.yaml.in/yaml/v4"
)

// SpecVersion is the Firecracker release whose API the fake implements.
const SpecVersion = "1.16.1"

//go:embed firecracker-v1.16.1.swagger.yaml
var specYAML []byte

// SpecYAML returns Firecracker's swagger document the fake validates
// against, byte for byte as Firecracker ships it.
func SpecYAML() []byte { return append([]byte(nil), specYAML...) }

// Spec is a loaded swagger 2.0 document: its operations by path template
// and method, and its schema definitions.
type Spec struct {
	Version     string
	routes      []*route
	definitions map[string]*schema
}

// route is one path template with its operations.
type route struct {
	template string
	segments []string // "{name}" for a parameter
	ops      map[string]*operation
}

// operation is one method on one path.
type operation struct {
	method    string
	id        string
	body      *schema // nil: the operation takes no body
	bodyName  string  // definition name of the body, if a $ref
	bodyReq   bool
	params    []string // path parameter names
	responses map[string]*schema
	respKnown map[string]bool // status codes (and "default") declared
}

// schema is the subset of swagger 2.0 schema objects Firecracker's document
// uses. Loading fails on any keyword outside this subset, so a keyword the
// validator does not enforce can never be silently ignored.
type schema struct {
	Ref                  string             `yaml:"$ref"`
	Type                 string             `yaml:"type"`
	Format               string             `yaml:"format"`
	Enum                 []any              `yaml:"enum"`
	Minimum              *float64           `yaml:"minimum"`
	Maximum              *float64           `yaml:"maximum"`
	Required             []string           `yaml:"required"`
	Properties           map[string]*schema `yaml:"properties"`
	AdditionalProperties *bool              `yaml:"additionalProperties"`
	Items                *schema            `yaml:"items"`
	Description          string             `yaml:"description"`
	Default              any                `yaml:"default"`
	Example              any                `yaml:"example"`
	ReadOnly             bool               `yaml:"readOnly"`

	name    string         // definition name, for messages
	pattern *regexp.Regexp // compiled Format when it is a pattern
}

type specDoc struct {
	Swagger     string                        `yaml:"swagger"`
	Info        map[string]any                `yaml:"info"`
	Host        string                        `yaml:"host"`
	BasePath    string                        `yaml:"basePath"`
	Schemes     []string                      `yaml:"schemes"`
	Consumes    []string                      `yaml:"consumes"`
	Produces    []string                      `yaml:"produces"`
	Paths       map[string]map[string]*specOp `yaml:"paths"`
	Definitions map[string]*schema            `yaml:"definitions"`
}

type specOp struct {
	Summary     string                   `yaml:"summary"`
	Description string                   `yaml:"description"`
	OperationID string                   `yaml:"operationId"`
	Parameters  []specParam              `yaml:"parameters"`
	Responses   map[string]*specResponse `yaml:"responses"`
}

type specParam struct {
	Name        string  `yaml:"name"`
	In          string  `yaml:"in"`
	Description string  `yaml:"description"`
	Required    bool    `yaml:"required"`
	Type        string  `yaml:"type"`
	Schema      *schema `yaml:"schema"`
}

type specResponse struct {
	Description string  `yaml:"description"`
	Schema      *schema `yaml:"schema"`
}

var defaultSpec = sync.OnceValues(func() (*Spec, error) { return ParseSpec(specYAML) })

// LoadSpec returns the embedded Firecracker v1.16.1 document, parsed once.
func LoadSpec() (*Spec, error) { return defaultSpec() }

func mustSpec() *Spec {
	s, err := LoadSpec()
	if err != nil {
		panic("fctest: the embedded Firecracker swagger document does not load: " + err.Error())
	}
	return s
}

// ParseSpec parses a swagger 2.0 document in Firecracker's dialect.
func ParseSpec(data []byte) (*Spec, error) {
	var doc specDoc
	if err := yaml.Load(data, &doc, yaml.WithKnownFields()); err != nil {
		return nil, fmt.Errorf("parse swagger document: %w", err)
	}
	if doc.Swagger != "2.0" {
		return nil, fmt.Errorf("parse swagger document: swagger %q, want 2.0", doc.Swagger)
	}
	s := &Spec{definitions: doc.Definitions}
	if v, ok := doc.Info["version"]; ok {
		s.Version = fmt.Sprint(v)
	}
	for name, d := range doc.Definitions {
		d.name = name
	}
	var errs []string
	for name, d := range doc.Definitions {
		if err := s.prepare(d, "definitions."+name); err != nil {
			errs = append(errs, err.Error())
		}
	}
	templates := make([]string, 0, len(doc.Paths))
	for t := range doc.Paths {
		templates = append(templates, t)
	}
	sort.Strings(templates)
	for _, t := range templates {
		r := &route{template: t, ops: map[string]*operation{}}
		if t != "/" {
			r.segments = strings.Split(strings.TrimPrefix(t, "/"), "/")
		}
		for method, so := range doc.Paths[t] {
			op, err := s.operation(strings.ToUpper(method), t, so)
			if err != nil {
				errs = append(errs, err.Error())
				continue
			}
			r.ops[op.method] = op
		}
		s.routes = append(s.routes, r)
	}
	if len(errs) > 0 {
		sort.Strings(errs)
		return nil, fmt.Errorf("swagger document: %s", strings.Join(errs, "; "))
	}
	return s, nil
}

func (s *Spec) operation(method, template string, so *specOp) (*operation, error) {
	op := &operation{method: method, id: so.OperationID, responses: map[string]*schema{}, respKnown: map[string]bool{}}
	where := method + " " + template
	for _, p := range so.Parameters {
		switch p.In {
		case "body":
			if p.Schema == nil {
				return nil, fmt.Errorf("%s: body parameter without a schema", where)
			}
			op.body, op.bodyReq = p.Schema, p.Required
			if p.Schema.Ref != "" {
				op.bodyName = strings.TrimPrefix(p.Schema.Ref, "#/definitions/")
			}
			if err := s.prepare(p.Schema, where+" body"); err != nil {
				return nil, err
			}
		case "path":
			if p.Type != "string" {
				return nil, fmt.Errorf("%s: path parameter %s of type %q", where, p.Name, p.Type)
			}
			op.params = append(op.params, p.Name)
		default:
			return nil, fmt.Errorf("%s: parameter %s in %q is not supported", where, p.Name, p.In)
		}
	}
	for code, resp := range so.Responses {
		op.respKnown[code] = true
		if resp.Schema != nil {
			if err := s.prepare(resp.Schema, where+" response "+code); err != nil {
				return nil, err
			}
			op.responses[code] = resp.Schema
		}
	}
	return op, nil
}

// prepare checks a schema's references and compiles its pattern format.
func (s *Spec) prepare(sc *schema, where string) error {
	if sc == nil {
		return nil
	}
	if sc.Ref != "" {
		name, ok := strings.CutPrefix(sc.Ref, "#/definitions/")
		if !ok || s.definitions[name] == nil {
			return fmt.Errorf("%s: unresolved $ref %q", where, sc.Ref)
		}
		return nil
	}
	switch sc.Format {
	case "", "int32", "int64":
	default:
		re, err := regexp.Compile("^(?:" + sc.Format + ")$")
		if err != nil {
			return fmt.Errorf("%s: format %q is neither known nor a pattern: %v", where, sc.Format, err)
		}
		sc.pattern = re
	}
	for name, p := range sc.Properties {
		if err := s.prepare(p, where+"."+name); err != nil {
			return err
		}
	}
	return s.prepare(sc.Items, where+"[]")
}

// resolve follows a $ref.
func (s *Spec) resolve(sc *schema) *schema {
	for sc != nil && sc.Ref != "" {
		sc = s.definitions[strings.TrimPrefix(sc.Ref, "#/definitions/")]
	}
	return sc
}

// Definitions lists the schema definitions of the document.
func (s *Spec) Definitions() []string {
	names := make([]string, 0, len(s.definitions))
	for n := range s.definitions {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Operations lists every "METHOD /template" of the document.
func (s *Spec) Operations() []string {
	var out []string
	for _, r := range s.routes {
		for m := range r.ops {
			out = append(out, m+" "+r.template)
		}
	}
	sort.Strings(out)
	return out
}

// Match finds the operation for method and a request path (no query). It
// returns the path template and the path parameters, or an error saying
// whether the path or only the method is unknown.
func (s *Spec) Match(method, path string) (template string, params map[string]string, err error) {
	r, params := s.matchPath(path)
	if r == nil {
		return "", nil, fmt.Errorf("no path of Firecracker's API matches %s", path)
	}
	if r.ops[method] == nil {
		var allowed []string
		for m := range r.ops {
			allowed = append(allowed, m)
		}
		sort.Strings(allowed)
		return "", nil, fmt.Errorf("%s has no %s operation (it has %s)", r.template, method, strings.Join(allowed, ", "))
	}
	return r.template, params, nil
}

func (s *Spec) matchPath(path string) (*route, map[string]string) {
	if path == "/" {
		for _, r := range s.routes {
			if r.template == "/" {
				return r, nil
			}
		}
		return nil, nil
	}
	if !strings.HasPrefix(path, "/") {
		return nil, nil
	}
	segs := strings.Split(strings.TrimPrefix(path, "/"), "/")
	for _, r := range s.routes {
		if len(r.segments) != len(segs) {
			continue
		}
		params := map[string]string{}
		ok := true
		for i, want := range r.segments {
			if name, isParam := strings.CutPrefix(want, "{"); isParam {
				if segs[i] == "" {
					ok = false
					break
				}
				params[strings.TrimSuffix(name, "}")] = segs[i]
			} else if want != segs[i] {
				ok = false
				break
			}
		}
		if ok {
			return r, params
		}
	}
	return nil, nil
}

func (s *Spec) op(method, path string) (*operation, map[string]string, error) {
	if _, _, err := s.Match(method, path); err != nil {
		return nil, nil, err
	}
	r, params := s.matchPath(path)
	return r.ops[method], params, nil
}
