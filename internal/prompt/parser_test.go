package prompt

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/provider"
)

func cost(f float64) *float64 { return &f }

// parseAll feeds out to a new parser of format in pieces of size n and
// finishes it with exit code 0.
func parseAll(t *testing.T, format string, out []byte, n int, exit int, stderr string) ([]Event, Stats) {
	t.Helper()
	p, err := NewParser(format, "cli")
	if err != nil {
		t.Fatal(err)
	}
	if lp, ok := p.(*lineParser); ok {
		if cd, ok := lp.dec.(*codexDecoder); ok {
			clock := time.Unix(1000, 0)
			cd.now = func() time.Time { clock = clock.Add(1500 * time.Millisecond); return clock }
		}
	}
	var evs []Event
	for len(out) > 0 {
		k := min(n, len(out))
		evs = append(evs, p.Feed(out[:k])...)
		out = out[k:]
	}
	evs = append(evs, p.Finish(exit, []byte(stderr))...)
	return evs, p.Stats()
}

func TestTranscripts(t *testing.T) {
	tests := []struct {
		format string
		file   string
		want   []Event
	}{
		{provider.FormatClaudeStreamJSON, "claude_stream_json.jsonl", []Event{
			{Type: TypeSession, SessionID: "5b1f0c2e-8d7a-4f43-9a51-2c6f3e0d9b71", Model: "claude-sonnet-4-5-20250929"},
			{Type: TypeAssistantText, Text: "I'll list the files."},
			{Type: TypeToolUse, ToolID: "toolu_01AbC", ToolName: "Bash", Input: json.RawMessage(`{"command":"ls","description":"List files"}`)},
			{Type: TypeToolResult, ToolID: "toolu_01AbC", Output: "README.md\nmain.go"},
			{Type: TypeAssistantText, Text: "There are two files: README.md and main.go."},
			{Type: TypeUsage, Usage: &Usage{InputTokens: 10 + 1280 + 27200, OutputTokens: 78, CachedInputTokens: 27200, CostUSD: cost(0.0123)}},
			{Type: TypeResult, Text: "There are two files: README.md and main.go.", DurationMS: 5210, Turns: 2},
		}},
		{provider.FormatCodexExecJSONL, "codex_exec_jsonl.jsonl", []Event{
			{Type: TypeSession, SessionID: "0199a213-81c0-7800-8aa1-bbab2a035a53"},
			{Type: TypeToolUse, ToolID: "item_1", ToolName: "command_execution", Input: json.RawMessage(`{"command":"bash -lc ls"}`)},
			{Type: TypeToolResult, ToolID: "item_1", Output: "README.md\nmain.go\n"},
			{Type: TypeToolUse, ToolID: "item_2", ToolName: "command_execution", Input: json.RawMessage(`{"command":"bash -lc 'cat missing'"}`)},
			{Type: TypeToolResult, ToolID: "item_2", Output: "cat: missing: No such file or directory\n", IsError: true},
			{Type: TypeToolUse, ToolID: "item_3", ToolName: "file_change", Input: json.RawMessage(`{"changes":[{"kind":"add","path":"/home/hearth/project/NOTES.md"},{"kind":"update","path":"/home/hearth/project/main.go"}]}`)},
			{Type: TypeToolResult, ToolID: "item_3", Output: "add /home/hearth/project/NOTES.md\nupdate /home/hearth/project/main.go"},
			{Type: TypeToolUse, ToolID: "item_4", ToolName: "docs/search", Input: json.RawMessage(`{"query":"flags"}`)},
			{Type: TypeToolResult, ToolID: "item_4", Output: "2 pages found"},
			{Type: TypeAssistantText, Text: "There are two files: README.md and main.go."},
			{Type: TypeUsage, Usage: &Usage{InputTokens: 24763, OutputTokens: 122, CachedInputTokens: 24448}},
			{Type: TypeResult, Text: "There are two files: README.md and main.go.", DurationMS: 1500, Turns: 1},
		}},
		{provider.FormatGeminiStreamJSON, "gemini_stream_json.jsonl", []Event{
			{Type: TypeSession, SessionID: "c3a1f0de-6b2e-4c7a-9d15-8e4f2a6b1c03", Model: "gemini-2.5-pro"},
			{Type: TypeAssistantText, Text: "Let me look.", Delta: true},
			{Type: TypeToolUse, ToolID: "list_directory-1764410402100-0a1b2c", ToolName: "list_directory", Input: json.RawMessage(`{"dir_path":"."}`)},
			{Type: TypeToolResult, ToolID: "list_directory-1764410402100-0a1b2c", Output: "Listed 2 item(s)."},
			{Type: TypeToolUse, ToolID: "read_file-1764410402900-3d4e5f", ToolName: "read_file", Input: json.RawMessage(`{"file_path":"missing.txt"}`)},
			{Type: TypeToolResult, ToolID: "read_file-1764410402900-3d4e5f", Output: "File not found: missing.txt", IsError: true},
			{Type: TypeAssistantText, Text: "There are two files: ", Delta: true},
			{Type: TypeAssistantText, Text: "README.md and main.go.", Delta: true},
			{Type: TypeUsage, Usage: &Usage{InputTokens: 8900, OutputTokens: 220, CachedInputTokens: 4100}},
			{Type: TypeResult, Text: "There are two files: README.md and main.go.", DurationMS: 4100},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.format, func(t *testing.T) {
			out, err := os.ReadFile("testdata/" + tt.file)
			if err != nil {
				t.Fatal(err)
			}
			lines := bytes.Count(out, []byte("\n"))
			for _, n := range []int{1, 7, 100, len(out)} {
				got, st := parseAll(t, tt.format, out, n, 0, "")
				if !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("pieces of %d bytes:\n got %s\nwant %s", n, dump(got), dump(tt.want))
				}
				if st.Lines != lines || st.Skipped != 0 || st.TooLong != 0 {
					t.Errorf("stats %+v, want %d lines", st, lines)
				}
			}
		})
	}
}

