package agentapi

import "strings"

// JSONField follows a dotted path (e.g. "tokens.refresh_token") through
// the objects of a decoded JSON document. Both sides use it: the guest to
// tell a complete credential file, the host to check one.
func JSONField(doc any, path string) (any, bool) {
	cur := doc
	for _, key := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[key]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// JSONEmpty says a decoded JSON value carries nothing: null, a blank
// string, {} or [].
func JSONEmpty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case string:
		return strings.TrimSpace(x) == ""
	case map[string]any:
		return len(x) == 0
	case []any:
		return len(x) == 0
	}
	return false
}
