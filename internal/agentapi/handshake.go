package agentapi

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hearth-project/hearth/internal/safetext"
)

// rejectTimeout bounds the write of a rejected message.
const rejectTimeout = time.Second

// Handshake authenticates the agent at the other end of conn and starts a
// session with it. It sends a challenge, waits for a hello that answers it
// (skipping anything stale that precedes it), verifies the proof against
// token and sends cfg. A zero cfg.HeartbeatInterval means
// DefaultHeartbeatInterval. cfg is validated first, its network included.
// If cfg.Network is set, the session accepts port_ready and ready only
// after a network_ready for exactly that network; send the same cfg again
// after a reconnect (the agent re-applies it as a no-op).
//
// ctx bounds the handshake only (give it a deadline: a guest that never
// answers is waited for until ctx is done). On success the session owns
// conn; on error conn is closed. A wrong proof yields an error matching
// ErrBadProof, after the guest has been sent a rejected message.
func Handshake(ctx context.Context, conn net.Conn, token []byte, cfg Config) (*Session, error) {
	s, err := handshake(ctx, conn, token, cfg.WithDefaults())
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("agentapi: handshake: %w", err)
	}
	return s, nil
}

func handshake(ctx context.Context, conn net.Conn, token []byte, cfg Config) (*Session, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(token) < MinTokenSize {
		return nil, fmt.Errorf("token is %d bytes, at least %d required", len(token), MinTokenSize)
	}
	stop := watchContext(ctx, conn.SetDeadline)
	defer stop()

	g := newGuard(conn, cfg.Limits, cfg.HeartbeatInterval)
	enc, dec := NewEncoder(conn), newHostDecoder(g.reader(conn))
	hello, err := authenticate(conn, enc, dec, g, token)
	if err != nil {
		g.stop()
		return nil, ctxErr(ctx, err)
	}
	msg, err := NewMessage(TypeConfig, 0, cfg)
	if err != nil {
		g.stop()
		return nil, err
	}
	if err := enc.Encode(msg); err != nil {
		g.stop()
		return nil, ctxErr(ctx, fmt.Errorf("send config: %w", err))
	}
	return newSession(conn, enc, dec, g, hello, cfg), nil
}

// authenticate sends a challenge and returns the verified hello answering
// it, its text fields made clean (package safetext).
func authenticate(conn net.Conn, enc *Encoder, dec *Decoder, g *guard, token []byte) (Hello, error) {
	nonce := make([]byte, NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return Hello{}, fmt.Errorf("nonce: %w", err)
	}
	challenge := Challenge{Protocol: ProtocolVersion, Nonce: base64.StdEncoding.EncodeToString(nonce)}
	msg, err := NewMessage(TypeChallenge, 0, challenge)
	if err != nil {
		return Hello{}, err
	}

	// Send while reading: the guest may itself be blocked writing stale
	// messages, and would not read the challenge before they are consumed.
	sent := make(chan error, 1)
	go func() { sent <- enc.Encode(msg) }()
	hello, err := awaitHello(dec, g, challenge.Nonce)
	if err != nil {
		_ = conn.Close() // unblocks the sender
		_ = <-sent       // it fails on the closed connection; awaitHello's error is the one to report
		return Hello{}, err
	}
	if err := <-sent; err != nil {
		return Hello{}, fmt.Errorf("send challenge: %w", err)
	}

	if err := hello.Validate(); err != nil {
		reject(conn, enc, err.Error())
		return Hello{}, err
	}
	if !verifyProof(token, nonce, hello.Proof) {
		reject(conn, enc, "bad proof")
		return Hello{}, ErrBadProof
	}
	hello.AgentVersion = safetext.Line(hello.AgentVersion, maxShortString)
	hello.Hostname = safetext.Line(hello.Hostname, maxShortString)
	hello.Kernel = safetext.Line(hello.Kernel, maxShortString)
	return hello, nil
}

// awaitHello returns the first hello that echoes nonce. Anything before it
// is stale (left over from an earlier connection) and ignored, but counts
// against g's limits: a guest cannot flood the host before its hello
// either.
func awaitHello(dec *Decoder, g *guard, nonce string) (Hello, error) {
	for {
		env, err := dec.Decode()
		if errors.Is(err, ErrMalformed) {
			// e.g. the tail of a line cut by a reconnect
			if err := g.admit("", dec.size, false); err != nil {
				return Hello{}, err
			}
			continue
		}
		if err != nil {
			return Hello{}, fmt.Errorf("await hello: %w", g.readErr(err))
		}
		if err := g.admit(env.Type, dec.size, false); err != nil {
			return Hello{}, err
		}
		if env.Type != TypeHello {
			continue
		}
		var h Hello
		if err := env.DecodeBody(&h); err != nil {
			return Hello{}, err
		}
		if h.Nonce != nonce {
			continue // answers an earlier challenge
		}
		if env.V != ProtocolVersion {
			return Hello{}, fmt.Errorf("%w: envelope version %d", ErrProtocol, env.V)
		}
		return h, nil
	}
}

// reject tells the guest why it was refused. It is best effort: the
// connection is closed right after.
func reject(conn net.Conn, enc *Encoder, reason string) {
	msg, err := NewMessage(TypeRejected, 0, Rejected{Reason: reason})
	if err != nil {
		return
	}
	_ = conn.SetWriteDeadline(time.Now().Add(rejectTimeout))
	_ = enc.Encode(msg)
}
