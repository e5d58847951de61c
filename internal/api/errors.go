package api

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/errdefs"
)

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client may have gone; nothing to do about it
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, v1.Error{Error: v1.ErrorDetail{Code: v1.ErrorDetailCode(code), Message: msg}})
}

// classify maps an error class to a status and code. This is the only place
// that knows HTTP status codes for domain errors.
func classify(err error) (int, string) {
	switch {
	case errors.Is(err, errBodyTimeout):
		return http.StatusRequestTimeout, "request_timeout"
	case errors.Is(err, errdefs.ErrInvalid):
		return http.StatusBadRequest, "invalid_argument"
	case errors.Is(err, errdefs.ErrNotFound):
		return http.StatusNotFound, "not_found"
	case errors.Is(err, errdefs.ErrConflict):
		return http.StatusConflict, "conflict"
	case errors.Is(err, errdefs.ErrForbidden):
		return http.StatusForbidden, "forbidden"
	case errors.Is(err, errdefs.ErrTimeout):
		return http.StatusRequestTimeout, "wait_timeout"
	case errors.Is(err, errdefs.ErrUnavailable):
		return http.StatusServiceUnavailable, "unavailable"
	case errors.Is(err, errdefs.ErrRateLimited):
		return http.StatusTooManyRequests, "rate_limited"
	default:
		return http.StatusInternalServerError, "internal"
	}
}

// errLoginsOff and errViewersOff answer the routes of a subsystem this
// server runs without.
var (
	errLoginsOff  = errdefs.Unavailablef("logins are not enabled on this server")
	errViewersOff = errdefs.Unavailablef("viewers are not enabled on this server")
)

// fail answers with err's class; internal detail is logged, never sent.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	status, code := classify(err)
	msg := errdefs.Public(err)
	if status == http.StatusInternalServerError || msg == "" {
		s.internalError(w, r, err)
		return
	}
	if after, ok := errdefs.RetryAfter(err); ok {
		setRetryAfter(w, after)
	}
	writeError(w, status, code, msg)
}

// setRetryAfter tells the client to try again after d, in whole seconds
// rounded up (never "0", which means "now"), and returns the seconds.
func setRetryAfter(w http.ResponseWriter, d time.Duration) int64 {
	secs := max(1, int64((d+time.Second-1)/time.Second))
	w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	return secs
}

func (s *Server) internalError(w http.ResponseWriter, r *http.Request, err error) {
	s.Log.Error("request failed", "request_id", requestID(r), "method", r.Method, "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, "internal", "internal error (request "+requestID(r)+")")
}

const maxBody = 1 << 20

// decodeJSON reads one JSON object into v, refusing unknown fields, trailing
// data, wrong types and oversized bodies with messages that say what was
// wrong.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return errdefs.Invalidf("Content-Type must be application/json, got %q", ct)
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if dec.More() {
		return errdefs.Invalidf("request body must hold a single JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return errdefs.Invalidf("request body must hold a single JSON object")
	}
	bodyRead(w)
	return nil
}

// decodeJSONOptional is decodeJSON for requests whose body may be empty
// (every field has a default).
func decodeJSONOptional(w http.ResponseWriter, r *http.Request, v any) error {
	if r.ContentLength == 0 {
		return nil
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	br := bufio.NewReader(r.Body)
	if _, err := br.Peek(1); err == io.EOF {
		bodyRead(w)
		return nil
	}
	r.Body = struct {
		io.Reader
		io.Closer
	}{br, r.Body}
	return decodeJSON(w, r, v)
}

func jsonError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var big *http.MaxBytesError
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errBodyTimeout
	case errors.Is(err, io.EOF):
		return errdefs.Invalidf("request body is empty; expected a JSON object")
	case errors.As(err, &syn):
		return errdefs.Invalidf("malformed JSON at byte %d: %v", syn.Offset, syn)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errdefs.Invalidf("malformed JSON: unexpected end of body")
	case errors.As(err, &typ):
		if typ.Field != "" {
			return errdefs.Invalidf("field %q must be %s, got %s", typ.Field, jsonKind(typ.Type.Kind().String()), typ.Value)
		}
		return errdefs.Invalidf("request body must be a JSON object, got %s", typ.Value)
	case errors.As(err, &big):
		return errdefs.Invalidf("request body larger than %d bytes", big.Limit)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return errdefs.Invalidf("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	default:
		return errdefs.Invalidf("malformed JSON: %v", err)
	}
}

func jsonKind(k string) string {
	switch k {
	case "int", "int64", "int32", "uint", "uint64":
		return "an integer"
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	default:
		return fmt.Sprintf("of type %s", k)
	}
}
