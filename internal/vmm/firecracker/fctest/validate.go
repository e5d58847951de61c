package fctest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"sort"
	"strconv"
	"strings"
)

// ValidationError is a request or response that Firecracker's swagger
// document does not allow. Each problem names the place ("body",
// "body.rate_limiter.bandwidth.size", "path") and what is wrong there.
type ValidationError struct {
	Method, Path string
	// Status is set for a response.
	Status   int
	Problems []string
}

func (e *ValidationError) Error() string {
	what := e.Method + " " + e.Path
	if e.Status != 0 {
		what = fmt.Sprintf("response %d to %s", e.Status, what)
	}
	return what + ": " + strings.Join(e.Problems, "; ")
}

// Validate checks one API request against the embedded Firecracker
// v1.16.1 swagger document: the path and method must exist, a required
// body must be there (and a body only where the operation takes one), the
// body must be one JSON value with no duplicate keys, and it must match its
// schema exactly: required fields present, types right (an integer is a
// JSON number without fraction or exponent, and never negative: every
// integer in Firecracker's API is unsigned), enums, minimum/maximum,
// formats, and no field the schema does not name unless it says
// additionalProperties: true. The error is a *ValidationError.
func Validate(method, path string, body []byte) error {
	return mustSpec().Validate(method, path, body)
}

// ValidateResponse checks a response the fake (or anything else claiming
// to be Firecracker) sent for method and path: the status must be one the
// operation declares (or its default), and the body must match that
// response's schema, or be empty when it has none.
func ValidateResponse(method, path string, status int, body []byte) error {
	return mustSpec().ValidateResponse(method, path, status, body)
}

// Validate is the package-level Validate against s.
func (s *Spec) Validate(method, path string, body []byte) error {
	verr := &ValidationError{Method: method, Path: path}
	op, _, err := s.op(method, path)
	if err != nil {
		verr.Problems = []string{"path: " + err.Error()}
		return verr
	}
	body = bytes.TrimSpace(body)
	switch {
	case op.body == nil && len(body) > 0:
		verr.Problems = []string{"body: " + method + " " + path + " takes no body"}
	case op.body == nil || len(body) == 0 && !op.bodyReq:
	case len(body) == 0:
		verr.Problems = []string{"body: required" + bodyWhat(op) + " but empty"}
	default:
		v, err := decodeJSON(body)
		if err != nil {
			verr.Problems = []string{"body: " + err.Error()}
			break
		}
		verr.Problems = s.check(op.body, v, "body")
	}
	if len(verr.Problems) > 0 {
		return verr
	}
	return nil
}

func bodyWhat(op *operation) string {
	if op.bodyName != "" {
		return " (" + op.bodyName + ")"
	}
	return ""
}

// ValidateResponse is the package-level ValidateResponse against s.
func (s *Spec) ValidateResponse(method, path string, status int, body []byte) error {
	verr := &ValidationError{Method: method, Path: path, Status: status}
	op, _, err := s.op(method, path)
	if err != nil {
		verr.Problems = []string{"path: " + err.Error()}
		return verr
	}
	code := strconv.Itoa(status)
	if !op.respKnown[code] {
		if !op.respKnown["default"] {
			verr.Problems = []string{fmt.Sprintf("status: %d is not a declared response", status)}
			return verr
		}
		code = "default"
	}
	sc := op.responses[code]
	body = bytes.TrimSpace(body)
	switch {
	case sc == nil && len(body) > 0:
		verr.Problems = []string{fmt.Sprintf("body: response %s has no schema, so no body, got %q", code, body)}
	case sc == nil:
	case len(body) == 0:
		verr.Problems = []string{"body: response " + code + " has a schema but the body is empty"}
	default:
		v, err := decodeJSON(body)
		if err != nil {
			verr.Problems = []string{"body: " + err.Error()}
			break
		}
		verr.Problems = s.check(sc, v, "body")
	}
	if len(verr.Problems) > 0 {
		return verr
	}
	return nil
}

