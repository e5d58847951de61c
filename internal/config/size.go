package config

import (
	"fmt"
	"strconv"
	"strings"
)

// Size is a number of bytes that reads and writes as "16MiB" in TOML (B,
// KiB, MiB, GiB, TiB; a bare number is bytes).
type Size int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}

// UnmarshalText parses a size.
func (s *Size) UnmarshalText(b []byte) error {
	text := strings.TrimSpace(string(b))
	mult := int64(1)
	num := text
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(text, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return fmt.Errorf("size %q: want a whole number of B, KiB, MiB, GiB or TiB, e.g. \"16MiB\"", text)
	}
	*s = Size(n * mult)
	return nil
}

// MarshalText formats the size in the largest unit that divides it.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

func (s Size) String() string {
	for _, u := range sizeUnits {
		if s != 0 && int64(s)%u.mult == 0 {
			return strconv.FormatInt(int64(s)/u.mult, 10) + u.suffix
		}
	}
	return "0B"
}

// ConsoleConfig bounds each VM's serial console: what is kept on disk
// (the boot head for good, the latest output in a rolling tail) and how
// fast the daemon reads it.
type ConsoleConfig struct {
	// MaxSize bounds a VM's console log on disk, head and tail together.
	MaxSize Size `toml:"max_size"`
	// HeadSize is how much of the first output (the boot) is kept for
	// good; the rest of MaxSize holds the latest output.
	HeadSize Size `toml:"head_size"`
	// Rate is the most bytes per second read from one VM's console;
	// Burst the most read at once after a quiet spell. A guest writing
	// faster is held back (QEMU) or loses what its pipe cannot take
	// (Firecracker); the daemon never reads more.
	Rate  Size `toml:"rate"`
	Burst Size `toml:"burst"`
}

func (c ConsoleConfig) validate(bad func(field, format string, args ...any)) {
	const minTail = 8 << 10
	switch {
	case c.HeadSize < 0:
		bad("console.head_size", "must not be negative, got %s", c.HeadSize)
	case c.MaxSize < c.HeadSize+minTail:
		bad("console.max_size", "must exceed console.head_size (%s) by at least 8KiB for the rolling tail, got %s", c.HeadSize, c.MaxSize)
	}
	if c.Rate < 1<<10 {
		bad("console.rate", "must be at least 1KiB (per second), got %s", c.Rate)
	}
	if c.Burst < 1<<10 {
		bad("console.burst", "must be at least 1KiB, got %s", c.Burst)
	}
}
