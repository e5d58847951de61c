// Command stubagent stands in for hearth-agent in the image package's boot
// test: it reads the per-VM token from the qemu_fw_cfg sysfs interface and
// writes "HEARTH-TEST-AGENT-UP <token>" to /dev/console, then idles (init
// respawns it if it exits).
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const tokenPath = "/sys/firmware/qemu_fw_cfg/by_name/opt/hearth/token/raw"

func main() {
	console, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err != nil {
		console = os.Stdout
	}
	token, err := readToken(5 * time.Second)
	if err != nil {
		fmt.Fprintf(console, "HEARTH-TEST-AGENT-NOTOKEN %v; /sys/firmware has: %s\n", err, listFirmware())
	} else {
		fmt.Fprintf(console, "HEARTH-TEST-AGENT-UP %s\n", token)
	}
	for {
		time.Sleep(time.Hour)
	}
}

// readToken polls for the token file until it is readable or timeout passes.
func readToken(timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		data, err := os.ReadFile(tokenPath)
		if err == nil {
			return strings.TrimSpace(string(data)), nil
		}
		if time.Now().After(deadline) {
			return "", err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// listFirmware names what exists under /sys/firmware, for diagnosis.
func listFirmware() string {
	var names []string
	_ = filepath.WalkDir("/sys/firmware", func(p string, d os.DirEntry, err error) error {
		if err != nil || len(names) > 40 {
			return filepath.SkipDir
		}
		names = append(names, p)
		return nil
	})
	return strings.Join(names, " ")
}
