package fctest

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// FakeAgentMain is a stand-in guest agent for tests that cannot use the
// real one: a test binary calls it from TestMain when it is started with
// the agent's command line (see Server). It takes the same flags the fake
// starts the agent with:
//
//	-listen unix:PATH [-data-listen unix:PATH] -token-source mmds -mmds-url URL [-token-path /hearth/token]
//
// It serves no data channel (-data-listen is taken and ignored). It reads its token from MMDS v2 (a session token first, retrying until
// the data store has it), then listens on PATH and, on every connection,
// writes "token=<token>\n" and echoes what it reads. It returns the exit
// status.
func FakeAgentMain(args []string) int {
	fs := flag.NewFlagSet("fake-agent", flag.ContinueOnError)
	listen := fs.String("listen", "", "unix:PATH to listen on")
	_ = fs.String("data-listen", "", "the data channel's unix:PATH (not served)")
	source := fs.String("token-source", "", "where the token comes from (mmds)")
	mmdsURL := fs.String("mmds-url", "", "MMDS base URL")
	tokenPath := fs.String("token-path", "/hearth/token", "MMDS path of the token")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	path, ok := strings.CutPrefix(*listen, "unix:")
	if !ok || *source != "mmds" || *mmdsURL == "" {
		fmt.Fprintf(os.Stderr, "fake-agent: want -listen unix:PATH -token-source mmds -mmds-url URL, got %q\n", args)
		return 2
	}
	token, err := fetchMMDSToken(*mmdsURL, *tokenPath, 30*time.Second)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake-agent: %v\n", err)
		return 1
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake-agent: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "fake-agent: listening on %s\n", path)
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		go func() {
			defer c.Close()
			fmt.Fprintf(c, "token=%s\n", token)
			_, _ = io.Copy(c, c) // echo until the host hangs up
		}()
	}
}

// fetchMMDSToken reads path from MMDS v2 at base, retrying until timeout.
func fetchMMDSToken(base, path string, timeout time.Duration) (string, error) {
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		v, err := mmdsGet(client, base, path)
		if err == nil {
			return v, nil
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return "", fmt.Errorf("no token from MMDS at %s%s: %v", base, path, last)
}

func mmdsGet(client *http.Client, base, path string) (string, error) {
	req, _ := http.NewRequest(http.MethodPut, base+"/latest/api/token", nil)
	req.Header.Set("X-metadata-token-ttl-seconds", "60")
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	session, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("session token: %s: %s", resp.Status, session)
	}
	req, _ = http.NewRequest(http.MethodGet, base+path, nil)
	req.Header.Set("X-metadata-token", string(session))
	resp, err = client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
	}
	return string(b), nil
}
