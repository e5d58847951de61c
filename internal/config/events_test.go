package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidateNamesEventAndRateFields(t *testing.T) {
	cases := []struct {
		field string
		mut   func(*Config)
	}{
		{"events.max_age", func(c *Config) { c.Events.MaxAge.Duration = -time.Second }},
		{"events.max_age", func(c *Config) { c.Events.MaxAge.Duration = time.Second }},
		{"events.max_rows", func(c *Config) { c.Events.MaxRows = -1 }},
		{"events.max_rows", func(c *Config) { c.Events.MaxRows = 10 }},
		{"events.prune_interval", func(c *Config) { c.Events.PruneInterval.Duration = 0 }},
		{"events.prune_batch", func(c *Config) { c.Events.PruneBatch = 0 }},
		{"events.prune_batch", func(c *Config) { c.Events.PruneBatch = 1_000_000 }},
		{"events.max_streams_per_user", func(c *Config) { c.Events.MaxStreamsPerUser = 0 }},
		{"login.create_burst", func(c *Config) { c.Login.CreateBurst = 0 }},
		{"login.create_every", func(c *Config) { c.Login.CreateEvery.Duration = time.Millisecond }},
	}
	for _, tc := range cases {
		t.Run(tc.field, func(t *testing.T) {
			c := Default()
			tc.mut(&c)
			err := c.Validate()
			var fe *FieldError
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.field+": ") {
				t.Fatalf("error %v does not name %s", err, tc.field)
			}
		})
	}
	// No limit at all is a choice, not a mistake.
	c := Default()
	c.Events.MaxAge.Duration, c.Events.MaxRows = 0, 0
	if err := c.Validate(); err != nil {
		t.Fatalf("retention off: %v", err)
	}
}
