package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/errdefs"
)

// The document is the source of the routes: the generated
// v1.HandlerWithOptions registers one handler per operation of
// api/openapi.yaml on the router below, which puts in front of each the
// authentication the operation's security asks for and the validation of
// its parameters and body against the document. Every 400 for input the
// document describes therefore comes from the document, worded the same
// way everywhere; handlers check only what it cannot say.

// operation is one operation of the document, as served.
type operation struct {
	method, path string // the document's path, e.g. /v1/vms/{id}
	pattern      string // the ServeMux pattern it is served at
	public       bool   // no API key: security names no bearer key
	admin        string // x-hearth-admin: what only admin keys may do ("build images")
	route        *routers.Route
	jsonBody     bool     // the operation takes a JSON request body
	pathParams   []string // the names of its path parameters
}

// spec is the parsed document, shared by every server.
var spec = mustLoadSpec()

func mustLoadSpec() *openapi3.T {
	doc, err := openapi3.NewLoader().LoadFromData(v1.OpenAPI)
	if err != nil {
		panic("api/openapi.yaml does not parse: " + err.Error())
	}
	if err := doc.Validate(context.Background()); err != nil {
		panic("api/openapi.yaml is not valid OpenAPI: " + err.Error())
	}
	return doc
}

// restParams are the path parameters that take the rest of the path,
// slashes included: OpenAPI cannot say so.
var restParams = map[string]string{
	"/viewer/assets/{path}":   "/viewer/assets/{path...}",
	"/terminal/assets/{path}": "/terminal/assets/{path...}",
}

// findOperation returns the document's operation for a generated pattern
// ("GET /v1/vms/{id}").
func findOperation(pattern string) (*operation, error) {
	method, path, ok := strings.Cut(pattern, " ")
	if !ok {
		return nil, fmt.Errorf("route pattern %q has no method", pattern)
	}
	item := spec.Paths.Find(path)
	if item == nil {
		return nil, fmt.Errorf("route %s is not in openapi.yaml", pattern)
	}
	op := item.GetOperation(method)
	if op == nil {
		return nil, fmt.Errorf("route %s is not in openapi.yaml", pattern)
	}
	o := &operation{method: method, path: path, pattern: pattern,
		route: &routers.Route{Spec: spec, Path: path, PathItem: item, Method: method, Operation: op}}
	if rest, ok := restParams[path]; ok {
		o.pattern = method + " " + rest
	}
	security := spec.Security
	if op.Security != nil {
		security = *op.Security
	}
	o.public = true
	for _, req := range security {
		if _, ok := req["bearer"]; ok {
			o.public = false
		}
	}
	for _, ps := range []openapi3.Parameters{item.Parameters, op.Parameters} {
		for _, p := range ps {
			if p.Value.In == openapi3.ParameterInPath {
				o.pathParams = append(o.pathParams, p.Value.Name)
			}
		}
	}
	if what, ok := op.Extensions["x-hearth-admin"].(string); ok {
		o.admin = what
	}
	if op.RequestBody != nil && op.RequestBody.Value.Content.Get("application/json") != nil {
		o.jsonBody = true
	}
	return o, nil
}

// router receives the generated handlers and serves each behind what its
// operation asks for.
type router struct {
	s          *Server
	mux        *http.ServeMux
	methodList []string        // the methods the document uses, sorted
	public     map[string]bool // path pattern → its routes need no key
	ops        []*operation
	err        error
}

// HandleFunc implements v1.ServeMux.
func (rt *router) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	op, err := findOperation(pattern)
	if err != nil {
		rt.err = errors.Join(rt.err, err)
		return
	}
	next := rt.s.validate(op, h)
	if op.admin != "" {
		next = rt.s.adminOnly(op.admin, next)
	}
	if !op.public {
		next = rt.s.authenticate(next)
	}
	rt.mux.HandleFunc(op.pattern, next)
	_, path, _ := strings.Cut(op.pattern, " ")
	if !slices.Contains(rt.methodList, op.method) {
		rt.methodList = append(rt.methodList, op.method)
		sort.Strings(rt.methodList)
	}
	rt.public[path] = op.public
	rt.ops = append(rt.ops, op)
}

