package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// qmp is a minimal QEMU Machine Protocol client: one command at a time,
// asynchronous events skipped.
type qmp struct {
	conn net.Conn
	r    *bufio.Reader
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
	QMP   any    `json:"QMP"`
}

func dialQMP(ctx context.Context, path string) (*qmp, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("dial qmp: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	} else {
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	}
	q := &qmp{conn: conn, r: bufio.NewReader(conn)}
	// Greeting, then capability negotiation.
	if _, err := q.read(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	if err := q.execute("qmp_capabilities"); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmp) read() (qmpReply, error) {
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		return qmpReply{}, err
	}
	var r qmpReply
	if err := json.Unmarshal(line, &r); err != nil {
		return qmpReply{}, fmt.Errorf("decode qmp message: %w", err)
	}
	return r, nil
}

// execute runs a command without arguments and waits for its reply.
func (q *qmp) execute(cmd string) error {
	b, _ := json.Marshal(map[string]string{"execute": cmd})
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		r, err := q.read()
		if err != nil {
			return fmt.Errorf("qmp %s: %w", cmd, err)
		}
		if r.Event != "" {
			continue
		}
		if r.Error != nil {
			return fmt.Errorf("qmp %s: %s: %s", cmd, r.Error.Class, r.Error.Desc)
		}
		return nil
	}
}

func (q *qmp) Close() error { return q.conn.Close() }
