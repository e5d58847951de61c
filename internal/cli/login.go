package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
	"github.com/hearth-project/hearth/internal/safetext"
)

const loginUsage = `usage: hearth login start PROVIDER [--user U] [--wait]
       hearth login get ID | cancel ID | list | credentials [--user U]

` + clientNote

// cmdLogin runs `hearth login ...` against the daemon.
func cmdLogin(ctx context.Context, args []string, out output) error {
	if len(args) < 1 {
		return errors.New(loginUsage)
	}
	sub := args[0]
	fs := newFlags("login "+sub, loginUsage, out)
	var c common
	c.registerClient(fs)
	user := fs.String("user", "", "the user (admin keys; default: the key's own)")
	wait := fs.Bool("wait", false, "start: print the viewer link once the sign-in page is open, then wait for the end")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	one := func() (string, error) { return onlyArg(pos, "usage: hearth login "+sub+" ID") }
	switch sub {
	case "start":
		name, err := onlyArg(pos, "usage: hearth login start PROVIDER")
		if err != nil {
			return err
		}
		l, err := cl.StartLogin(ctx, *user, name)
		if err != nil {
			return err
		}
		if !*wait {
			return safetext.WriteJSON(out.stdout, l)
		}
		return followLogin(ctx, cl, l.ID, out.stdout)
	case "get":
		id, err := one()
		if err != nil {
			return err
		}
		l, err := cl.GetLogin(ctx, id)
		if err != nil {
			return err
		}
		return safetext.WriteJSON(out.stdout, l)
	case "cancel":
		id, err := one()
		if err != nil {
			return err
		}
		l, err := cl.CancelLogin(ctx, id)
		if err != nil {
			return err
		}
		fmt.Fprintf(out.stdout, "%s %s\n", l.ID, l.State)
		return nil
	case "list":
		ls, err := cl.ListLogins(ctx, api.ListLoginsParams{})
		if err != nil {
			return err
		}
		return safetext.WriteJSON(out.stdout, ls)
	case "credentials":
		cs, err := cl.ListCredentials(ctx, *user)
		if err != nil {
			return err
		}
		return safetext.WriteJSON(out.stdout, cs)
	default:
		return fmt.Errorf("unknown login command %q\n%s", sub, loginUsage)
	}
}

// followLogin prints the viewer link when there is one, then waits for
// the login to end and says how.
func followLogin(ctx context.Context, cl *client.Client, id string, stdout io.Writer) error {
	shown := false
	for {
		l, err := cl.GetLogin(ctx, id)
		if err != nil {
			return err
		}
		if l.Viewer.URL != "" && !shown {
			fmt.Fprintf(stdout, "finish the sign-in here: %s\n", l.Viewer.URL)
			shown = true
		}
		if client.Terminal(l) {
			fmt.Fprintf(stdout, "%s %s %s\n", l.ID, l.State, safetext.Line(l.FailureReason, 0))
			if l.State != api.LoginStateCompleted {
				return fmt.Errorf("login %s", l.State)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
