package network

import (
	"errors"

	"github.com/vishvananda/netns"
)

// ErrNotOwned is returned when hearth refuses to change a link that exists
// but is not marked as hearth's (by its alias).
var ErrNotOwned = errors.New("link is not hearth's")

// Option configures a Host.
type Option func(*hostOptions)

type hostOptions struct {
	ns netns.NsHandle
}

// WithNetNS makes the Host operate on network namespace ns instead of the
// current one. The caller keeps ownership of ns and must keep it open until
// the Host is closed.
func WithNetNS(ns netns.NsHandle) Option {
	return func(o *hostOptions) { o.ns = ns }
}

func buildOptions(opts []Option) hostOptions {
	o := hostOptions{ns: netns.None()}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}
