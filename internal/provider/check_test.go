package provider

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

var checkNow = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

// dummyJWT is a JWT-shaped dummy (unsigned) with the given claims.
func dummyJWT(claims map[string]any) string {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(map[string]string{"alg": "RS256", "typ": "JWT"}) + "." + enc(claims) + ".DUMMYSIGNATURExyz"
}

// samples returns a realistic credential file for each provider (every
// value a dummy) whose expiry is exp.
func samples(exp time.Time) map[string]map[string]any {
	ms := exp.UnixMilli()
	return map[string]map[string]any{
		"claude_code": {
			"claudeAiOauth": map[string]any{
				"accessToken":      "sk-ant-oat01-DUMMYACCESSTOKENclaude0000000000000000000000000000",
				"refreshToken":     "sk-ant-ort01-DUMMYREFRESHTOKENclaude000000000000000000000000000",
				"expiresAt":        ms,
				"scopes":           []string{"user:inference", "user:profile", "user:sessions:claude_code"},
				"subscriptionType": "maxDummyPlan",
				"rateLimitTier":    "dummy_rate_limit_tier",
			},
		},
		"codex": {
			"auth_mode":      "chatgpt",
			"OPENAI_API_KEY": nil,
			"tokens": map[string]any{
				"id_token": dummyJWT(map[string]any{"email": "dummy.user@example.test", "exp": exp.Unix(),
					"https://api.openai.com/auth": map[string]any{"chatgpt_plan_type": "plusdummy", "chatgpt_account_id": "acct-dummy-0001"}}),
				"access_token":  dummyJWT(map[string]any{"exp": exp.Unix(), "scp": []string{"openid", "offline_access"}, "jti": "dummy-jti-0001"}),
				"refresh_token": "rt_DUMMYREFRESHTOKENcodex00000000000000000000",
				"account_id":    "acct-dummy-0001",
			},
			"last_refresh": "2026-11-29T11:00:00.123456Z",
		},
		"gemini_cli": {
			"access_token":  "ya29.DUMMYACCESSTOKENgemini0000000000000000000000000000",
			"refresh_token": "1//0DUMMYREFRESHTOKENgemini00000000000000000000000",
			"scope":         "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email openid",
			"token_type":    "Bearer",
			"id_token":      dummyJWT(map[string]any{"email": "dummy.user@example.test", "exp": exp.Unix()}),
			"expiry_date":   ms,
		},
		"fake_cli": {
			"fakeOauth": map[string]any{
				"accessToken":  "fake-at-DUMMYACCESS0000000000000000",
				"refreshToken": "fake-rt-DUMMYREFRESH000000000000000",
				"expiresAt":    ms,
				"tokenType":    "Bearer",
			},
		},
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// secretsOf lists every leaf value of a sample as text (strings, numbers),
// plus the payload parts of JWTs, so that errors can be checked for them.
func secretsOf(v any) []string {
	var out []string
	switch x := v.(type) {
	case map[string]any:
		for _, e := range x {
			out = append(out, secretsOf(e)...)
		}
	case []string:
		out = append(out, x...)
	case string:
		out = append(out, x)
		for _, part := range strings.Split(x, ".") {
			if len(part) >= 8 {
				out = append(out, part)
			}
		}
	case int64:
		out = append(out, fmt.Sprint(x))
	}
	return out
}

// noSecrets fails if err's text contains any value of the sample.
func noSecrets(t *testing.T, err error, sample map[string]any) {
	t.Helper()
	if err == nil {
		return
	}
	msg := err.Error()
	for _, s := range secretsOf(sample) {
		if len(s) >= 4 && strings.Contains(msg, s) {
			t.Errorf("error %q contains the value %q", msg, s)
		}
	}
}

// remove deletes a dotted field from a deep copy of sample.
func remove(t *testing.T, sample map[string]any, field string) map[string]any {
	t.Helper()
	var cp map[string]any
	if err := json.Unmarshal(mustJSON(t, sample), &cp); err != nil {
		t.Fatal(err)
	}
	segs := strings.Split(field, ".")
	m := cp
	for _, s := range segs[:len(segs)-1] {
		m = m[s].(map[string]any)
	}
	delete(m, segs[len(segs)-1])
	return cp
}

// set sets a dotted field in a deep copy of sample.
func set(t *testing.T, sample map[string]any, field string, v any) map[string]any {
	t.Helper()
	cp := remove(t, sample, field)
	segs := strings.Split(field, ".")
	m := cp
	for _, s := range segs[:len(segs)-1] {
		m = m[s].(map[string]any)
	}
	m[segs[len(segs)-1]] = v
	return cp
}

func TestCheckSamples(t *testing.T) {
	r, err := LoadWithTestProviders()
	if err != nil {
		t.Fatal(err)
	}
	good := samples(checkNow.Add(time.Hour))
	expired := samples(checkNow.Add(-time.Hour))
	for _, name := range r.Names() {
		p, _ := r.Get(name)
		cred := p.Credentials[0]
		sample := good[name]
		if sample == nil {
			t.Fatalf("no sample for %s", name)
		}
		home := "/home/hearth/" + strings.TrimPrefix(cred.Path, "~/")
		t.Run(name+"/good", func(t *testing.T) {
			for _, path := range []string{cred.Path, home} {
				info, err := p.Check(path, mustJSON(t, sample), checkNow)
				if err != nil {
					t.Fatal(err)
				}
				if info.Expired || !info.ExpiresAt.Equal(checkNow.Add(time.Hour)) || info.Path != cred.Path {
					t.Errorf("info = %+v, want expiry %v, not expired", info, checkNow.Add(time.Hour))
				}
			}
		})
		t.Run(name+"/expired", func(t *testing.T) {
			info, err := p.Check(home, mustJSON(t, expired[name]), checkNow)
			if err != nil {
				t.Fatal(err)
			}
			if !info.Expired || !info.ExpiresAt.Equal(checkNow.Add(-time.Hour)) {
				t.Errorf("info = %+v, want expired at %v", info, checkNow.Add(-time.Hour))
			}
		})
		t.Run(name+"/incomplete", func(t *testing.T) {
			full := mustJSON(t, sample)
			for _, n := range []int{0, 1, len(full) / 3, len(full) / 2, len(full) - 1} {
				_, err := p.Check(home, full[:n], checkNow)
				if !errors.Is(err, ErrIncomplete) || errors.Is(err, ErrInvalid) {
					t.Errorf("%d of %d bytes: err = %v, want incomplete", n, len(full), err)
				}
				if err != nil && !strings.Contains(err.Error(), "incomplete") {
					t.Errorf("error %q does not say incomplete", err)
				}
				noSecrets(t, err, sample)
			}
		})
		t.Run(name+"/invalid", func(t *testing.T) {
			full := mustJSON(t, sample)
			for what, content := range map[string][]byte{
				"garbage in a value": []byte(strings.Replace(string(full), `": "`, `": x"`, 1)),
				"trailing data":      append(append([]byte{}, full...), []byte(" trailing-"+secretsOf(sample)[0])...),
				"an array":           []byte(`["` + secretsOf(sample)[0] + `"]`),
				"two objects":        append(append([]byte{}, full...), full...),
				"not JSON at all":    []byte("token=" + secretsOf(sample)[0] + "\n"),
			} {
				_, err := p.Check(home, content, checkNow)
				if !errors.Is(err, ErrInvalid) || errors.Is(err, ErrIncomplete) {
					t.Errorf("%s: err = %v, want invalid", what, err)
				}
				if err != nil && !strings.Contains(err.Error(), "invalid") {
					t.Errorf("%s: error %q does not say invalid", what, err)
				}
				noSecrets(t, err, sample)
			}
		})
		t.Run(name+"/missing-field", func(t *testing.T) {
			for _, f := range cred.Required {
				for what, s := range map[string]map[string]any{
					"absent": remove(t, sample, f),
					"empty":  set(t, sample, f, ""),
					"null":   set(t, sample, f, nil),
				} {
					_, err := p.Check(home, mustJSON(t, s), checkNow)
					if !errors.Is(err, ErrMissingField) || !strings.Contains(err.Error(), f) {
						t.Errorf("%s %s: err = %v, want missing field naming it", what, f, err)
					}
					noSecrets(t, err, sample)
				}
			}
		})
		t.Run(name+"/bad-expiry", func(t *testing.T) {
			e := cred.ExpiresAt
			var bad any = "tomorrow-" + secretsOf(sample)[0]
			if e.Unit == UnitJWTExp {
				bad = dummyJWT(map[string]any{"sub": "dummy-subject-0001"}) // no exp claim
			}
			_, err := p.Check(home, mustJSON(t, set(t, sample, e.Field, bad)), checkNow)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), e.Field) {
				t.Errorf("err = %v, want invalid expiry naming %s", err, e.Field)
			}
			noSecrets(t, err, sample)
			noSecrets(t, err, map[string]any{"bad": bad})
		})
	}
}

