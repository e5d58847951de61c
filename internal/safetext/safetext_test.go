package safetext

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// What a hostile guest may put into its agent version, an error text or
// its console to take over the terminal of whoever reads it.
const hostile = "v1\x1b]0;owned\x07\x1b[2J\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07\u009b31m\u202eevil\u2066\r\n\tok\x7f\xff\x00"

func TestLineRemovesEveryControlCharacter(t *testing.T) {
	got := Line(hostile, 0)
	want := "v1]0;owned[2J]52;c;Y3VybCBldmlsIHwgc2g=31mevil   ok\uFFFD"
	if got != want {
		t.Fatalf("Line(%q)\n got %q\nwant %q", hostile, got, want)
	}
	if strings.ContainsAny(got, "\n\t\r\x1b\x07\x00") {
		t.Fatalf("control characters left: %q", got)
	}
}

func TestTextKeepsLineFeedsAndTabs(t *testing.T) {
	got := Text(hostile, 0)
	want := "v1]0;owned[2J]52;c;Y3VybCBldmlsIHwgc2g=31mevil\n\tok\uFFFD"
	if got != want {
		t.Fatalf("Text(%q)\n got %q\nwant %q", hostile, got, want)
	}
	if !IsClean(got) || IsClean(hostile) {
		t.Fatalf("IsClean: cleaned %v, hostile %v", IsClean(got), IsClean(hostile))
	}
}

// Clip bounds and repairs, and removes nothing: what it returns stays
// within the bound once encoded as JSON.
func TestClip(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"plain\x1b[2J", 0, "plain\x1b[2J"},
		{"plain\x1b[2J", 5, "plain"},
		{"ab\xff\xfecd", 0, "ab\uFFFDcd"},
		{"ab\xff\xfecd", 4, "ab"},
		{strings.Repeat("é", 3), 5, "éé"},
		{"é", 1, ""},
	} {
		if got := Clip(tc.in, tc.max); got != tc.want {
			t.Errorf("Clip(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
	}
	invalid := strings.Repeat("\xff", 300)
	b, err := json.Marshal(Clip(invalid, 256))
	if err != nil {
		t.Fatal(err)
	}
	var back string
	if err := json.Unmarshal(b, &back); err != nil || len(back) > 256 {
		t.Fatalf("through JSON: %d bytes, %v", len(back), err)
	}
}

func TestBoundedWithoutSplittingRunes(t *testing.T) {
	s := strings.Repeat("é", 100) // two bytes each
	for _, max := range []int{1, 2, 3, 7, 200, 1000} {
		got := Line(s, max)
		if len(got) > max || !utf8.ValidString(got) {
			t.Fatalf("Line(max %d) = %d bytes, valid %v", max, len(got), utf8.ValidString(got))
		}
		if want := min(max, 200) / 2 * 2; len(got) != want {
			t.Fatalf("Line(max %d) = %d bytes, want %d", max, len(got), want)
		}
	}
	if got := Text("plain text\n", 0); got != "plain text\n" {
		t.Fatalf("clean text changed: %q", got)
	}
}

func TestWriterCleansAStreamCutAnywhere(t *testing.T) {
	in := []byte(hostile + "é€😀 done\n")
	want := Text(string(in), 0)
	for cut := 1; cut <= 4; cut++ {
		var out bytes.Buffer
		w := NewWriter(&out)
		for i := 0; i < len(in); i += cut {
			p := in[i:min(i+cut, len(in))]
			if n, err := w.Write(p); err != nil || n != len(p) {
				t.Fatalf("Write: %d, %v", n, err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if out.String() != want {
			t.Fatalf("writes of %d bytes\n got %q\nwant %q", cut, out.String(), want)
		}
	}
	var out bytes.Buffer
	w := NewWriter(&out)
	w.Write([]byte("a\xe2\x82")) // a stream that ends inside a rune
	w.Close()
	if out.String() != "a\uFFFD" {
		t.Fatalf("cut rune at the end: %q", out.String())
	}
}

func TestEscapeJSONKeepsTheValue(t *testing.T) {
	v := map[string]string{"reason": hostile, "plain": "ok"}
	b, err := json.MarshalIndent(v, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	safe := EscapeJSON(b)
	if !IsClean(string(safe)) {
		t.Fatalf("escaped JSON still has control characters: %q", safe)
	}
	var back map[string]string
	if err := json.Unmarshal(safe, &back); err != nil {
		t.Fatal(err)
	}
	// Only invalid UTF-8 differs: the encoder already made it U+FFFD.
	if want := strings.ToValidUTF8(hostile, "\uFFFD"); back["reason"] != want || back["plain"] != "ok" {
		t.Fatalf("value changed: %q", back["reason"])
	}
}

func TestWriteJSONIsCleanAndIndented(t *testing.T) {
	var out bytes.Buffer
	if err := WriteJSON(&out, map[string]string{"reason": hostile}); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if !IsClean(s) || !strings.HasPrefix(s, "{\n  \"reason\": ") || !strings.HasSuffix(s, "}\n") {
		t.Fatalf("WriteJSON wrote %q", s)
	}
	var back map[string]string
	if err := json.Unmarshal(out.Bytes(), &back); err != nil || back["reason"] != strings.ToValidUTF8(hostile, "\uFFFD") {
		t.Fatalf("value changed: %q %v", back["reason"], err)
	}
}
