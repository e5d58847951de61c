package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestAPIValidateNamesTheField(t *testing.T) {
	cases := []struct {
		field string
		mut   func(*APIConfig)
	}{
		{"api.read_header_timeout", func(a *APIConfig) { a.ReadHeaderTimeout.Duration = 0 }},
		{"api.read_timeout", func(a *APIConfig) { a.ReadTimeout.Duration = time.Hour }},
		{"api.read_timeout", func(a *APIConfig) { a.ReadTimeout.Duration = time.Second }}, // below read_header_timeout
		{"api.write_timeout", func(a *APIConfig) { a.WriteTimeout.Duration = -time.Second }},
		{"api.idle_timeout", func(a *APIConfig) { a.IdleTimeout.Duration = 0 }},
		{"api.max_header_bytes", func(a *APIConfig) { a.MaxHeaderBytes = 100 }},
		{"api.max_header_bytes", func(a *APIConfig) { a.MaxHeaderBytes = 1 << 30 }},
		{"api.max_connections", func(a *APIConfig) { a.MaxConnections = 0 }},
		{"api.max_connections_per_client", func(a *APIConfig) { a.MaxConnectionsPerClient = 0 }},
		{"api.max_connections_per_client", func(a *APIConfig) { a.MaxConnectionsPerClient = a.MaxConnections + 1 }},
	}
	for _, tc := range cases {
		t.Run(tc.field, func(t *testing.T) {
			c := Default()
			tc.mut(&c.API)
			err := c.Validate()
			var fe *FieldError
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.field+": ") {
				t.Fatalf("error %v does not name %s", err, tc.field)
			}
		})
	}
}
