package provider

import (
	"strings"
	"testing"
)

// validProvider is a small valid definition the table tests break.
const validProvider = `name: tiny
display_name: Tiny
login:
  argv: [tiny, login]
  env:
    - BROWSER=/bin/true
  steps:
    - expect: 'Continue\?'
      send: "y\r"
      timeout: 30s
  url_pattern: 'https://auth\.example\.test/authorize\?\S+'
  timeout: 5m
credentials:
  - path: ~/.tiny/creds.json
    format: json
    required: [token.access]
    expires_at:
      field: token.expires
      unit: ms
install:
  - path: ~/.tiny/settings.json
    mode: "0600"
    merge: json
    content: '{"ready": true}'
`

func TestParseValid(t *testing.T) {
	p, err := Parse([]byte(validProvider), "tiny.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "tiny" || p.Login.Timeout.D().String() != "5m0s" || p.Credentials[0].ExpiresAt.Unit != "ms" || p.Install[0].Mode != 0o600 {
		t.Errorf("parsed %+v", p)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, from, to string
		want           []string // substrings of the error
	}{
		{"unknown top-level key", "display_name: Tiny", "display_name: Tiny\nflavour: spicy", []string{"tiny.yaml:3: flavour: unknown field (known: name, display_name, login, credentials, install, prompt)"}},
		{"unknown login key", "  timeout: 5m", "  timeout: 5m\n  shell: bash", []string{"tiny.yaml:13: login.shell: unknown field"}},
		{"unknown step key", "      timeout: 30s", "      timeout: 30s\n      retries: 3", []string{":11: login.steps[0].retries: unknown field"}},
		{"unknown credential key", "    format: json", "    format: json\n    encoding: utf8", []string{":16: credentials[0].encoding: unknown field"}},
		{"key given twice", "  timeout: 5m", "  timeout: 5m\n  timeout: 6m", []string{"login.timeout: given twice"}},
		{"missing argv", "  argv: [tiny, login]\n", "", []string{"tiny.yaml:3: login.argv: missing"}},
		{"empty argv", "argv: [tiny, login]", "argv: []", []string{"login.argv: missing"}},
		{"empty argument", "argv: [tiny, login]", `argv: [tiny, ""]`, []string{"login.argv[1]: empty argument"}},
		{"argv not a list", "argv: [tiny, login]", "argv: tiny login", []string{":4: login.argv: want a list"}},
		{"bad env", "- BROWSER=/bin/true", "- BROWSER", []string{`:6: login.env[0]: want KEY=VALUE, got "BROWSER"`}},
		{"bad env name", "- BROWSER=/bin/true", "- 1X=y", []string{`login.env[0]: bad variable name "1X"`}},
		{"bad expect", `expect: 'Continue\?'`, `expect: 'Continue\?('`, []string{":8: login.steps[0].expect: bad regular expression: error parsing regexp: missing closing )"}},
		{"missing expect", "    - expect: 'Continue\\?'\n      send:", "    - send:", []string{"login.steps[0].expect: missing"}},
		{"bad url_pattern", `url_pattern: 'https://auth\.example\.test/authorize\?\S+'`, `url_pattern: 'https://[a-'`, []string{":11: login.url_pattern: bad regular expression"}},
		{"url_pattern with group", `url_pattern: 'https://auth\.example\.test/authorize\?\S+'`, `url_pattern: 'URL: (https://\S+)'`, []string{"login.url_pattern: has capturing groups"}},
		{"missing url_pattern", "  url_pattern: 'https://auth\\.example\\.test/authorize\\?\\S+'\n", "", []string{"login.url_pattern: missing"}},
		{"bad duration", "timeout: 5m", "timeout: five", []string{`:12: login.timeout: bad duration "five"`}},
		{"negative duration", "timeout: 30s", "timeout: -1s", []string{`login.steps[0].timeout: bad duration "-1s"`}},
		{"too long", "timeout: 5m", "timeout: 5h", []string{"login.timeout: 5h0m0s is longer than 1h0m0s"}},
		{"bad unit", "unit: ms", "unit: minutes", []string{`:19: credentials[0].expires_at.unit: unknown unit "minutes" (want ms, s, rfc3339 or jwt_exp)`}},
		{"missing unit", "      unit: ms\n", "", []string{"credentials[0].expires_at.unit: missing"}},
		{"bad format", "format: json", "format: toml", []string{`:15: credentials[0].format: unknown format "toml"`}},
		{"relative path", "path: ~/.tiny/creds.json", "path: .tiny/creds.json", []string{`credentials[0].path: path ".tiny/creds.json" is neither absolute nor under ~/`}},
		{"unclean path", "path: ~/.tiny/creds.json", "path: ~/../etc/shadow", []string{`credentials[0].path: path "~/../etc/shadow" is not clean`}},
		{"no credentials", "credentials:\n  - path: ~/.tiny/creds.json\n    format: json\n    required: [token.access]\n    expires_at:\n      field: token.expires\n      unit: ms\n", "credentials: []\n", []string{"credentials: missing"}},
		{"no required", "required: [token.access]", "required: []", []string{"credentials[0].required: missing"}},
		{"bad field path", "required: [token.access]", "required: [token..access]", []string{`credentials[0].required[0]: bad field path "token..access"`}},
		{"bad name", "name: tiny", "name: Tiny-CLI", []string{`name: bad provider name "Tiny-CLI"`}},
		{"missing display name", "display_name: Tiny\n", "", []string{"display_name: missing"}},
		{"missing login", "login:", "loginx:", []string{"tiny.yaml:3: loginx: unknown field"}},
		{"bad mode", `mode: "0600"`, `mode: "0999"`, []string{`:22: install[0].mode: bad mode "0999"`}},
		{"bad merge", "merge: json", "merge: yaml", []string{`install[0].merge: unknown merge "yaml"`}},
		{"merge needs object", `content: '{"ready": true}'`, `content: '[1]'`, []string{"install[0].content: merge json needs a JSON object"}},
		{"alias", "argv: [tiny, login]", "argv: &a [tiny, login]\n  extra: *a", []string{"login.extra: unknown field"}},
		{"mapping for scalar", "display_name: Tiny", "display_name: {a: b}", []string{"display_name: want a single value, not a mapping"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(validProvider, tt.from) {
				t.Fatalf("test bug: %q not in the valid provider", tt.from)
			}
			src := strings.Replace(validProvider, tt.from, tt.to, 1)
			_, err := Parse([]byte(src), "tiny.yaml")
			if err == nil {
				t.Fatalf("no error; source:\n%s", src)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\nlacks %q", err, w)
				}
			}
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	src := strings.NewReplacer("unit: ms", "unit: minutes", "format: json", "format: toml", "display_name: Tiny", "display_name: Tiny\nflavour: x").Replace(validProvider)
	_, err := Parse([]byte(src), "tiny.yaml")
	if err == nil {
		t.Fatal("no error")
	}
	// Unknown keys are reported before values are checked.
	if !strings.Contains(err.Error(), "flavour: unknown field") {
		t.Errorf("error %q", err)
	}
	src = strings.NewReplacer("unit: ms", "unit: minutes", "format: json", "format: toml").Replace(validProvider)
	_, err = Parse([]byte(src), "tiny.yaml")
	if err == nil || !strings.Contains(err.Error(), "credentials[0].format") || !strings.Contains(err.Error(), "credentials[0].expires_at.unit") {
		t.Errorf("error %q does not name both problems", err)
	}
}

func TestParseNotYAML(t *testing.T) {
	for _, src := range []string{"", "name: [", "- a\n- b\n"} {
		if _, err := Parse([]byte(src), "bad.yaml"); err == nil || !strings.HasPrefix(err.Error(), "bad.yaml") {
			t.Errorf("Parse(%q) err = %v", src, err)
		}
	}
}

func TestParseMissingLogin(t *testing.T) {
	i := strings.Index(validProvider, "login:")
	j := strings.Index(validProvider, "credentials:")
	_, err := Parse([]byte(validProvider[:i]+validProvider[j:]), "tiny.yaml")
	if err == nil || !strings.Contains(err.Error(), "tiny.yaml: login: missing") {
		t.Fatalf("err = %v", err)
	}
}
