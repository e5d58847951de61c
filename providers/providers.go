// Package providers holds hearth's provider definitions: one YAML file per
// AI coding CLI whose login hearth runs in a browser VM (how to start the
// login, what to answer, where the authorization URL appears, which
// credential files to capture and how to check them) and how a prompt
// runs through the CLI non-interactively in a workspace. internal/provider
// parses them strictly; docs/providers.md says where each fact comes from.
//
// testdata/ holds providers used only by tests (the fake CLI of
// test/fakeprovider); they are embedded separately so that the daemon's
// registry never offers them.
package providers

import "embed"

// FS holds the shipped providers, <name>.yaml at its root.
//
//go:embed *.yaml
var FS embed.FS

// TestFS holds the test-only providers, testdata/<name>.yaml.
//
//go:embed testdata/*.yaml
var TestFS embed.FS
