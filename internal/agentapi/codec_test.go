package agentapi

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
)

// lineOfSize returns a valid envelope line of exactly n bytes, newline excluded.
func lineOfSize(t *testing.T, n int) string {
	t.Helper()
	const prefix, suffix = `{"v":1,"type":"pad","body":{"p":"`, `"}}`
	pad := n - len(prefix) - len(suffix)
	if pad < 0 {
		t.Fatalf("line size %d too small", n)
	}
	return prefix + strings.Repeat("a", pad) + suffix
}

func TestDecoder(t *testing.T) {
	const next = `{"v":1,"type":"next"}` + "\n"
	tests := []struct {
		name  string
		input string
		want  []any // message type (string) or error, in order
	}{
		{"empty stream", "", []any{io.EOF}},
		{"one message", next, []any{"next", io.EOF}},
		{"crlf", `{"v":1,"type":"crlf"}` + "\r\n", []any{"crlf", io.EOF}},
		{"exactly max line", lineOfSize(t, MaxLineSize) + "\n" + next, []any{"pad", "next", io.EOF}},
		{"one byte over max", lineOfSize(t, MaxLineSize+1) + "\n" + next, []any{ErrLineTooLong, "next", io.EOF}},
		{"far over max", lineOfSize(t, 3*MaxLineSize) + "\n" + next, []any{ErrLineTooLong, "next", io.EOF}},
		{"over max at eof", lineOfSize(t, MaxLineSize+10), []any{ErrLineTooLong, io.EOF}},
		{"not json", "hello\n" + next, []any{ErrMalformed, "next", io.EOF}},
		{"blank line", "\n" + next, []any{ErrMalformed, "next", io.EOF}},
		{"missing type", `{"v":1}` + "\n" + next, []any{ErrMalformed, "next", io.EOF}},
		{"wrong field type", `{"v":"one","type":"x"}` + "\n" + next, []any{ErrMalformed, "next", io.EOF}},
		{"partial line at eof", next + `{"v":1,"ty`, []any{"next", io.ErrUnexpectedEOF}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dec := NewDecoder(strings.NewReader(tt.input))
			for i, want := range tt.want {
				env, err := dec.Decode()
				switch want := want.(type) {
				case string:
					if err != nil || env.Type != want {
						t.Fatalf("decode %d: got %q, %v; want %q", i, env.Type, err, want)
					}
				case error:
					if !errors.Is(err, want) {
						t.Fatalf("decode %d: got %q, %v; want error %v", i, env.Type, err, want)
					}
				}
			}
		})
	}
}

// errReader returns data, then err.
type errReader struct {
	data []byte
	err  error
}

func (r *errReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestDecoderReadError(t *testing.T) {
	boom := errors.New("boom")
	dec := NewDecoder(&errReader{data: []byte(`{"v":1,"type":"a"}` + "\n"), err: boom})
	if env, err := dec.Decode(); err != nil || env.Type != "a" {
		t.Fatalf("got %v, %v", env, err)
	}
	if _, err := dec.Decode(); !errors.Is(err, boom) {
		t.Fatalf("got %v, want %v", err, boom)
	}
}

func TestEncoderRejectsOversize(t *testing.T) {
	var buf bytes.Buffer
	env, err := NewMessage("pad", 0, map[string]string{"p": strings.Repeat("a", MaxLineSize)})
	if err != nil {
		t.Fatal(err)
	}
	if err := NewEncoder(&buf).Encode(env); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("got %v, want ErrLineTooLong", err)
	}
	if buf.Len() != 0 {
		t.Fatalf("wrote %d bytes", buf.Len())
	}
}

// TestEncoderConcurrent checks that concurrent encodes never interleave.
func TestEncoderConcurrent(t *testing.T) {
	pr, pw := io.Pipe()
	enc := NewEncoder(pw)
	const writers, each = 8, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				env, _ := NewMessage("m", uint64(w*each+i+1), map[string]string{"p": strings.Repeat("x", 5000)})
				if err := enc.Encode(env); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	go func() { wg.Wait(); pw.Close() }()

	dec := NewDecoder(pr)
	seen := map[uint64]bool{}
	for {
		env, err := dec.Decode()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seen[env.ID] = true
	}
	if len(seen) != writers*each {
		t.Fatalf("decoded %d distinct messages, want %d", len(seen), writers*each)
	}
}

func TestDecodeBody(t *testing.T) {
	tests := []struct {
		body    string
		wantErr bool
	}{
		{"", false},
		{"null", false},
		{`{"port":80,"future_field":true}`, false},
		{`{"port":"eighty"}`, true},
		{`[1,2]`, true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.body), func(t *testing.T) {
			var m PortReady
			err := Envelope{Type: TypePortReady, Body: []byte(tt.body)}.DecodeBody(&m)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got %v, want error %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrProtocol) {
				t.Fatalf("got %v, want ErrProtocol", err)
			}
		})
	}
}
