package config

import "time"

// APIConfig bounds what HTTP clients can hold on the API: the time a
// request may take to arrive, a response to leave and a connection to sit
// idle, the size of headers, and the connections held at once.
type APIConfig struct {
	// ReadHeaderTimeout bounds reading a request's headers; a connection
	// that sends nothing is closed after it.
	ReadHeaderTimeout Duration `toml:"read_header_timeout"`
	// ReadTimeout bounds reading a whole request, headers and body.
	ReadTimeout Duration `toml:"read_timeout"`
	// WriteTimeout bounds writing a response once the handler starts to
	// answer; streams (events, console follow) get it per write.
	WriteTimeout Duration `toml:"write_timeout"`
	// IdleTimeout closes a keep-alive connection idle this long.
	IdleTimeout Duration `toml:"idle_timeout"`
	// MaxHeaderBytes bounds a request's header block.
	MaxHeaderBytes int `toml:"max_header_bytes"`
	// MaxConnections and MaxConnectionsPerClient cap the connections held
	// at once, overall and per client IP address. At a cap the connection
	// idle longest is closed to make room; a new one is refused (503) only
	// when every held one is busy.
	MaxConnections          int `toml:"max_connections"`
	MaxConnectionsPerClient int `toml:"max_connections_per_client"`
}

func defaultAPI() APIConfig {
	return APIConfig{
		ReadHeaderTimeout:       Duration{10 * time.Second},
		ReadTimeout:             Duration{30 * time.Second},
		WriteTimeout:            Duration{30 * time.Second},
		IdleTimeout:             Duration{30 * time.Second},
		MaxHeaderBytes:          64 << 10,
		MaxConnections:          4096,
		MaxConnectionsPerClient: 1024,
	}
}

func (a APIConfig) validate(bad func(field, format string, args ...any)) {
	for _, d := range []struct {
		name string
		v    Duration
	}{{"api.read_header_timeout", a.ReadHeaderTimeout}, {"api.read_timeout", a.ReadTimeout},
		{"api.write_timeout", a.WriteTimeout}, {"api.idle_timeout", a.IdleTimeout}} {
		if d.v.Duration < 100*time.Millisecond || d.v.Duration > 10*time.Minute {
			bad(d.name, "must be 100ms-10m, got %s", d.v.Duration)
		}
	}
	if a.ReadTimeout.Duration < a.ReadHeaderTimeout.Duration {
		bad("api.read_timeout", "must be at least api.read_header_timeout (%s), got %s", a.ReadHeaderTimeout.Duration, a.ReadTimeout.Duration)
	}
	if a.MaxHeaderBytes < 4<<10 || a.MaxHeaderBytes > 1<<20 {
		bad("api.max_header_bytes", "must be 4096-1048576, got %d", a.MaxHeaderBytes)
	}
	if a.MaxConnections < 16 || a.MaxConnections > 1<<20 {
		bad("api.max_connections", "must be 16-1048576, got %d", a.MaxConnections)
	}
	if a.MaxConnectionsPerClient < 1 || a.MaxConnectionsPerClient > a.MaxConnections {
		bad("api.max_connections_per_client", "must be 1-%d (api.max_connections), got %d", a.MaxConnections, a.MaxConnectionsPerClient)
	}
}
