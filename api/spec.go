// Package api is hearth's v1 API as one definition: the OpenAPI 3
// description (openapi.yaml), which the daemon serves at /v1/openapi.yaml
// and enforces on every request, and what oapi-codegen generates from it
// (api.gen.go, by make generate; never edited by hand): the wire types the
// server and its clients share, the typed client, and the net/http
// ServerInterface the server implements.
package api

import _ "embed"

// OpenAPI is the OpenAPI 3 description of the v1 API.
//
//go:embed openapi.yaml
var OpenAPI []byte
