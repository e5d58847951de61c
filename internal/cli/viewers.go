package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/hearth-project/hearth/internal/client"
)

const viewersUsage = "usage: hearth vm viewers ls ID | rm ID"

// vmViewers lists a VM's open viewers (ls) or closes them all and revokes
// every viewer link issued for the VM so far (rm).
func vmViewers(ctx context.Context, cl *client.Client, pos []string, stdout io.Writer) error {
	if len(pos) != 2 {
		return errors.New(viewersUsage)
	}
	verb, id := pos[0], pos[1]
	switch verb {
	case "ls", "list":
		v, err := cl.GetVM(ctx, id)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tOPENED\tVIEW-ONLY\tSESSION\tREMOTE")
		for _, o := range v.Viewers {
			fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\n", o.ID, o.OpenedAt.Local().Format(time.RFC3339), o.ViewOnly, o.Session, o.Remote)
		}
		return tw.Flush()
	case "rm", "revoke":
		r, err := cl.RevokeViewers(ctx, id)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: closed %d viewers; every viewer link issued so far is revoked\n", r.VM, r.Closed)
		return nil
	default:
		return fmt.Errorf("unknown viewers command %q (%s)", verb, viewersUsage)
	}
}
