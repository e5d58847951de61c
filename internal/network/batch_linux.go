package network

import (
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
)

// Socket buffer sizing. The nftables library asks the kernel to acknowledge
// every message of a batch (and to echo every rule back), and the kernel
// queues all those replies on the socket while it processes the batch,
// before the first can be read: with the default receive buffer (208 KiB)
// a batch of a few hundred rules failed with ENOBUFS. The batch itself goes
// out in one sendmsg, which netlink refuses (EMSGSIZE) beyond the send
// buffer. So a batch is sent on a socket whose buffers fit its message
// count; the sizes are limits on queued data, not allocations (the kernel
// doubles them for its bookkeeping).
const (
	// sendBytesPerMsg bounds the size of one message: a rule is at most
	// about 1 KiB (an allowlist rule with a 200-byte comment), an element
	// message carries at most elemsPerMsg elements of under 80 bytes.
	sendBytesPerMsg = 2 << 10
	// recvBytesPerMsg bounds the socket memory the replies to one message
	// take: an acknowledgement is a small skb, echoed rules are packed
	// several to a page. Measured at 1000 slots: 1024 bytes a message
	// (doubled by the kernel) failed, 1280 worked.
	recvBytesPerMsg = 2 << 10
	// minSockBuffer is what a socket gets at least (the usual default).
	minSockBuffer = 256 << 10
	// lastingMsgs is the largest batch sent on the Host's lasting
	// connection, whose buffers are sized for it once; larger ones get a
	// socket of their own.
	lastingMsgs = 256
	// elemsPerMsg is how many map elements one message carries.
	elemsPerMsg = 16
)

// A batch is one nf_tables transaction being built: its messages, each a
// function that queues it on a connection. Host.commit applies them all or
// nothing.
type batch struct {
	msgs []func(*nftables.Conn) error
}

func (b *batch) queue(m func(*nftables.Conn) error) { b.msgs = append(b.msgs, m) }

func (b *batch) addTable(t *nftables.Table) {
	b.queue(func(c *nftables.Conn) error { c.AddTable(t); return nil })
}

func (b *batch) delTable(t *nftables.Table) {
	b.queue(func(c *nftables.Conn) error { c.DelTable(t); return nil })
}

func (b *batch) addChain(ch *nftables.Chain) {
	b.queue(func(c *nftables.Conn) error { c.AddChain(ch); return nil })
}

// flushChain deletes every rule of ch.
func (b *batch) flushChain(ch *nftables.Chain) {
	b.queue(func(c *nftables.Conn) error { c.FlushChain(ch); return nil })
}

// delChain deletes ch and its rules; nothing may jump to it any more.
func (b *batch) delChain(ch *nftables.Chain) {
	b.queue(func(c *nftables.Conn) error { c.DelChain(ch); return nil })
}

// addChainRules appends every rule of ch to its chain, in order.
func (b *batch) addChainRules(ch *chainSpec) {
	for _, r := range ch.rules {
		rule := r.nftRule(ch.chain)
		b.queue(func(c *nftables.Conn) error { c.AddRule(rule); return nil })
	}
}

// addMap creates an empty verdict map.
func (b *batch) addMap(s *nftables.Set) {
	b.queue(func(c *nftables.Conn) error { return c.AddSet(s, nil) })
}

// addElems adds verdict map elements, elemsPerMsg to a message.
func (b *batch) addElems(s *nftables.Set, elems []elemSpec) {
	for chunk := range slices.Chunk(elems, elemsPerMsg) {
		vals := make([]nftables.SetElement, len(chunk))
		for i, e := range chunk {
			vals[i] = nftables.SetElement{Key: e.key, VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: e.chain}}
		}
		b.queue(func(c *nftables.Conn) error { return c.SetAddElements(s, vals) })
	}
}

// delElem deletes the map element with key.
func (b *batch) delElem(s *nftables.Set, key []byte) {
	b.queue(func(c *nftables.Conn) error { return c.SetDeleteElements(s, []nftables.SetElement{{Key: key}}) })
}

// commit sends b as one transaction; the caller holds nftMu. Batches of up
// to lastingMsgs messages (every AddSlot and RemoveSlot) go over the Host's
// lasting connection: closing an nf_tables socket waits until the objects
// that earlier transactions deleted are freed, an RCU grace period of
// several milliseconds, which would otherwise be paid on every change.
// Larger batches (SyncRules) get a socket of their own, sized for them.
func (h *Host) commit(b *batch) error {
	n := len(b.msgs)
	if n <= lastingMsgs {
		c, err := h.lastingConn()
		if err != nil {
			return err
		}
		if err := queueAndFlush(c, b); err != nil {
			// Replies may be left unread on the socket: start afresh.
			return fmt.Errorf("nftables transaction of %d messages: %w", n, h.dropLastingConn(err))
		}
		return nil
	}
	c, err := h.nftConn(nftables.WithSockOptions(sizeBuffers(n)))
	if err != nil {
		return err
	}
	if err := queueAndFlush(c, b); err != nil {
		return fmt.Errorf("nftables transaction of %d messages: %w", n, err)
	}
	return nil
}

// queueAndFlush queues b's messages on c and sends them.
func queueAndFlush(c *nftables.Conn, b *batch) error {
	for _, m := range b.msgs {
		if err := m(c); err != nil {
			return fmt.Errorf("queue nftables message: %w", err)
		}
	}
	return c.Flush()
}

// lastingConn returns the Host's lasting nftables connection, opening it
// if needed; the caller holds nftMu.
func (h *Host) lastingConn() (*nftables.Conn, error) {
	if h.nft != nil {
		return h.nft, nil
	}
	c, err := h.nftConn(nftables.AsLasting(), nftables.WithSockOptions(sizeBuffers(lastingMsgs)))
	if err != nil {
		return nil, err
	}
	h.nft = c
	return c, nil
}

// dropLastingConn closes the lasting connection after err; the caller
// holds nftMu.
func (h *Host) dropLastingConn(err error) error {
	if h.nft == nil {
		return err
	}
	cerr := h.nft.CloseLasting()
	h.nft = nil
	if cerr != nil {
		return fmt.Errorf("%w (and closing the nftables connection: %w)", err, cerr)
	}
	return err
}

// sizeBuffers returns a socket option that fits msgs messages and their
// replies. As root (CAP_NET_ADMIN) the sizes may exceed net.core.*mem_max.
func sizeBuffers(msgs int) nftables.SockOption {
	return func(c *netlink.Conn) error {
		if err := c.SetWriteBuffer(max(msgs*sendBytesPerMsg, minSockBuffer)); err != nil {
			return fmt.Errorf("size netlink send buffer: %w", err)
		}
		if err := c.SetReadBuffer(max(msgs*recvBytesPerMsg, minSockBuffer)); err != nil {
			return fmt.Errorf("size netlink receive buffer: %w", err)
		}
		return nil
	}
}
