package viewer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// ErrVNCUnreachable wraps a failure to dial the guest's VNC server.
var ErrVNCUnreachable = errors.New("guest vnc unreachable")

// Connect verifies token for vmID, refuses it if replay has seen it, marks
// it used and only then dials the guest's VNC server. A refused token never
// causes a connection. Errors wrap the token sentinels or ErrVNCUnreachable
// and never contain the token.
func Connect(ctx context.Context, signer *Signer, replay *Replay, token, vmID string,
	dial func(context.Context) (net.Conn, error)) (net.Conn, Claims, error) {
	c, err := signer.Verify(token, vmID, time.Now())
	if err != nil {
		return nil, Claims{}, fmt.Errorf("connect viewer for vm %s: %w", vmID, err)
	}
	if c.Kind != KindSocket {
		return nil, Claims{}, fmt.Errorf("connect viewer for vm %s: %w: %s token on the socket", vmID, ErrWrongKind, c.Kind)
	}
	if replay != nil {
		if err := replay.Use(c); err != nil {
			return nil, Claims{}, fmt.Errorf("connect viewer for vm %s: %w", vmID, err)
		}
	}
	conn, err := dial(ctx)
	if err != nil {
		return nil, Claims{}, fmt.Errorf("connect viewer for vm %s: %w: %w", vmID, ErrVNCUnreachable, err)
	}
	return conn, c, nil
}

// ReasonFor maps an error from Connect to the close reason to send to the
// browser.
func ReasonFor(err error) CloseReason {
	switch {
	case errors.Is(err, ErrExpired):
		return ReasonTokenExpired
	case errors.Is(err, ErrVNCUnreachable):
		return ReasonVNCUnreachable
	default:
		return ReasonInvalidToken
	}
}
