package fctest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

var errMMDSLimit = errors.New("The MMDS patch request doesn't fit.")

// MMDS v2 session tokens live between these many seconds.
const (
	minTokenTTL = 1
	maxTokenTTL = 21600
)

// mmdsStore is the microVM metadata service: the data store the API fills
// (PUT replaces it, PATCH merges a JSON merge patch into it) and the
// guest-facing HTTP service with Firecracker's V1/V2 semantics.
type mmdsStore struct {
	mu          sync.Mutex
	data        any
	initialized bool
	limit       int
	version     string // "V1" (Firecracker's default) or "V2"
	imdsCompat  bool
	tokens      map[string]time.Time // session token -> expiry
}

func newMMDSStore(limit int) *mmdsStore {
	return &mmdsStore{limit: limit, version: "V1", tokens: map[string]time.Time{}}
}

func (m *mmdsStore) setVersion(version string, imdsCompat bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.version, m.imdsCompat = version, imdsCompat
}

func (m *mmdsStore) put(v any) error {
	b, _ := json.Marshal(v)
	if len(b) > m.limit {
		return errMMDSLimit
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.data, m.initialized = v, true
	return nil
}

func (m *mmdsStore) patch(p any) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.initialized {
		return errors.New("The MMDS data store is not initialized.")
	}
	merged := mergePatch(deepCopy(m.data), p)
	b, _ := json.Marshal(merged)
	if len(b) > m.limit {
		return errMMDSLimit
	}
	m.data = merged
	return nil
}

func (m *mmdsStore) json() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.data == nil {
		return []byte("{}")
	}
	b, _ := json.Marshal(m.data)
	return b
}

// mergePatch applies an RFC 7396 JSON merge patch.
func mergePatch(target, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	t, ok := target.(map[string]any)
	if !ok {
		t = map[string]any{}
	}
	for k, v := range p {
		if v == nil {
			delete(t, k)
			continue
		}
		t[k] = mergePatch(t[k], v)
	}
	return t
}

func deepCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		c := make(map[string]any, len(x))
		for k, e := range x {
			c[k] = deepCopy(e)
		}
		return c
	case []any:
		c := make([]any, len(x))
		for i, e := range x {
			c[i] = deepCopy(e)
		}
		return c
	}
	return v
}

// The header names MMDS v2 reads, case-insensitively (Go canonicalises
// them), with their EC2 IMDS aliases.
var (
	tokenHeaders    = []string{"X-Metadata-Token", "X-Aws-Ec2-Metadata-Token"}
	tokenTTLHeaders = []string{"X-Metadata-Token-Ttl-Seconds", "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"}
)

func firstHeader(r *http.Request, names []string) (string, bool) {
	for _, n := range names {
		if v, ok := r.Header[n]; ok && len(v) > 0 {
			return v[0], true
		}
	}
	return "", false
}

// ServeHTTP answers a guest's metadata request as Firecracker's MMDS does.
func (m *mmdsStore) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	text := func(status int, msg string) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(msg)) // a guest that hung up reads nothing
	}
	var ttl uint32
	ttlRaw, hasTTL := firstHeader(r, tokenTTLHeaders)
	if hasTTL {
		n, err := strconv.ParseUint(strings.TrimSpace(ttlRaw), 10, 32)
		if err != nil {
			text(http.StatusBadRequest, fmt.Sprintf("Invalid header. Reason: Invalid value. Key:X-metadata-token-ttl-seconds; Value:%s", ttlRaw))
			return
		}
		ttl = uint32(n)
	}
	switch r.Method {
	case http.MethodGet:
		if m.version == "V2" {
			token, ok := firstHeader(r, tokenHeaders)
			if !ok {
				text(http.StatusUnauthorized, "No MMDS token provided. Use `X-metadata-token` header to specify the session token.")
				return
			}
			if exp, ok := m.tokens[token]; !ok || time.Now().After(exp) {
				text(http.StatusUnauthorized, "MMDS token not valid.")
				return
			}
		}
		m.get(w, r, text)
	case http.MethodPut:
		if _, ok := r.Header["X-Forwarded-For"]; ok {
			text(http.StatusBadRequest, "Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For")
			return
		}
		if sanitizePath(r.URL.Path) != "/latest/api/token" {
			text(http.StatusNotFound, fmt.Sprintf("Resource not found: %s.", r.URL.Path))
			return
		}
		if !hasTTL {
			text(http.StatusBadRequest, "Token time to live value not found. Use `X-metadata-token-ttl-seconds` header to specify the token's lifetime.")
			return
		}
		if ttl < minTokenTTL || ttl > maxTokenTTL {
			text(http.StatusBadRequest, fmt.Sprintf("Invalid time to live value provided for token: %d. Please provide a value between %d and %d.", ttl, minTokenTTL, maxTokenTTL))
			return
		}
		raw := make([]byte, 48)
		rand.Read(raw)
		token := base64.StdEncoding.EncodeToString(raw)
		m.tokens[token] = time.Now().Add(time.Duration(ttl) * time.Second)
		text(http.StatusOK, token)
	default:
		w.Header().Set("Allow", "GET, PUT")
		text(http.StatusMethodNotAllowed, "Not allowed HTTP method.")
	}
}

// get serves a path of the data store, as JSON when the request accepts
// application/json (and imds_compat is off), else in IMDS text format.
func (m *mmdsStore) get(w http.ResponseWriter, r *http.Request, text func(int, string)) {
	path := sanitizePath(r.URL.Path)
	v, ok := jsonPointer(m.data, strings.TrimSuffix(path, "/"))
	if !m.initialized || !ok {
		text(http.StatusNotFound, fmt.Sprintf("Resource not found: %s.", r.URL.Path))
		return
	}
	if strings.TrimSpace(r.Header.Get("Accept")) == "application/json" && !m.imdsCompat {
		b, _ := json.Marshal(v)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(b) // a guest that hung up reads nothing
		return
	}
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k, e := range x {
			if _, isObj := e.(map[string]any); isObj {
				k += "/"
			}
			keys = append(keys, k)
		}
		sort.Strings(keys)
		text(http.StatusOK, strings.Join(keys, "\n"))
	case string:
		text(http.StatusOK, x)
	default:
		text(http.StatusNotImplemented, "Cannot retrieve value. The value has an unsupported type.")
	}
}

// sanitizePath collapses repeated slashes.
func sanitizePath(p string) string {
	for strings.Contains(p, "//") {
		p = strings.ReplaceAll(p, "//", "/")
	}
	return p
}

// jsonPointer resolves an RFC 6901 pointer ("" is the whole document).
func jsonPointer(doc any, ptr string) (any, bool) {
	if ptr == "" {
		return doc, true
	}
	if !strings.HasPrefix(ptr, "/") {
		return nil, false
	}
	cur := doc
	for _, tok := range strings.Split(ptr[1:], "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch x := cur.(type) {
		case map[string]any:
			v, ok := x[tok]
			if !ok {
				return nil, false
			}
			cur = v
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(x) || (len(tok) > 1 && tok[0] == '0') {
				return nil, false
			}
			cur = x[i]
		default:
			return nil, false
		}
	}
	return cur, true
}
