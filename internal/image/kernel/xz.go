package kernel

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"io"

	"github.com/ulikunitz/xz/lzma"
)

// A minimal XZ stream decoder. github.com/ulikunitz/xz reads only streams
// whose sole filter is LZMA2, but the kernel compresses its payload with
// `xz --check=crc32 --x86 --lzma2`, i.e. with the x86 BCJ filter in front.
// This decoder parses the XZ container itself, decompresses each block's
// LZMA2 data with ulikunitz/xz/lzma and undoes the BCJ filter.

// XZ filter IDs (xz file format 1.1.0, section 5.3).
const (
	xzFilterX86   = 0x04
	xzFilterLZMA2 = 0x21
)

// XZ check types.
const (
	xzCheckNone   = 0x00
	xzCheckCRC32  = 0x01
	xzCheckCRC64  = 0x04
	xzCheckSHA256 = 0x0A
)

// xzBlockHeader is the part of a block header the decoder needs.
type xzBlockHeader struct {
	x86      bool   // x86 BCJ filter before LZMA2
	x86Start uint32 // BCJ start offset
	dictCap  int    // LZMA2 dictionary size
}

// decodeXZ decodes the XZ stream at the start of data and returns its
// uncompressed contents; bytes after the stream's last block are ignored
// (the index and footer are not needed). Each block's check is verified.
func decodeXZ(data []byte) ([]byte, error) {
	check, err := parseXZStreamHeader(data)
	if err != nil {
		return nil, err
	}
	r := bytes.NewReader(data[12:])
	var out bytes.Buffer
	for {
		hdr, err := readXZBlockHeader(r)
		if err != nil {
			return nil, err
		}
		if hdr == nil { // index indicator: no more blocks
			return out.Bytes(), nil
		}
		if err := decodeXZBlock(r, hdr, check, &out); err != nil {
			return nil, err
		}
	}
}

// parseXZStreamHeader validates the 12-byte stream header and returns the
// check type.
func parseXZStreamHeader(data []byte) (byte, error) {
	if len(data) < 12 || !bytes.Equal(data[:6], xzMagic) {
		return 0, errors.New("xz: no stream header")
	}
	if crc32.ChecksumIEEE(data[6:8]) != binary.LittleEndian.Uint32(data[8:12]) {
		return 0, errors.New("xz: stream header crc mismatch")
	}
	if data[6] != 0 || data[7]&0xF0 != 0 {
		return 0, errors.New("xz: unsupported stream flags")
	}
	return data[7], nil
}

// readXZBlockHeader reads one block header, or returns nil at the index.
func readXZBlockHeader(r *bytes.Reader) (*xzBlockHeader, error) {
	sizeByte, err := r.ReadByte()
	if err != nil {
		return nil, fmt.Errorf("xz: block header: %w", err)
	}
	if sizeByte == 0 {
		return nil, nil
	}
	raw := make([]byte, int(sizeByte)*4+4)
	raw[0] = sizeByte
	if _, err := io.ReadFull(r, raw[1:]); err != nil {
		return nil, fmt.Errorf("xz: block header: %w", err)
	}
	body, sum := raw[:len(raw)-4], binary.LittleEndian.Uint32(raw[len(raw)-4:])
	if crc32.ChecksumIEEE(body) != sum {
		return nil, errors.New("xz: block header crc mismatch")
	}
	return parseXZBlockHeader(body)
}