func dump(evs []Event) string {
	var b strings.Builder
	for _, e := range evs {
		j, _ := json.Marshal(e)
		b.WriteString("\n  ")
		b.Write(j)
	}
	return b.String()
}

func TestErrorResults(t *testing.T) {
	tests := []struct {
		name, format, out string
		want              []Event
	}{
		{"claude max turns", provider.FormatClaudeStreamJSON,
			`{"type":"result","subtype":"error_max_turns","duration_ms":900,"duration_api_ms":800,"is_error":true,"num_turns":3,"stop_reason":null,"session_id":"s","total_cost_usd":0.5,"usage":{"input_tokens":1,"output_tokens":2,"cache_read_input_tokens":0,"cache_creation_input_tokens":0},"modelUsage":{},"permission_denials":[],"errors":["Reached maximum number of turns (3)"],"uuid":"u"}`,
			[]Event{
				{Type: TypeUsage, Usage: &Usage{InputTokens: 1, OutputTokens: 2, CostUSD: cost(0.5)}},
				{Type: TypeError, Message: "Reached maximum number of turns (3)"},
				{Type: TypeResult, IsError: true, DurationMS: 900, Turns: 3},
			}},
		{"claude error without errors", provider.FormatClaudeStreamJSON,
			`{"type":"result","subtype":"error_during_execution","is_error":true,"num_turns":1,"duration_ms":5}`,
			[]Event{
				{Type: TypeError, Message: "error_during_execution"},
				{Type: TypeResult, IsError: true, DurationMS: 5, Turns: 1},
			}},
		{"codex turn failed", provider.FormatCodexExecJSONL,
			"{\"type\":\"thread.started\",\"thread_id\":\"t\"}\n{\"type\":\"turn.started\"}\n{\"type\":\"error\",\"message\":\"stream disconnected\"}\n{\"type\":\"turn.failed\",\"error\":{\"message\":\"unexpected status 401 Unauthorized\"}}",
			[]Event{
				{Type: TypeSession, SessionID: "t"},
				{Type: TypeError, Message: "stream disconnected"},
				{Type: TypeError, Message: "unexpected status 401 Unauthorized"},
				{Type: TypeResult, IsError: true, Turns: 1, DurationMS: 1500},
			}},
		{"codex error item", provider.FormatCodexExecJSONL,
			`{"type":"item.completed","item":{"id":"item_9","type":"error","message":"command timed out"}}`,
			[]Event{
				{Type: TypeError, Message: "command timed out", Severity: "warning"},
				{Type: TypeError, Message: "cli exited with status 1"},
			}},
		{"codex mcp failure", provider.FormatCodexExecJSONL,
			`{"type":"item.completed","item":{"id":"item_1","type":"mcp_tool_call","server":"s","tool":"t","arguments":null,"result":null,"error":{"message":"server gone"},"status":"failed"}}`,
			[]Event{
				{Type: TypeToolUse, ToolID: "item_1", ToolName: "s/t"},
				{Type: TypeToolResult, ToolID: "item_1", Output: "server gone", IsError: true},
				{Type: TypeError, Message: "cli exited with status 1"},
			}},
		{"gemini error result", provider.FormatGeminiStreamJSON,
			"{\"type\":\"error\",\"timestamp\":\"x\",\"severity\":\"warning\",\"message\":\"Loop detected\"}\n{\"type\":\"result\",\"timestamp\":\"x\",\"status\":\"error\",\"error\":{\"type\":\"FatalTurnLimitedError\",\"message\":\"Reached max session turns\"},\"stats\":{\"total_tokens\":0,\"input_tokens\":0,\"output_tokens\":0,\"cached\":0,\"input\":0,\"duration_ms\":0,\"tool_calls\":0,\"models\":{}}}\n",
			[]Event{
				{Type: TypeError, Message: "Loop detected", Severity: "warning"},
				{Type: TypeUsage, Usage: &Usage{}},
				{Type: TypeError, Message: "Reached max session turns"},
				{Type: TypeResult, IsError: true},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := parseAll(t, tt.format, []byte(tt.out), 3, 1, "")
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("\n got %s\nwant %s", dump(got), dump(tt.want))
			}
		})
	}
}

