// Package api holds hearth's OpenAPI description. The HTTP server serves it
// at /v1/openapi.yaml, and tests hold the server to it.
package api

import _ "embed"

// OpenAPI is the OpenAPI 3 description of the v1 API.
//
//go:embed openapi.yaml
var OpenAPI []byte
