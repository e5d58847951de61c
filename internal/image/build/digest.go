package build

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/hearth-project/hearth/internal/image/spec"
)

// BuilderVersion identifies the image builder's behaviour. Bump it whenever
// a change to this package changes what it produces from the same inputs;
// it is part of every image digest.
const BuilderVersion = "hearth-image-builder/2"

// buildInputs is everything an image is built from. Its canonical JSON
// encoding is hashed into the image digest.
type buildInputs struct {
	Builder string `json:"builder"`
	// Spec is the full image spec (defaults applied).
	Spec *spec.Spec `json:"spec"`
	// SpecDigest is the hex SHA-256 of the spec's canonical form.
	SpecDigest string `json:"spec_digest"`
	// InitrdModules are the modules the initramfs loads.
	InitrdModules []string `json:"initrd_modules"`
	// InitTemplateSHA256 covers the initramfs /init script template.
	InitTemplateSHA256 string `json:"init_template_sha256"`
	KernelPackage      string `json:"kernel_package"`
	KernelVersion      string `json:"kernel_version"`
	KernelDebSHA256    string `json:"kernel_deb_sha256"`
	BusyboxSHA256      string `json:"busybox_sha256"`
	AgentSHA256        string `json:"agent_sha256"`
	AgentVersion       string `json:"agent_version"`
	// Sources are the Debian archives of a debootstrap image (mirror and
	// security archive as resolved on the build host).
	Sources *aptSources `json:"sources,omitempty"`
	// NPMRegistry is the registry npm packages come from.
	NPMRegistry string `json:"npm_registry,omitempty"`
}

// digest returns the hex SHA-256 of the inputs' canonical encoding
// (encoding/json emits struct fields in declaration order).
func (in buildInputs) digest() (string, error) {
	data, err := json.Marshal(in)
	if err != nil {
		return "", fmt.Errorf("encode build inputs: %w", err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}

// uuidFromDigest derives a stable RFC 4122 UUID (version 8, "custom") from
// an image digest and a purpose string, so the file system UUID and the
// directory hash seed are reproducible but distinct.
func uuidFromDigest(digest, purpose string) string {
	sum := sha256.Sum256([]byte(purpose + ":" + digest))
	b := sum[:16]
	b[6] = b[6]&0x0f | 0x80 // version 8
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
