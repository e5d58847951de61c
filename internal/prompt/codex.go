package prompt

import (
	"encoding/json"
	"strings"
	"time"
)

// codexDecoder reads `codex exec --json` (docs/providers.md, "Prompts"):
// thread.started, turn.started, item.started/updated/completed with
// typed items, turn.completed with usage, turn.failed and error. Codex
// reports neither the model nor a duration: the duration is measured
// from thread.started.
type codexDecoder struct {
	now       func() time.Time
	start     time.Time
	turns     int
	sawResult bool
	lastText  string
	started   map[string]bool // tool items whose tool_use was emitted
}

// maxStarted bounds the tool items remembered between item.started and
// item.completed.
const maxStarted = 4096

type codexLine struct {
	Type     string      `json:"type"`
	ThreadID string      `json:"thread_id"`
	Usage    *codexUsage `json:"usage"`
	Error    *codexError `json:"error"`
	Message  string      `json:"message"`
	Item     *codexItem  `json:"item"`
}

type codexUsage struct {
	InputTokens       int64 `json:"input_tokens"`
	CachedInputTokens int64 `json:"cached_input_tokens"`
	OutputTokens      int64 `json:"output_tokens"`
}

type codexError struct {
	Message string `json:"message"`
}

type codexItem struct {
	ID   string `json:"id"`
	Type string `json:"type"`
	// agent_message, reasoning
	Text string `json:"text"`
	// command_execution
	Command          string `json:"command"`
	AggregatedOutput string `json:"aggregated_output"`
	ExitCode         *int   `json:"exit_code"`
	Status           string `json:"status"`
	// file_change
	Changes []struct {
		Path string `json:"path"`
		Kind string `json:"kind"`
	} `json:"changes"`
	// mcp_tool_call
	Server    string          `json:"server"`
	Tool      string          `json:"tool"`
	Arguments json.RawMessage `json:"arguments"`
	Result    *struct {
		Content []json.RawMessage `json:"content"`
	} `json:"result"`
	Error *codexError `json:"error"`
	// web_search
	Query string `json:"query"`
	// error
	Message string `json:"message"`
}

func (d *codexDecoder) done() bool { return d.sawResult }

func (d *codexDecoder) decode(line []byte, emit func(Event)) bool {
	var l codexLine
	if json.Unmarshal(line, &l) != nil {
		return false
	}
	switch l.Type {
	case "thread.started":
		d.start = d.now()
		emit(Event{Type: TypeSession, SessionID: id(l.ThreadID)})
	case "turn.started":
		d.turns++
	case "item.started":
		if l.Item != nil {
			d.toolUse(l.Item, emit)
		}
	case "item.completed":
		if l.Item != nil {
			d.completed(l.Item, emit)
		}
	case "turn.completed":
		if u := l.Usage; u != nil {
			emit(Event{Type: TypeUsage, Usage: &Usage{InputTokens: u.InputTokens, OutputTokens: u.OutputTokens, CachedInputTokens: u.CachedInputTokens}})
		}
		d.result(false, emit)
	case "turn.failed":
		msg := "turn failed"
		if l.Error != nil && l.Error.Message != "" {
			msg = l.Error.Message
		}
		e := Event{Type: TypeError}
		e.setMessage(msg)
		emit(e)
		d.result(true, emit)
	case "error":
		e := Event{Type: TypeError}
		e.setMessage(l.Message)
		emit(e)
	case "":
		return false
	}
	return true
}

func (d *codexDecoder) result(isError bool, emit func(Event)) {
	e := Event{Type: TypeResult, IsError: isError, Turns: d.turns}
	if !isError {
		e.setText(d.lastText)
	}
	if !d.start.IsZero() {
		e.DurationMS = max(d.now().Sub(d.start).Milliseconds(), 0)
	}
	emit(e)
	d.sawResult = true
}

// toolUse emits the tool_use of a tool item (once per item id).
func (d *codexDecoder) toolUse(it *codexItem, emit func(Event)) {
	var name string
	var input any
	switch it.Type {
	case "command_execution":
		name, input = "command_execution", map[string]string{"command": it.Command}
	case "file_change":
		name, input = "file_change", map[string]any{"changes": it.Changes}
	case "mcp_tool_call":
		name = it.Server + "/" + it.Tool
	case "web_search":
		name, input = "web_search", map[string]string{"query": it.Query}
	case "collab_tool_call":
		name = "collab_" + it.Tool
	default:
		return
	}
	if d.started[it.ID] {
		return
	}
	if d.started == nil {
		d.started = map[string]bool{}
	}
	if len(d.started) < maxStarted {
		d.started[it.ID] = true
	}
	e := Event{Type: TypeToolUse, ToolID: id(it.ID), ToolName: id(name)}
	if it.Type == "mcp_tool_call" {
		e.setInput(it.Arguments)
	} else if b, err := json.Marshal(input); err == nil {
		e.setInput(b)
	}
	emit(e)
}

func (d *codexDecoder) completed(it *codexItem, emit func(Event)) {
	switch it.Type {
	case "agent_message":
		d.lastText = it.Text
		if len(d.lastText) > MaxTextBytes {
			d.lastText = d.lastText[:MaxTextBytes]
		}
		e := Event{Type: TypeAssistantText}
		e.setText(it.Text)
		emit(e)
		return
	case "error":
		e := Event{Type: TypeError, Severity: "warning"}
		e.setMessage(it.Message)
		emit(e)
		return
	}
	d.toolUse(it, emit) // a file change only ever completes
	e := Event{Type: TypeToolResult, ToolID: id(it.ID)}
	switch it.Type {
	case "command_execution":
		e.IsError = it.Status == "failed" || it.Status == "declined" || it.ExitCode != nil && *it.ExitCode != 0
		e.setOutput(it.AggregatedOutput)
	case "file_change":
		e.IsError = it.Status == "failed"
		var lines []string
		for i, c := range it.Changes {
			if i == maxBlocks {
				break
			}
			lines = append(lines, c.Kind+" "+c.Path)
		}
		e.setOutput(strings.Join(lines, "\n"))
	case "mcp_tool_call":
		e.IsError = it.Status == "failed" || it.Error != nil
		if it.Error != nil {
			e.setOutput(it.Error.Message)
		} else if it.Result != nil {
			e.setOutput(mcpText(it.Result.Content))
		}
	case "web_search":
	case "collab_tool_call":
		e.IsError = it.Status == "failed"
	default:
		return // reasoning, plan, todo_list: not part of the vocabulary
	}
	delete(d.started, it.ID)
	emit(e)
}

// mcpText joins the text blocks of an MCP tool result.
func mcpText(content []json.RawMessage) string {
	var texts []string
	size := 0
	for _, raw := range content {
		var b struct {
			Type string `json:"type"`
			Text string `json:"text"`
		}
		if json.Unmarshal(raw, &b) == nil && b.Type == "text" && size <= MaxOutputBytes {
			texts = append(texts, b.Text)
			size += len(b.Text)
		}
	}
	return strings.Join(texts, "\n")
}