func TestFinish(t *testing.T) {
	noisy := "Loading...\n{\"type\":\"system\",\"subtype\":\"init\",\"session_id\":\"s\",\"model\":\"m\"}\nnot json {\n"
	tests := []struct {
		name   string
		out    string
		exit   int
		stderr string
		want   string // the last event's message
	}{
		{"exit status with stderr", noisy, 3, "warming up\n\x1b[31mError: Invalid API key\x1b[0m\n", "cli exited with status 3 (2 lines of its output were not its events): warming up\n[31mError: Invalid API key[0m"},
		{"signal", "", -1, "", "cli was stopped by a signal before it gave a result"},
		{"clean exit without result", "", 0, "", "cli exited without a result"},
		{"stderr tail bounded", "", 1, strings.Repeat("x", 10000) + "END", "cli exited with status 1: " + strings.Repeat("x", MaxStderrTail-3) + "END"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := parseAll(t, provider.FormatClaudeStreamJSON, []byte(tt.out), 5, tt.exit, tt.stderr)
			last := got[len(got)-1]
			if last.Type != TypeError || last.Message != tt.want {
				t.Fatalf("last event %+v\nwant message %q", last, tt.want)
			}
		})
	}
}

func TestFinishAfterResultAddsNothing(t *testing.T) {
	out := `{"type":"result","subtype":"success","is_error":false,"result":"ok","num_turns":1}`
	// The last line has no newline: Finish decodes it.
	got, _ := parseAll(t, provider.FormatClaudeStreamJSON, []byte(out), 10, 2, "boom")
	if len(got) != 1 || got[0].Type != TypeResult || got[0].Text != "ok" {
		t.Fatalf("got %s", dump(got))
	}
	p, _ := NewParser(provider.FormatClaudeStreamJSON, "claude")
	p.Finish(0, nil)
	if evs := append(p.Feed([]byte(out+"\n")), p.Finish(0, nil)...); evs != nil {
		t.Errorf("events after Finish: %s", dump(evs))
	}
}

func TestLineBounds(t *testing.T) {
	long := `{"type":"assistant","message":{"content":[{"type":"text","text":"` + strings.Repeat("a", MaxLineBytes) + `"}]}}`
	big := `{"type":"assistant","message":{"content":[{"type":"text","text":"` + strings.Repeat("b", MaxTextBytes+10) + `"}]}}`
	out := long + "\n" + big + "\n" + `{"type":"result","is_error":false,"result":"done"}` + "\n"
	got, st := parseAll(t, provider.FormatClaudeStreamJSON, []byte(out), 64<<10, 0, "")
	if st.TooLong != 1 || st.Lines != 2 {
		t.Errorf("stats %+v", st)
	}
	if len(got) != 2 || got[0].Type != TypeAssistantText || len(got[0].Text) != MaxTextBytes || !got[0].Truncated || got[1].Text != "done" {
		t.Fatalf("got %d events: %+v", len(got), got[0].Type)
	}
}

