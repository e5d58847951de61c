package prompt

import "encoding/json"

// geminiDecoder reads `gemini --output-format stream-json`
// (docs/providers.md, "Prompts"): init, message (the user's, then the
// assistant's as deltas), tool_use, tool_result, error and a closing
// result with stats. The result carries no text: it is the assistant
// deltas after the last tool call joined, as gemini's own json output
// format takes them.
type geminiDecoder struct {
	text      textBuilder
	sawResult bool
}

type geminiLine struct {
	Type      string `json:"type"`
	SessionID string `json:"session_id"`
	Model     string `json:"model"`
	// message
	Role    string `json:"role"`
	Content string `json:"content"`
	Delta   bool   `json:"delta"`
	// tool_use, tool_result
	ToolName   string          `json:"tool_name"`
	ToolID     string          `json:"tool_id"`
	Parameters json.RawMessage `json:"parameters"`
	Status     string          `json:"status"`
	Output     string          `json:"output"`
	Error      *struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	} `json:"error"`
	// error
	Severity string `json:"severity"`
	Message  string `json:"message"`
	// result
	Stats *struct {
		InputTokens  int64 `json:"input_tokens"`
		OutputTokens int64 `json:"output_tokens"`
		Cached       int64 `json:"cached"`
		DurationMS   int64 `json:"duration_ms"`
	} `json:"stats"`
}

func (d *geminiDecoder) done() bool { return d.sawResult }

func (d *geminiDecoder) decode(line []byte, emit func(Event)) bool {
	var l geminiLine
	if json.Unmarshal(line, &l) != nil {
		return false
	}
	switch l.Type {
	case "init":
		emit(Event{Type: TypeSession, SessionID: id(l.SessionID), Model: id(l.Model)})
	case "message":
		if l.Role == "assistant" {
			d.text.add(l.Content)
			e := Event{Type: TypeAssistantText, Delta: l.Delta}
			e.setText(l.Content)
			emit(e)
		}
	case "tool_use":
		d.text = textBuilder{}
		e := Event{Type: TypeToolUse, ToolID: id(l.ToolID), ToolName: id(l.ToolName)}
		e.setInput(l.Parameters)
		emit(e)
	case "tool_result":
		e := Event{Type: TypeToolResult, ToolID: id(l.ToolID), IsError: l.Status == "error"}
		out := l.Output
		if out == "" && l.Error != nil {
			out = l.Error.Message
		}
		e.setOutput(out)
		emit(e)
	case "error":
		e := Event{Type: TypeError}
		if l.Severity == "warning" {
			e.Severity = "warning"
		}
		e.setMessage(l.Message)
		emit(e)
	case "result":
		var dur int64
		if s := l.Stats; s != nil {
			emit(Event{Type: TypeUsage, Usage: &Usage{InputTokens: s.InputTokens, OutputTokens: s.OutputTokens, CachedInputTokens: s.Cached}})
			dur = max(s.DurationMS, 0)
		}
		isError := l.Status == "error"
		if isError && l.Error != nil {
			e := Event{Type: TypeError}
			e.setMessage(l.Error.Message)
			emit(e)
		}
		e := d.text.result()
		e.IsError, e.DurationMS = isError, dur
		emit(e)
		d.sawResult = true
	case "":
		return false
	}
	return true
}
