package api

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	v1 "github.com/hearth-project/hearth/api"
)

// The cost of checking a request against the document, against decoding
// its body alone (what every handler did before): POST /v1/vms with a
// typical body, and GET /v1/vms with two query parameters.
//
//	go test -run XXX -bench Request -benchmem ./internal/api/
const createBody = `{"image":"minimal","vcpus":2,"memory_mib":512,"user":"alice","boot_timeout_seconds":120,
"network":{"egress":{"mode":"allowlist","allow":[{"cidr":"203.0.113.0/24","protocol":"tcp","port":443}]}}}`

func benchRequest(b *testing.B, method, target, body string, h http.HandlerFunc) {
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest(method, target, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		h(httptest.NewRecorder(), r)
	}
}

func mustOperation(b *testing.B, pattern string) *operation {
	op, err := findOperation(pattern)
	if err != nil {
		b.Fatal(err)
	}
	return op
}

func BenchmarkRequestCreateVMDecodeOnly(b *testing.B) {
	benchRequest(b, "POST", "/v1/vms", createBody, func(w http.ResponseWriter, r *http.Request) {
		var req v1.CreateVM
		if err := decodeJSON(w, r, &req); err != nil {
			b.Fatal(err)
		}
	})
}

func BenchmarkRequestCreateVMValidated(b *testing.B) {
	s := &Server{}
	h := s.validate(mustOperation(b, "POST /v1/vms"), func(w http.ResponseWriter, r *http.Request) {
		var req v1.CreateVM
		if err := decodeJSON(w, r, &req); err != nil {
			b.Fatal(err)
		}
	})
	benchRequest(b, "POST", "/v1/vms", createBody, func(w http.ResponseWriter, r *http.Request) {
		h(w, r)
		if rec := w.(*httptest.ResponseRecorder); rec.Code != http.StatusOK {
			b.Fatalf("validation refused the request: %d %s", rec.Code, rec.Body)
		}
	})
}

func BenchmarkRequestListVMsValidated(b *testing.B) {
	s := &Server{}
	h := s.validate(mustOperation(b, "GET /v1/vms"), func(w http.ResponseWriter, r *http.Request) {})
	benchRequest(b, "GET", "/v1/vms?state=ready&all=true", "", func(w http.ResponseWriter, r *http.Request) {
		r.Body = io.NopCloser(strings.NewReader(""))
		h(w, r)
		if rec := w.(*httptest.ResponseRecorder); rec.Code != http.StatusOK {
			b.Fatalf("validation refused the request: %d %s", rec.Code, rec.Body)
		}
	})
}