func TestFieldBounds(t *testing.T) {
	huge := strings.Repeat("z", MaxInputBytes)
	line := `{"type":"assistant","message":{"content":[{"type":"tool_use","id":"` + strings.Repeat("i", 1000) + `","name":"n\u0000\u001b","input":{"data":"` + huge + `"}},{"type":"text","text":"bad ` + "\xff" + ` utf8"}]}}` + "\n"
	got, _ := parseAll(t, provider.FormatClaudeStreamJSON, []byte(line), 1<<20, 0, "")
	tu := got[0]
	if len(tu.ToolID) != MaxIDBytes || tu.Input != nil || !tu.Truncated || tu.ToolName != "n" {
		t.Errorf("tool_use id %d bytes, name %q, input %d bytes, truncated %v", len(tu.ToolID), tu.ToolName, len(tu.Input), tu.Truncated)
	}
	if got[1].Text != "bad \uFFFD utf8" {
		t.Errorf("text %q", got[1].Text)
	}
	// Every event encodes as valid JSON.
	for _, e := range got {
		b, err := json.Marshal(e)
		if err != nil || !json.Valid(b) {
			t.Errorf("event %v does not encode: %v", e.Type, err)
		}
	}
}

func TestWrongShapesAreSkipped(t *testing.T) {
	out := strings.Join([]string{
		`{"type":"result","duration_ms":"soon"}`, // wrong type: not the format
		`["a","list"]`,
		`{"no":"type"}`,
		`{"type":"assistant","message":{"content":"just a string"}}`,
		`{"type":"assistant","message":{"content":[{"type":"tool_use","id":"x","name":"y","input":null}]}}`,
		`{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"x","content":[{"type":"text","text":"a"},{"type":"image"},{"type":"text","text":"b"}],"is_error":true}]}}`,
	}, "\n") + "\n"
	got, st := parseAll(t, provider.FormatClaudeStreamJSON, []byte(out), 4, 0, "")
	if st.Skipped != 3 {
		t.Errorf("skipped %d, want 3", st.Skipped)
	}
	want := []Event{
		{Type: TypeToolUse, ToolID: "x", ToolName: "y"},
		{Type: TypeToolResult, ToolID: "x", Output: "a\nb", IsError: true},
		{Type: TypeError, Message: "cli exited without a result (3 lines of its output were not its events)"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("\n got %s\nwant %s", dump(got), dump(want))
	}
}

func TestNewParserUnknownFormat(t *testing.T) {
	if _, err := NewParser("xml", "x"); err == nil || !strings.Contains(err.Error(), "claude_stream_json") {
		t.Fatalf("err = %v", err)
	}
	for _, f := range provider.PromptFormats() {
		if _, err := NewParser(f, "x"); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// FuzzParsers feeds arbitrary output, split at an arbitrary point, to
// every parser: none may panic, and every event must encode as JSON
// within its bounds.
func FuzzParsers(f *testing.F) {
	for _, name := range []string{"claude_stream_json.jsonl", "codex_exec_jsonl.jsonl", "gemini_stream_json.jsonl"} {
		b, err := os.ReadFile("testdata/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint16(10))
	}
	f.Add([]byte("{\"type\":\"result\"\n\xff{}\n"), uint16(3))
	f.Fuzz(func(t *testing.T, out []byte, split uint16) {
		for _, format := range provider.PromptFormats() {
			p, err := NewParser(format, "cli")
			if err != nil {
				t.Fatal(err)
			}
			k := min(int(split), len(out))
			evs := append(p.Feed(out[:k]), p.Feed(out[k:])...)
			evs = append(evs, p.Finish(1, out)...)
			if len(evs) == 0 || evs[len(evs)-1].Type != TypeResult && evs[len(evs)-1].Type != TypeError {
				t.Fatalf("%s: the run does not end with a result or an error: %s", format, dump(evs))
			}
			for _, e := range evs {
				if len(e.Text) > MaxTextBytes || len(e.Output) > MaxOutputBytes || len(e.Input) > MaxInputBytes ||
					len(e.ToolID) > MaxIDBytes || len(e.ToolName) > MaxIDBytes || len(e.SessionID) > MaxIDBytes ||
					len(e.Model) > MaxIDBytes || len(e.Message) > MaxMessageLen+200 {
					t.Fatalf("%s: event over its bounds: %s", format, e.Type)
				}
				if _, err := json.Marshal(e); err != nil {
					t.Fatalf("%s: event does not encode: %v", format, err)
				}
			}
		}
	})
}
