package client

import (
	"context"
	"net/url"
	"time"
)

// APIKey is an API key's record (never its secret).
type APIKey struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	User       string     `json:"user,omitempty"`
	Admin      bool       `json:"admin"`
	Status     string     `json:"status"` // active, revoked or expired
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
}

// CreateAPIKey is the body of POST /v1/apikeys. Give ExpiresAt or
// TTLSeconds, or neither (the key never expires).
type CreateAPIKey struct {
	Name       string     `json:"name,omitempty"`
	User       string     `json:"user,omitempty"`
	Admin      bool       `json:"admin,omitempty"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	TTLSeconds int64      `json:"ttl_seconds,omitempty"`
}

// CreatedAPIKey is a new key, shown this once, and its record.
type CreatedAPIKey struct {
	Key    string `json:"key"`
	APIKey APIKey `json:"api_key"`
}

// CreateAPIKey makes a key (admin keys only).
func (c *Client) CreateAPIKey(ctx context.Context, req CreateAPIKey) (CreatedAPIKey, error) {
	var k CreatedAPIKey
	err := c.Do(ctx, "POST", "/v1/apikeys", req, &k)
	return k, err
}

// ListAPIKeys lists keys: user "" = every key an admin key may see, or the
// key's own user's for a user key.
func (c *Client) ListAPIKeys(ctx context.Context, user string) ([]APIKey, error) {
	var out struct {
		APIKeys []APIKey `json:"api_keys"`
	}
	path := "/v1/apikeys"
	if user != "" {
		path += "?user=" + url.QueryEscape(user)
	}
	err := c.Do(ctx, "GET", path, nil, &out)
	return out.APIKeys, err
}

// RevokeAPIKey revokes a key; force also revokes the last active admin key.
func (c *Client) RevokeAPIKey(ctx context.Context, id string, force bool) (APIKey, error) {
	var k APIKey
	path := "/v1/apikeys/" + url.PathEscape(id)
	if force {
		path += "?force=true"
	}
	err := c.Do(ctx, "DELETE", path, nil, &k)
	return k, err
}