// ValidateDefinition checks a JSON document against one definition of the
// document (e.g. "Drive"), as Validate does for request bodies.
func (s *Spec) ValidateDefinition(name string, doc []byte) error {
	sc := s.definitions[name]
	if sc == nil {
		return fmt.Errorf("no definition %q in Firecracker's swagger document", name)
	}
	v, err := decodeJSON(bytes.TrimSpace(doc))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if problems := s.check(sc, v, name); len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// check validates v against sc and returns every problem found.
func (s *Spec) check(sc *schema, v any, at string) []string {
	sc = s.resolve(sc)
	if sc == nil {
		return []string{at + ": schema missing"}
	}
	if v == nil {
		return []string{at + ": null is not allowed (Firecracker's document has no nullable fields; omit the field instead)"}
	}
	typ := sc.Type
	if typ == "" && sc.Properties != nil {
		typ = "object"
	}
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, at+": "+fmt.Sprintf(format, args...)) }
	switch typ {
	case "object":
		obj, ok := v.(map[string]any)
		if !ok {
			bad("want an object%s, got %s", defName(sc), describe(v))
			return problems
		}
		for _, r := range sc.Required {
			if _, ok := obj[r]; !ok {
				bad("required field %q is missing", r)
			}
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			p, known := sc.Properties[k]
			if !known {
				if sc.AdditionalProperties == nil || !*sc.AdditionalProperties {
					bad("unknown field %q%s (known: %s)", k, defName(sc), knownFields(sc))
				}
				continue
			}
			problems = append(problems, s.check(p, obj[k], at+"."+k)...)
		}
	case "array":
		arr, ok := v.([]any)
		if !ok {
			bad("want an array, got %s", describe(v))
			return problems
		}
		for i, item := range arr {
			problems = append(problems, s.check(sc.Items, item, fmt.Sprintf("%s[%d]", at, i))...)
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			bad("want a string, got %s", describe(v))
			return problems
		}
		if sc.pattern != nil && !sc.pattern.MatchString(str) {
			bad("%q does not match the format %s", str, sc.Format)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			bad("want a boolean (true or false), got %s", describe(v))
			return problems
		}
	case "integer":
		n, ok := v.(json.Number)
		if !ok {
			bad("want an integer, got %s", describe(v))
			return problems
		}
		if strings.ContainsAny(n.String(), ".eE") {
			bad("want an integer, got the number %s (a fraction or exponent is refused)", n)
			return problems
		}
		i, ok := new(big.Int).SetString(n.String(), 10)
		if !ok {
			bad("want an integer, got %s", n)
			return problems
		}
		if i.Sign() < 0 && (sc.Minimum == nil || *sc.Minimum < 0) {
			bad("%s is negative; Firecracker's integers are unsigned", n)
		}
		switch sc.Format {
		case "int32":
			if !i.IsInt64() || i.Int64() > math.MaxInt32 || i.Int64() < math.MinInt32 {
				bad("%s does not fit format int32", n)
			}
		case "int64":
			if !i.IsInt64() {
				bad("%s does not fit format int64", n)
			}
		default:
			if !i.IsUint64() && i.Sign() >= 0 {
				bad("%s does not fit a 64-bit integer", n)
			}
		}
		f, _ := new(big.Float).SetInt(i).Float64()
		if sc.Minimum != nil && f < *sc.Minimum {
			bad("%s is below the minimum %v", n, *sc.Minimum)
		}
		if sc.Maximum != nil && f > *sc.Maximum {
			bad("%s is above the maximum %v", n, *sc.Maximum)
		}
	case "number":
		if _, ok := v.(json.Number); !ok {
			bad("want a number, got %s", describe(v))
			return problems
		}
	default:
		bad("schema%s has unsupported type %q", defName(sc), sc.Type)
		return problems
	}
	if len(sc.Enum) > 0 && len(problems) == 0 {
		found := false
		for _, e := range sc.Enum {
			if fmt.Sprint(e) == fmt.Sprint(v) {
				found = true
				break
			}
		}
		if !found {
			allowed := make([]string, len(sc.Enum))
			for i, e := range sc.Enum {
				allowed[i] = fmt.Sprintf("%q", fmt.Sprint(e))
			}
			bad("%s is not one of %s", describeValue(v), strings.Join(allowed, ", "))
		}
	}
	return problems
}

func defName(sc *schema) string {
	if sc.name == "" {
		return ""
	}
	return " (" + sc.name + ")"
}

func knownFields(sc *schema) string {
	if len(sc.Properties) == 0 {
		return "none"
	}
	names := make([]string, 0, len(sc.Properties))
	for n := range sc.Properties {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func describe(v any) string {
	switch x := v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case string:
		return fmt.Sprintf("the string %q", x)
	case bool:
		return fmt.Sprintf("the boolean %v", x)
	case json.Number:
		return "the number " + x.String()
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

func describeValue(v any) string {
	if s, ok := v.(string); ok {
		return strconv.Quote(s)
	}
	return describe(v)
}

// decodeJSON parses exactly one JSON value, keeping numbers as
// json.Number and refusing duplicate object keys (Firecracker's
// deserializer refuses a field given twice) and trailing data.
func decodeJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := decodeValue(dec)
	if err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("invalid JSON: more than one value (trailing data)")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		if err == io.EOF {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			obj := map[string]any{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, ok := kt.(string)
				if !ok {
					return nil, fmt.Errorf("object key %v is not a string", kt)
				}
				if _, dup := obj[k]; dup {
					return nil, fmt.Errorf("duplicate field %q", k)
				}
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				obj[k] = v
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return obj, nil
		case '[':
			arr := []any{}
			for dec.More() {
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return arr, nil
		}
		return nil, fmt.Errorf("unexpected %v", t)
	default:
		return tok, nil
	}
}
