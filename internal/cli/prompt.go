package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/safetext"
)

const promptUsage = `usage: hearth prompt VM_ID --provider claude_code|codex|gemini_cli [--cwd DIR] [-o NAME=VALUE]... [--json] "PROMPT"
       ("-" as the prompt reads it from stdin)

` + clientNote

// cmdPrompt runs `hearth prompt VM_ID --provider P "text"`: the prompt
// runs through the provider's CLI in the VM and its events are printed
// as they come (the assistant's text as text; --json prints each event).
// Interrupting cancels it: the CLI dies with the stream.
func cmdPrompt(ctx context.Context, args []string, out output) error {
	fs := newFlags("prompt", promptUsage, out)
	var c common
	c.registerClient(fs)
	providerName := fs.String("provider", "", "the provider whose CLI runs the prompt")
	cwd := fs.String("cwd", "", "the working directory in the guest (default: the workspace user's home)")
	asJSON := fs.Bool("json", false, "print every event as a JSON line")
	var opts envFlags
	fs.Var(&opts, "o", "a provider option NAME=VALUE (repeatable; a whole number is sent as one, NAME=a,b as a list for list options)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 || *providerName == "" {
		return errors.New(promptUsage)
	}
	text := pos[1]
	if text == "-" {
		b, err := io.ReadAll(io.LimitReader(stdin, 1<<20))
		if err != nil {
			return fmt.Errorf("read the prompt from stdin: %w", err)
		}
		text = string(b)
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	req := api.PromptRequest{Provider: *providerName, Prompt: text, Cwd: *cwd}
	if len(opts) > 0 {
		req.Options = map[string]any{}
		for _, o := range opts {
			k, v, _ := strings.Cut(o, "=")
			req.Options[k] = optionValue(v)
		}
	}
	s, err := cl.RunPrompt(ctx, pos[0], req)
	if err != nil {
		return err
	}
	defer s.Close()
	failed := false
	for {
		ev, err := s.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if ctx.Err() != nil {
				return exitCode(130)
			}
			return err
		}
		if *asJSON {
			if err := safetext.WriteJSON(out.stdout, ev); err != nil {
				return err
			}
		} else {
			printPromptEvent(out, ev)
		}
		if ev.Type == api.PromptEventTypeError && ev.Severity == "" || ev.Type == api.PromptEventTypeResult && ev.IsError {
			failed = true
		}
	}
	if failed {
		return exitCode(1)
	}
	return nil
}

// optionValue reads a -o value: a whole number, a comma-separated list,
// or a string.
func optionValue(v string) any {
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		return n
	}
	if strings.Contains(v, ",") {
		return strings.Split(v, ",")
	}
	return v
}

// printPromptEvent prints an event for a person: the assistant's text as
// it comes, tools and the outcome as short lines on stderr.
func printPromptEvent(out output, ev api.PromptEvent) {
	switch ev.Type {
	case api.PromptEventTypeAssistantText:
		fmt.Fprint(out.stdout, safetext.Text(ev.Text, 0))
		if !ev.Delta {
			fmt.Fprintln(out.stdout)
		}
	case api.PromptEventTypeToolUse:
		fmt.Fprintf(out.stderr, "[tool %s]\n", safetext.Line(ev.ToolName, 0))
	case api.PromptEventTypeError:
		fmt.Fprintf(out.stderr, "hearth: %s\n", safetext.Text(ev.Message, 0))
	case api.PromptEventTypeResult:
		if ev.Usage != (api.PromptUsage{}) {
			fmt.Fprintf(out.stderr, "[done in %d ms: %d tokens in, %d out]\n", ev.DurationMS, ev.Usage.InputTokens, ev.Usage.OutputTokens)
		}
	}
}
