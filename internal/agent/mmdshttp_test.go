package agent

import (
	"bufio"
	"strings"
	"testing"
)

func TestReadAnswer(t *testing.T) {
	cases := []struct {
		name, in string
		code     int
		body     string
		bad      bool
	}{
		{"content length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello", 200, "hello", false},
		{"firecracker style", "HTTP/1.1 200 \r\nServer: Firecracker API\r\nContent-Length: 3\r\n\r\nabc", 200, "abc", false},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n", 200, "abcde", false},
		{"until close", "HTTP/1.0 404 Not Found\r\n\r\nnot here", 404, "not here", false},
		{"bare LF", "HTTP/1.1 401 Unauthorized\nContent-Length: 0\n\n", 401, "", false},
		{"not http", "SSH-2.0-OpenSSH\r\n\r\n", 0, "", true},
		{"bad code", "HTTP/1.1 2x0 OK\r\n\r\n", 0, "", true},
		{"too long", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", 0, "", true},
		{"short body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 0, "", true},
		{"bad chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0, "", true},
		{"empty", "", 0, "", true},
	}
	for _, c := range cases {
		a, err := readAnswer(bufio.NewReader(strings.NewReader(c.in)), 64)
		if c.bad {
			if err == nil {
				t.Errorf("%s: accepted: %+v", c.name, a)
			}
			continue
		}
		if err != nil || a.code != c.code || string(a.body) != c.body {
			t.Errorf("%s: got %d %q %v, want %d %q", c.name, a.code, a.body, err, c.code, c.body)
		}
	}
}