// parseXZBlockHeader decodes the flags, optional sizes and filter chain.
func parseXZBlockHeader(body []byte) (*xzBlockHeader, error) {
	flags := body[1]
	if flags&0x3C != 0 {
		return nil, errors.New("xz: reserved block flags set")
	}
	p := bytes.NewReader(body[2:])
	for _, present := range []bool{flags&0x40 != 0, flags&0x80 != 0} { // compressed, uncompressed size
		if present {
			if _, err := binary.ReadUvarint(p); err != nil {
				return nil, fmt.Errorf("xz: block header size field: %w", err)
			}
		}
	}
	h := &xzBlockHeader{}
	nFilters := int(flags&0x03) + 1
	for i := 0; i < nFilters; i++ {
		id, props, err := readXZFilter(p)
		if err != nil {
			return nil, err
		}
		last := i == nFilters-1
		if err := h.addFilter(id, props, last); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// readXZFilter reads one filter's ID and properties.
func readXZFilter(p *bytes.Reader) (uint64, []byte, error) {
	id, err := binary.ReadUvarint(p)
	if err != nil {
		return 0, nil, fmt.Errorf("xz: filter id: %w", err)
	}
	n, err := binary.ReadUvarint(p)
	if err != nil || n > uint64(p.Len()) {
		return 0, nil, errors.New("xz: bad filter properties size")
	}
	props := make([]byte, n)
	if _, err := io.ReadFull(p, props); err != nil {
		return 0, nil, fmt.Errorf("xz: filter properties: %w", err)
	}
	return id, props, nil
}

// addFilter records one filter of the chain; only [x86] + LZMA2 is
// supported, LZMA2 last.
func (h *xzBlockHeader) addFilter(id uint64, props []byte, last bool) error {
	switch {
	case id == xzFilterLZMA2 && last:
		if len(props) != 1 {
			return errors.New("xz: bad lzma2 properties")
		}
		dc, err := lzma.DecodeDictCap(props[0])
		if err != nil {
			return fmt.Errorf("xz: lzma2 dictionary size: %w", err)
		}
		h.dictCap = int(max(dc, lzma.MinDictCap))
		return nil
	case id == xzFilterX86 && !last && !h.x86:
		switch len(props) {
		case 0:
		case 4:
			h.x86Start = binary.LittleEndian.Uint32(props)
		default:
			return errors.New("xz: bad x86 filter properties")
		}
		h.x86 = true
		return nil
	default:
		return fmt.Errorf("xz: unsupported filter chain (filter id %#x)", id)
	}
}

// decodeXZBlock decompresses one block's data, undoes its filters, skips
// the block padding and verifies the check.
func decodeXZBlock(r *bytes.Reader, h *xzBlockHeader, check byte, out *bytes.Buffer) error {
	start := r.Size() - int64(r.Len())
	lr, err := lzma.Reader2Config{DictCap: h.dictCap}.NewReader2(r)
	if err != nil {
		return fmt.Errorf("xz: lzma2: %w", err)
	}
	begin := out.Len()
	if _, err := io.Copy(out, lr); err != nil {
		return fmt.Errorf("xz: lzma2: %w", err)
	}
	block := out.Bytes()[begin:]
	if h.x86 {
		bcjX86Decode(block, h.x86Start)
	}
	compressed := r.Size() - int64(r.Len()) - start
	for ; compressed%4 != 0; compressed++ {
		if b, err := r.ReadByte(); err != nil || b != 0 {
			return errors.New("xz: bad block padding")
		}
	}
	return verifyXZCheck(r, check, block)
}

// verifyXZCheck reads a block's check field and compares it with data.
func verifyXZCheck(r *bytes.Reader, check byte, data []byte) error {
	var h hash.Hash
	switch check {
	case xzCheckNone:
		return nil
	case xzCheckCRC32:
		h = crc32.NewIEEE()
	case xzCheckCRC64:
		h = crc64.New(crc64.MakeTable(crc64.ECMA))
	case xzCheckSHA256:
		h = sha256.New()
	default:
		return fmt.Errorf("xz: unsupported check type %#x", check)
	}
	h.Write(data)
	want := make([]byte, h.Size())
	if _, err := io.ReadFull(r, want); err != nil {
		return fmt.Errorf("xz: block check: %w", err)
	}
	got := h.Sum(nil)
	if check != xzCheckSHA256 { // CRCs are stored little-endian
		for i, j := 0, len(got)-1; i < j; i, j = i+1, j-1 {
			got[i], got[j] = got[j], got[i]
		}
	}
	if !bytes.Equal(got, want) {
		return errors.New("xz: block check mismatch (corrupt data)")
	}
	return nil
}

// bcjX86Decode undoes the x86 BCJ filter in place over a whole block: it
// turns the absolute addresses the encoder stored in E8/E9 (CALL/JMP rel32)
// instructions back into relative ones. Port of xz-embedded's bcj_x86,
// processing the block in one call (the last four bytes are never
// converted, as in the streaming decoder at end of input).
func bcjX86Decode(buf []byte, startPos uint32) {
	maskToAllowed := [8]bool{true, true, true, false, true, false, false, false}
	maskToBitNum := [8]uint32{0, 1, 2, 2, 3, 3, 3, 3}
	testMSByte := func(b byte) bool { return b == 0x00 || b == 0xFF }
	if len(buf) <= 4 {
		return
	}
	size := len(buf) - 4
	prevPos := -1
	prevMask := uint32(0)
	for i := 0; i < size; i++ {
		if buf[i]&0xFE != 0xE8 {
			continue
		}
		if d := i - prevPos; d > 3 {
			prevMask = 0
		} else {
			prevMask = (prevMask << (d - 1)) & 7
			if prevMask != 0 {
				b := buf[i+4-int(maskToBitNum[prevMask])]
				if !maskToAllowed[prevMask] || testMSByte(b) {
					prevPos = i
					prevMask = prevMask<<1 | 1
					continue
				}
			}
		}
		prevPos = i
		if !testMSByte(buf[i+4]) {
			prevMask = prevMask<<1 | 1
			continue
		}
		src := binary.LittleEndian.Uint32(buf[i+1:])
		var dest uint32
		for {
			dest = src - (startPos + uint32(i) + 5)
			if prevMask == 0 {
				break
			}
			j := maskToBitNum[prevMask] * 8
			if !testMSByte(byte(dest >> (24 - j))) {
				break
			}
			src = dest ^ (1<<(32-j) - 1)
		}
		dest &= 0x01FFFFFF
		dest |= -(dest & 0x01000000)
		binary.LittleEndian.PutUint32(buf[i+1:], dest)
		i += 4
	}
}