func (rt *router) ServeHTTP(w http.ResponseWriter, r *http.Request) { rt.mux.ServeHTTP(w, r) }

// routes builds the handler of every operation of the document.
func (s *Server) routes() (*router, error) {
	rt := &router{s: s, mux: http.NewServeMux(), public: map[string]bool{}}
	v1.HandlerWithOptions(s, v1.StdHTTPServerOptions{BaseRouter: rt, ErrorHandlerFunc: s.paramError})
	if rt.err != nil {
		return nil, rt.err
	}
	// Anything else: a known path with another method is a JSON 405
	// naming what is allowed; the rest a JSON 404 instead of the mux's
	// plain text, but only after authentication, so unauthenticated
	// callers learn nothing. (A pattern without a method per path would
	// conflict in the mux: /v1/images/{id}/verify and GET
	// /v1/images/builds/{id} both match /v1/images/builds/verify.)
	authenticated := s.authenticate(func(w http.ResponseWriter, r *http.Request) {
		if allow, _ := rt.allowed(r); allow != "" {
			methodNotAllowed(w, r, allow)
			return
		}
		writeError(w, http.StatusNotFound, "not_found", "no route "+r.Method+" "+r.URL.Path)
	})
	rt.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if allow, public := rt.allowed(r); allow != "" && public {
			methodNotAllowed(w, r, allow)
			return
		}
		authenticated(w, r)
	})
	return rt, nil
}

// allowed lists the methods the path of r is served with ("" for none)
// and whether those routes are public.
func (rt *router) allowed(r *http.Request) (allow string, public bool) {
	var ms []string
	for _, m := range rt.methodList {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := rt.mux.Handler(probe); pattern != "" && pattern != "/" {
			_, path, _ := strings.Cut(pattern, " ")
			ms = append(ms, m)
			public = rt.public[path]
		}
	}
	return strings.Join(ms, ", "), public
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", r.Method+" is not allowed on "+r.URL.Path+" (allowed: "+allow+")")
}

// adminOnly refuses user keys an operation the document reserves for
// admin keys (x-hearth-admin), before its request is read.
func (s *Server) adminOnly(what string, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !identity(r).Admin() {
			s.fail(w, r, errdefs.Forbiddenf("only admin keys %s", what))
			return
		}
		next(w, r)
	}
}

// paramError answers a parameter the generated binding could not read
// (validation has already refused anything the document forbids).
func (s *Server) paramError(w http.ResponseWriter, r *http.Request, err error) {
	s.fail(w, r, errdefs.Invalidf("%v", err))
}

// validate checks a request's parameters and body against its operation
// in the document before the handler sees it.
func (s *Server) validate(op *operation, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		in := &openapi3filter.RequestValidationInput{Request: r, PathParams: make(map[string]string, len(op.pathParams)),
			Route: op.route, Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
		for _, name := range op.pathParams {
			in.PathParams[name] = r.PathValue(name)
		}
		var body []byte
		if op.jsonBody {
			var err error
			if body, err = readJSONBody(w, r, op.route.Operation.RequestBody.Value.Required); err != nil {
				s.fail(w, r, err)
				return
			}
			// The document sees the body as JSON whatever the client
			// called it (readJSONBody refused other types).
			check := r.Clone(r.Context())
			check.Header.Set("Content-Type", "application/json")
			check.Body = io.NopCloser(bytes.NewReader(body))
			check.ContentLength = int64(len(body))
			if body == nil {
				check.Body, check.ContentLength = http.NoBody, 0
			}
			in.Request = check
		} else {
			// Only a JSON body is validated; others (uploads, stdin) are
			// the handler's to stream. The validator must not see them:
			// its security check reads a body whole, to memory.
			in.Options.ExcludeRequestBody = true
			check := r.Clone(r.Context())
			check.Body, check.ContentLength = http.NoBody, 0
			in.Request = check
		}
		if err := openapi3filter.ValidateRequest(r.Context(), in); err != nil {
			s.fail(w, r, errdefs.Invalidf("%s", validationMessage(err)))
			return
		}
		if op.jsonBody {
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
		}
		next(w, r)
	}
}