func TestParseExpiryUnits(t *testing.T) {
	want := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tt := range []struct {
		unit string
		v    any
	}{
		{UnitMilliseconds, json.Number(fmt.Sprint(want.UnixMilli()))},
		{UnitSeconds, json.Number(fmt.Sprint(want.Unix()))},
		{UnitSeconds, json.Number(fmt.Sprint(want.Unix()) + ".0")},
		{UnitRFC3339, "2026-01-02T03:04:05Z"},
		{UnitRFC3339, "2026-01-02T04:04:05+01:00"},
		{UnitJWTExp, dummyJWT(map[string]any{"exp": want.Unix()})},
	} {
		got, err := parseExpiry(tt.v, tt.unit)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseExpiry(%v, %s) = %v, %v; want %v", tt.v, tt.unit, got, err, want)
		}
	}
	for _, tt := range []struct {
		unit string
		v    any
	}{
		{UnitMilliseconds, "1767225600000"},
		{UnitMilliseconds, json.Number("-5")},
		{UnitMilliseconds, json.Number("1e300")},
		{UnitSeconds, true},
		{UnitRFC3339, json.Number("5")},
		{UnitRFC3339, "yesterday"},
		{UnitJWTExp, "a.b"},
		{UnitJWTExp, "a.!!!.c"},
		{UnitJWTExp, "a." + base64.RawURLEncoding.EncodeToString([]byte(`{"exp":"soon"}`)) + ".c"},
	} {
		if _, err := parseExpiry(tt.v, tt.unit); err == nil {
			t.Errorf("parseExpiry(%v, %s) accepted", tt.v, tt.unit)
		}
	}
}

func TestCheckWithoutExpiry(t *testing.T) {
	c := Credential{Path: "~/.x/c.json", Format: FormatJSON, Required: []string{"a.b"}}
	info, err := c.Check([]byte(`{"a": {"b": 5}}`), checkNow)
	if err != nil || !info.ExpiresAt.IsZero() || info.Expired {
		t.Fatalf("info %+v, err %v", info, err)
	}
	// A required field under a non-object is absent, not a crash.
	if _, err := c.Check([]byte(`{"a": "str"}`), checkNow); !errors.Is(err, ErrMissingField) {
		t.Errorf("err = %v", err)
	}
	if _, err := c.Check([]byte(`{"a": {"b": {}}}`), checkNow); !errors.Is(err, ErrMissingField) {
		t.Errorf("empty object: err = %v", err)
	}
}
