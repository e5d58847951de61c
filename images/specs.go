// Package images holds hearth's image specifications: one YAML file per
// image (see README.md in this directory for the format). They are embedded
// in the hearth binary, so `hearth image build --profile NAME` needs no
// checkout; `hearth image build --profile path/to/spec.yaml` builds a spec
// from a file instead.
package images

import "embed"

// FS holds the embedded specs, <name>.yaml at its root.
//
//go:embed *.yaml
var FS embed.FS
