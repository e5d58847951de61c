package kernel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"
)

// bcjFixture is bcjTestPayload() compressed the way the kernel compresses
// its payload: `xz --format=xz --check=crc32 --x86 --lzma2 -c`. Regenerate
// it with HEARTH_UPDATE_TESTDATA=1 go test -run TestDecodeXZBCJ (needs xz).
const bcjFixture = "testdata/payload-x86-bcj.xz"

// bcjTestPayload is a deterministic 64 KiB ELF-looking blob dense with
// E8/E9 (CALL/JMP rel32) instructions, the bytes the x86 BCJ filter
// rewrites, mixed with repetitive filler so that it compresses.
func bcjTestPayload() []byte {
	buf := make([]byte, 64<<10)
	copy(buf, elfMagic)
	state := uint32(2463534242)
	next := func() uint32 { // xorshift32: stable across Go releases
		state ^= state << 13
		state ^= state >> 17
		state ^= state << 5
		return state
	}
	for i := len(elfMagic); i+5 <= len(buf); {
		switch r := next(); r % 4 {
		case 0, 1: // call/jmp with a small signed displacement
			buf[i] = 0xE8 + byte(r>>8)&1
			binary.LittleEndian.PutUint32(buf[i+1:], uint32(int32(r>>12)%4096-2048))
			i += 5
		case 2:
			copy(buf[i:], "\x48\x89\xe5\x41\x54")
			i += 5
		default:
			buf[i] = byte(r >> 24)
			i++
		}
	}
	return buf
}

// fakeBzImage wraps an XZ stream the way an x86 bzImage does: setup code and
// decompressor first (here with a stray, invalid XZ magic), then the
// payload, then the 4-byte uncompressed size.
func fakeBzImage(stream []byte, size int) []byte {
	var b bytes.Buffer
	b.WriteString("MZ fake setup code HdrS ")
	b.Write(bytes.Repeat([]byte{0x90}, 1000))
	b.Write(xzMagic) // a decoy: magic followed by garbage
	b.WriteString("\x00\x01garbage-not-a-stream")
	b.Write(bytes.Repeat([]byte{0xCC}, 333))
	b.Write(stream)
	_ = binary.Write(&b, binary.LittleEndian, uint32(size))
	return b.Bytes()
}

// compressLZMA2 makes an XZ stream with only the LZMA2 filter.
func compressLZMA2(t *testing.T, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := xz.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestExtractVmlinuxLZMA2(t *testing.T) {
	payload := bcjTestPayload()
	img := fakeBzImage(compressLZMA2(t, payload), len(payload))
	got, err := ExtractVmlinux(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("extracted %d bytes, differing from the %d-byte payload", len(got), len(payload))
	}
}

func TestExtractVmlinuxBCJ(t *testing.T) {
	stream, err := os.ReadFile(bcjFixture)
	if err != nil {
		t.Fatal(err)
	}
	payload := bcjTestPayload()
	got, err := ExtractVmlinux(fakeBzImage(stream, len(payload)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("BCJ payload decoded wrongly (%d bytes, first diff at %d)", len(got), firstDiff(got, payload))
	}
}

func TestDecodeXZBCJ(t *testing.T) {
	xzBin, err := exec.LookPath("xz")
	if err != nil {
		t.Skip("xz not installed; the committed fixture is covered by TestExtractVmlinuxBCJ")
	}
	payload := bcjTestPayload()
	cmd := exec.Command(xzBin, "--format=xz", "--check=crc32", "--x86", "--lzma2", "-c")
	cmd.Stdin = bytes.NewReader(payload)
	stream, err := cmd.Output()
	if err != nil {
		t.Fatalf("xz: %v", err)
	}
	if os.Getenv("HEARTH_UPDATE_TESTDATA") == "1" {
		if err := os.WriteFile(bcjFixture, stream, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := decodeXZ(stream)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("decoded payload differs at byte %d", firstDiff(got, payload))
	}
	// Other checks and a larger dictionary, as the kernel build may use.
	for _, check := range []string{"none", "crc64", "sha256"} {
		cmd := exec.Command(xzBin, "--format=xz", "--check="+check, "--x86", "--lzma2=dict=32MiB", "-c")
		cmd.Stdin = bytes.NewReader(payload)
		stream, err := cmd.Output()
		if err != nil {
			t.Fatalf("xz --check=%s: %v", check, err)
		}
		if got, err := decodeXZ(stream); err != nil || !bytes.Equal(got, payload) {
			t.Errorf("check %s: err=%v, equal=%v", check, err, bytes.Equal(got, payload))
		}
	}
}

func TestExtractVmlinuxRejects(t *testing.T) {
	notELF := []byte("this is not an ELF file, just text")
	cases := map[string][]byte{
		"no magic":  []byte("no xz stream in here at all"),
		"not elf":   fakeBzImage(compressLZMA2(t, notELF), len(notELF)),
		"truncated": fakeBzImage(compressLZMA2(t, bcjTestPayload())[:200], 0),
	}
	for name, img := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := ExtractVmlinux(img); !errors.Is(err, errNoXZPayload) {
				t.Fatalf("err = %v, want errNoXZPayload", err)
			}
		})
	}
}

func TestDecodeXZCorrupt(t *testing.T) {
	stream, err := os.ReadFile(bcjFixture)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("check", func(t *testing.T) {
		// Single-block stream: ... block check (CRC32) | index | footer.
		// The footer's backward size gives the index length.
		footer := stream[len(stream)-12:]
		indexLen := (int(binary.LittleEndian.Uint32(footer[4:8])) + 1) * 4
		checkAt := len(stream) - 12 - indexLen - 4
		bad := bytes.Clone(stream)
		bad[checkAt] ^= 0x01
		if _, err := decodeXZ(bad); err == nil || !strings.Contains(err.Error(), "check mismatch") {
			t.Fatalf("err = %v, want a check mismatch", err)
		}
	})
	t.Run("data", func(t *testing.T) {
		bad := bytes.Clone(stream)
		bad[len(bad)/2] ^= 0x40
		if _, err := decodeXZ(bad); err == nil {
			t.Fatal("corrupt stream decoded without error")
		}
	})
}

// firstDiff returns the index of the first differing byte.
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
