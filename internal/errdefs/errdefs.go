// Package errdefs defines the few error classes hearth's packages return and
// the API maps to HTTP status codes (only at the edge). Wrap them with
// fmt.Errorf("...: %w", errdefs.ErrInvalid) or use the constructors, which
// keep a message meant for the caller.
package errdefs

import (
	"errors"
	"fmt"
	"time"
)

// The error classes.
var (
	ErrInvalid     = errors.New("invalid argument")  // 400/422: the caller must change the request
	ErrNotFound    = errors.New("not found")         // 404
	ErrConflict    = errors.New("conflict")          // 409: the resource's state forbids it now
	ErrUnavailable = errors.New("unavailable")       // 503: try again later
	ErrForbidden   = errors.New("forbidden")         // 403
	ErrTimeout     = errors.New("deadline exceeded") // 408 for waits the caller bounded
	ErrRateLimited = errors.New("rate limited")      // 429: the caller must slow down (RetryAfter says how long)
)

// classError carries a caller-facing message and a class.
type classError struct {
	class error
	msg   string
}

func (e *classError) Error() string { return e.msg }
func (e *classError) Unwrap() error { return e.class }

func newf(class error, format string, args ...any) error {
	return &classError{class: class, msg: fmt.Sprintf(format, args...)}
}

// Invalidf returns an ErrInvalid whose message is meant for the caller.
func Invalidf(format string, args ...any) error { return newf(ErrInvalid, format, args...) }

// NotFoundf returns an ErrNotFound whose message is meant for the caller.
func NotFoundf(format string, args ...any) error { return newf(ErrNotFound, format, args...) }

// Conflictf returns an ErrConflict whose message is meant for the caller.
func Conflictf(format string, args ...any) error { return newf(ErrConflict, format, args...) }

// Forbiddenf returns an ErrForbidden whose message is meant for the caller.
func Forbiddenf(format string, args ...any) error { return newf(ErrForbidden, format, args...) }

// Unavailablef returns an ErrUnavailable whose message is meant for the caller.
func Unavailablef(format string, args ...any) error { return newf(ErrUnavailable, format, args...) }

// Timeoutf returns an ErrTimeout whose message is meant for the caller.
func Timeoutf(format string, args ...any) error { return newf(ErrTimeout, format, args...) }

// retryError is an error of a class that passes (ErrRateLimited,
// ErrUnavailable) and says when to try again.
type retryError struct {
	*classError
	after time.Duration
}

func (e *retryError) Unwrap() error { return e.classError }

// RateLimitedf returns an ErrRateLimited whose message is meant for the
// caller, who may try again after retryAfter.
func RateLimitedf(retryAfter time.Duration, format string, args ...any) error {
	return &retryError{classError: &classError{class: ErrRateLimited, msg: fmt.Sprintf(format, args...)}, after: retryAfter}
}

// UnavailableRetryf returns an ErrUnavailable whose message is meant for
// the caller, who may try again after retryAfter.
func UnavailableRetryf(retryAfter time.Duration, format string, args ...any) error {
	return &retryError{classError: &classError{class: ErrUnavailable, msg: fmt.Sprintf(format, args...)}, after: retryAfter}
}

// RetryAfter returns how long the caller of a RateLimitedf or
// UnavailableRetryf error should wait, and false for any other error.
func RetryAfter(err error) (time.Duration, bool) {
	var re *retryError
	if errors.As(err, &re) {
		return re.after, true
	}
	return 0, false
}

// Public returns the caller-facing message of err if it was made by this
// package's constructors, and "" otherwise (so internal detail such as
// paths and command output is never sent to a caller by accident).
func Public(err error) string {
	var ce *classError
	if errors.As(err, &ce) {
		return ce.msg
	}
	return ""
}
