package sqlite

import (
	"database/sql"
	"fmt"
	"time"
)

// timeLayout is RFC 3339 with a fixed nine-digit fraction. Stored in UTC it
// has a fixed width, so text order is chronological order. time.RFC3339Nano
// parses it.
const timeLayout = "2006-01-02T15:04:05.000000000Z07:00"

// timeArg encodes t for a nullable time column: NULL for the zero time,
// otherwise fixed-width UTC text.
func timeArg(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format(timeLayout)
}

// timeDest is an sql.Scanner that decodes a column written by timeArg into
// *dst; NULL becomes the zero time.
type timeDest struct{ dst *time.Time }

// scanTime returns a scan destination that decodes a time column into dst.
func scanTime(dst *time.Time) sql.Scanner { return timeDest{dst: dst} }

// Scan implements sql.Scanner.
func (d timeDest) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*d.dst = time.Time{}
		return nil
	case string:
		return d.parse(v)
	case []byte:
		return d.parse(string(v))
	case time.Time:
		*d.dst = v.UTC()
		return nil
	default:
		return fmt.Errorf("scan time: unsupported column type %T", src)
	}
}

func (d timeDest) parse(s string) error {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return fmt.Errorf("scan time: %w", err)
	}
	*d.dst = t.UTC()
	return nil
}

// stringArg encodes s for a nullable text column: NULL for "".
func stringArg(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// stringDest is an sql.Scanner that decodes a nullable text column into
// *dst; NULL becomes "".
type stringDest struct{ dst *string }

// scanString returns a scan destination that decodes a nullable text column
// into dst.
func scanString(dst *string) sql.Scanner { return stringDest{dst: dst} }

// Scan implements sql.Scanner.
func (d stringDest) Scan(src any) error {
	var ns sql.NullString
	if err := ns.Scan(src); err != nil {
		return err
	}
	*d.dst = ns.String
	return nil
}
