// Package verify checks a built image against its manifest: the image
// files' digests, and every claim about the root file system (files, the
// agent, enabled units, Debian and npm packages, users, the role's ports
// and binaries) read from rootfs.ext4 itself through package ext4, without
// mounting it.
package verify

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/image/ext4"
)

// Kinds of claim a Report checks.
const (
	ClaimDigest   = "digest"    // an image file's size and SHA-256
	ClaimFile     = "file"      // a file inside the root filesystem
	ClaimAgent    = "agent"     // the hearth agent and its recorded version
	ClaimUnit     = "unit"      // an enabled systemd unit (or the busybox inittab)
	ClaimPackage  = "package"   // an installed Debian package
	ClaimNPM      = "npm"       // a global npm package
	ClaimUser     = "user"      // an account in /etc/passwd
	ClaimPortRole = "port-role" // the role's required ports and binaries
)

// Report is the outcome of Image: every claim of the manifest, each
// checked against the image itself.
type Report struct {
	OK     bool          `json:"ok"`
	Claims []ClaimResult `json:"claims"`
}

// ClaimResult is one checked claim. Detail says what was found (for a
// failed claim: what differs from the manifest).
type ClaimResult struct {
	Kind    string `json:"kind"`
	Subject string `json:"subject"`
	OK      bool   `json:"ok"`
	Detail  string `json:"detail"`
}

// String renders the claim as "<kind> <subject>: <detail>".
func (c ClaimResult) String() string {
	return fmt.Sprintf("%s %s: %s", c.Kind, c.Subject, c.Detail)
}

// Failed returns the claims that do not hold, in report order.
func (r *Report) Failed() []ClaimResult {
	var failed []ClaimResult
	for _, c := range r.Claims {
		if !c.OK {
			failed = append(failed, c)
		}
	}
	return failed
}

// String summarises the report: a first line with the counts, then one
// line per failed claim.
func (r *Report) String() string {
	failed := r.Failed()
	if len(failed) == 0 {
		return fmt.Sprintf("all %d claims hold", len(r.Claims))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d claims do not hold:", len(failed), len(r.Claims))
	for _, c := range failed {
		b.WriteString("\n")
		b.WriteString(c.String())
	}
	return b.String()
}

// add appends results; a failed one makes the report not OK.
func (r *Report) add(cs ...ClaimResult) {
	for _, c := range cs {
		r.OK = r.OK && c.OK
	}
	r.Claims = append(r.Claims, cs...)
}

// Image checks every claim of m against the image in dir (the directory
// holding vmlinux, initrd.img, rootfs.ext4 and manifest.json): the image
// files' digests, and, read from rootfs.ext4 through debugfs without
// mounting it, the claimed files, the agent, enabled units, Debian and npm
// packages, users, and the role's ports and binaries.
//
// Image returns a Report whether or not the claims hold; the error is for
// an image that cannot be verified at all (no debugfs, rootfs.ext4 missing
// or unreadable).
func Image(ctx context.Context, dir string, m *image.Manifest) (*Report, error) {
	if m == nil {
		return nil, errors.New("verify: no manifest")
	}
	img, err := ext4.Open(ctx, filepath.Join(dir, image.RootfsFile))
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	digests := make(chan []ClaimResult, 1)
	go func() { digests <- verifyDigests(ctx, dir, m) }()

	facts := newVerifyFacts()
	verifyPlan(facts, m)
	gatherErr := facts.gather(ctx, img)
	if gatherErr != nil {
		cancel()
	}
	digestResults := <-digests
	if gatherErr != nil {
		return nil, fmt.Errorf("verify %s: %w", dir, gatherErr)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("verify %s: %w", dir, err)
	}
	r := &Report{OK: true}
	r.add(digestResults...)
	r.add(verifyAgent(facts, m))
	r.add(verifyFiles(facts, m)...)
	r.add(verifyUnits(facts, m)...)
	r.add(verifyPackages(facts, m)...)
	r.add(verifyNPM(facts, m)...)
	r.add(verifyUsers(facts, m)...)
	r.add(verifyPortRole(m))
	return r, nil
}

// verifyPlan registers every path the claims of m need read from the
// image.
func verifyPlan(f *verifyFacts, m *image.Manifest) {
	f.want(verifyAgentPath(m), true, verifyNeedHash)
	f.want(image.GuestImageInfoPath, true, verifyNeedText)
	for _, c := range m.Files {
		f.want(c.Path, true, verifyNeedHash)
	}
	verifyPlanUnits(f, m)
	if len(m.Packages) > 0 {
		f.want(verifyDpkgStatusPath, true, verifyNeedText)
	}
	for _, c := range m.NPM {
		for _, p := range verifyNPMPaths(c.Name) {
			f.want(p, true, verifyNeedText)
		}
	}
	if len(m.Users) > 0 {
		f.want(verifyPasswdPath, true, verifyNeedText)
	}
}

// verifyAgentPath is where the manifest says the agent is.
func verifyAgentPath(m *image.Manifest) string {
	if m.Agent.Path != "" {
		return m.Agent.Path
	}
	return image.GuestAgentPath
}
