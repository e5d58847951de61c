package provider

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/hearth-project/hearth/internal/agentapi"
	"io"
	"math"
	"strings"
	"time"
)

// Errors Check wraps; test them with errors.Is. None of Check's errors
// carries a credential's content or any of its values, only field names.
var (
	// ErrIncomplete: the file ends before its JSON value does (or is
	// empty); it is probably still being written, so read it again.
	ErrIncomplete = errors.New("incomplete")
	// ErrInvalid: the file is not what the provider writes (not JSON, not
	// an object, trailing data, an expiry that cannot be read).
	ErrInvalid = errors.New("invalid")
	// ErrMissingField: a required field is absent or empty.
	ErrMissingField = errors.New("missing field")
	// ErrUnknownCredential: the path is none of the provider's
	// credential files.
	ErrUnknownCredential = errors.New("unknown credential file")
)

// Info is what Check learns from a valid credential file.
type Info struct {
	// Path is the credential's path as the provider writes it ("~/...").
	Path string
	// ExpiresAt is when the credential expires (zero if the provider
	// records no expiry).
	ExpiresAt time.Time
	// Expired says ExpiresAt is not after now. An expired access token
	// may still come with a usable refresh token; the caller decides.
	Expired bool
}

// Check validates a captured credential file: path is one of the
// provider's credential paths (see Provider.Credential), content what was
// read from it. It returns an error wrapping ErrIncomplete for a file
// that is still being written (distinct from ErrInvalid), ErrMissingField
// naming the first absent or empty required field, ErrUnknownCredential
// for a path the provider does not write. Errors never include the file's
// content or a field's value.
func (p Provider) Check(path string, content []byte, now time.Time) (Info, error) {
	c, ok := p.Credential(path)
	if !ok {
		var known []string
		for _, c := range p.Credentials {
			known = append(known, c.Path)
		}
		return Info{}, fmt.Errorf("%s: %s: %w (known: %s)", p.Name, path, ErrUnknownCredential, strings.Join(known, ", "))
	}
	info, err := c.Check(content, now)
	if err != nil {
		return Info{}, fmt.Errorf("%s: %w", p.Name, err)
	}
	return info, nil
}

// Check validates content as this credential file (see Provider.Check).
func (c Credential) Check(content []byte, now time.Time) (Info, error) {
	doc, err := decodeJSON(content)
	if err != nil {
		return Info{}, fmt.Errorf("%s: %w", c.Path, err)
	}
	obj, ok := doc.(map[string]any)
	if !ok {
		return Info{}, fmt.Errorf("%s: %w: want a JSON object, got %s", c.Path, ErrInvalid, jsonKind(doc))
	}
	for _, f := range c.Required {
		v, found := agentapi.JSONField(obj, f)
		switch {
		case !found:
			return Info{}, fmt.Errorf("%s: %w: %s is absent", c.Path, ErrMissingField, f)
		case agentapi.JSONEmpty(v):
			return Info{}, fmt.Errorf("%s: %w: %s is empty", c.Path, ErrMissingField, f)
		}
	}
	info := Info{Path: c.Path}
	if c.ExpiresAt == nil {
		return info, nil
	}
	v, found := agentapi.JSONField(obj, c.ExpiresAt.Field)
	if !found || agentapi.JSONEmpty(v) {
		return Info{}, fmt.Errorf("%s: %w: %s (the expiry) is absent or empty", c.Path, ErrMissingField, c.ExpiresAt.Field)
	}
	t, err := parseExpiry(v, c.ExpiresAt.Unit)
	if err != nil {
		return Info{}, fmt.Errorf("%s: %w: expiry %s: %s", c.Path, ErrInvalid, c.ExpiresAt.Field, err)
	}
	info.ExpiresAt = t
	info.Expired = !now.Before(t)
	return info, nil
}

// decodeJSON decodes one JSON value (numbers as json.Number), telling a
// truncated file (ErrIncomplete) from a malformed one (ErrInvalid). Its
// errors give byte offsets only, never the text around them.
func decodeJSON(content []byte) (any, error) {
	if len(bytes.TrimSpace(content)) == 0 {
		return nil, fmt.Errorf("%w: the file is empty (it may still be being written)", ErrIncomplete)
	}
	dec := json.NewDecoder(bytes.NewReader(content))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		var syn *json.SyntaxError
		switch {
		case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
			return nil, fmt.Errorf("%w: the JSON ends after %d bytes before its value is complete (it may still be being written)", ErrIncomplete, len(content))
		case errors.As(err, &syn):
			return nil, fmt.Errorf("%w: not JSON (syntax error at byte %d of %d)", ErrInvalid, syn.Offset, len(content))
		default:
			return nil, fmt.Errorf("%w: not JSON", ErrInvalid)
		}
	}
	var extra any
	if err := dec.Decode(&extra); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the JSON value (at byte %d of %d)", ErrInvalid, dec.InputOffset(), len(content))
	}
	return v, nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	}
	return "an object"
}

// parseExpiry reads an expiry in unit. Its errors describe the value's
// kind, never the value.
func parseExpiry(v any, unit string) (time.Time, error) {
	switch unit {
	case UnitMilliseconds, UnitSeconds:
		n, ok := v.(json.Number)
		if !ok {
			return time.Time{}, fmt.Errorf("want a number of %s since the Unix epoch, got %s", unitWord(unit), jsonKind(v))
		}
		return epochTime(n, unit)
	case UnitRFC3339:
		s, ok := v.(string)
		if !ok {
			return time.Time{}, fmt.Errorf("want an RFC 3339 time string, got %s", jsonKind(v))
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return time.Time{}, errors.New("not an RFC 3339 time")
		}
		return t, nil
	case UnitJWTExp:
		s, ok := v.(string)
		if !ok {
			return time.Time{}, fmt.Errorf("want a JWT string, got %s", jsonKind(v))
		}
		return jwtExp(s)
	}
	return time.Time{}, fmt.Errorf("unknown unit %q", unit)
}

func unitWord(unit string) string {
	if unit == UnitMilliseconds {
		return "milliseconds"
	}
	return "seconds"
}

// epochTime converts a number of ms or s since the epoch.
func epochTime(n json.Number, unit string) (time.Time, error) {
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f <= 0 {
		return time.Time{}, fmt.Errorf("want a positive number of %s since the Unix epoch", unitWord(unit))
	}
	if unit == UnitSeconds {
		f *= 1000
	}
	// Reject what cannot be a date between 1970 and 9999.
	if f > 253402300799999 {
		return time.Time{}, fmt.Errorf("number of %s out of range", unitWord(unit))
	}
	return time.UnixMilli(int64(f)).UTC(), nil
}

// jwtExp reads the exp claim of a JWT (header.payload.signature, payload
// base64url JSON) without verifying it.
func jwtExp(s string) (time.Time, error) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || parts[1] == "" {
		return time.Time{}, errors.New("not a JWT (want header.payload.signature)")
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, errors.New("JWT payload is not base64url")
	}
	var claims map[string]any
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	if err := dec.Decode(&claims); err != nil || claims == nil {
		return time.Time{}, errors.New("JWT payload is not a JSON object")
	}
	exp, ok := claims["exp"]
	if !ok {
		return time.Time{}, errors.New("JWT has no exp claim")
	}
	n, ok := exp.(json.Number)
	if !ok {
		return time.Time{}, fmt.Errorf("JWT exp claim is %s, not a number", jsonKind(exp))
	}
	return epochTime(n, UnitSeconds)
}