// readJSONBody reads a request's whole JSON body within maxBody and the
// read deadline, and checks that it is one well-formed JSON value. An
// empty body is nil (an error when the body is required).
func readJSONBody(w http.ResponseWriter, r *http.Request, required bool) ([]byte, error) {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return nil, errdefs.Invalidf("Content-Type must be application/json, got %q", ct)
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		return nil, jsonError(err)
	}
	bodyRead(w)
	if len(bytes.TrimSpace(b)) == 0 {
		if required {
			return nil, errdefs.Invalidf("request body is empty; expected a JSON object")
		}
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errdefs.Invalidf("request body must hold a single JSON object")
	}
	return b, nil
}

// validationMessage says what the document found wrong, naming the field
// or parameter the way every 400 does: `field "network.egress.mode" must
// be one of …`, `query parameter "offset" must be at least 0`.
func validationMessage(err error) string {
	var re *openapi3filter.RequestError
	if !errors.As(err, &re) {
		return err.Error()
	}
	var se *openapi3.SchemaError
	if !errors.As(re.Err, &se) {
		reason := re.Reason
		if re.Err != nil {
			reason = re.Err.Error()
		}
		if re.Parameter != nil {
			return fmt.Sprintf("%s parameter %q: %s", re.Parameter.In, re.Parameter.Name, reason)
		}
		return "request body: " + reason
	}
	path := se.JSONPointer()
	// allOf and its kind wrap the error of the schema that refused.
	for {
		var inner *openapi3.SchemaError
		if se.Origin == nil || !errors.As(se.Origin, &inner) {
			break
		}
		ip := inner.JSONPointer()
		if len(ip) < len(path) || !slices.Equal(ip[:len(path)], path) {
			ip = append(slices.Clone(path), ip...) // relative to the wrapper
		}
		path, se = ip, inner
	}
	name := func(p []string) string {
		switch {
		case re.Parameter != nil:
			return fmt.Sprintf("%s parameter %q", re.Parameter.In, re.Parameter.Name)
		case len(p) == 0:
			return "request body"
		}
		return fmt.Sprintf("field %q", strings.Join(p, "."))
	}
	sc := se.Schema
	switch se.SchemaField {
	case "properties", "additionalProperties":
		if obj, ok := se.Value.(map[string]any); ok {
			var unknown []string
			for k := range obj {
				if _, known := sc.Properties[k]; !known {
					unknown = append(unknown, k)
				}
			}
			if len(unknown) > 0 {
				sort.Strings(unknown)
				return fmt.Sprintf("unknown field %q", strings.Join(append(path, unknown[0]), "."))
			}
		}
	case "required":
		return name(path) + " is required"
	case "type":
		what := map[string]string{"object": "a JSON object", "array": "an array", "integer": "an integer",
			"number": "a number", "string": "a string", "boolean": "a boolean"}[firstType(sc)]
		if what != "" {
			return name(path) + " must be " + what
		}
	case "minimum", "maximum":
		switch {
		case sc.Min != nil && sc.Max != nil:
			return fmt.Sprintf("%s must be between %s and %s, got %v", name(path), num(*sc.Min), num(*sc.Max), se.Value)
		case sc.Min != nil:
			return fmt.Sprintf("%s must be at least %s, got %v", name(path), num(*sc.Min), se.Value)
		case sc.Max != nil:
			return fmt.Sprintf("%s must be at most %s, got %v", name(path), num(*sc.Max), se.Value)
		}
	case "enum":
		var vals []string
		for _, v := range sc.Enum {
			vals = append(vals, fmt.Sprint(v))
		}
		return fmt.Sprintf("%s must be one of %s, got %q", name(path), strings.Join(vals, ", "), fmt.Sprint(se.Value))
	case "format":
		if sc.Format == "date-time" {
			return name(path) + " must be an RFC 3339 time such as 2030-01-02T15:04:05Z"
		}
	}
	return name(path) + ": " + se.Reason
}

func firstType(s *openapi3.Schema) string {
	if s.Type == nil || len(*s.Type) == 0 {
		return ""
	}
	return (*s.Type)[0]
}

// num prints a bound from the document as written (315360000, not
// 3.1536e+08).
func num(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }
