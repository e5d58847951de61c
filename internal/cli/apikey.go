package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/app"
	"github.com/hearth-project/hearth/internal/auth"
	"github.com/hearth-project/hearth/internal/safetext"
)

const apikeyUsage = `usage: hearth apikey list [--user U] [--json] | revoke ID [--force]
       hearth apikey create [--key KEY] [--admin] [--user U] [--name NAME] [--expires 30d|TIME] [--save]

list, revoke, and create with a key (--key or HEARTH_API_KEY, an admin's)
talk to the daemon through its API only: any user, any machine that reaches it.
create without a key writes this host's database: it runs on this host, as
root, and works with the daemon stopped (how the first admin key is made).
--save keeps the key in this host's state directory for root's CLI.`

func cmdAPIKey(ctx context.Context, args []string, out output) error {
	if len(args) < 1 {
		return errors.New(apikeyUsage)
	}
	sub := args[0]
	fs := newFlags("apikey "+sub, apikeyUsage, out)
	var c common
	c.registerDaemon(fs)
	c.registerHost(fs)
	var (
		admin   = fs.Bool("admin", false, "admin scope: every user's resources and every key (create)")
		user    = fs.String("user", "", "the key's user, created if new; required without --admin (create); whose keys (list)")
		name    = fs.String("name", "", "a label for the key (create)")
		expires = fs.String("expires", "", "when the key stops working: a lifetime (30d, 12h) or a time (2030-01-02, RFC 3339) (create)")
		ttl     = fs.String("ttl", "", "the key's lifetime (30d, 12h); same as --expires with a lifetime (create)")
		save    = fs.Bool("save", false, "also save the key for this host's CLI (state dir, mode 0600) (create)")
		asJSON  = fs.Bool("json", false, "print JSON (list)")
		force   = fs.Bool("force", false, "also revoke the last active admin key (revoke)")
	)
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	switch sub {
	case "create":
		if len(pos) != 0 {
			return errors.New(apikeyUsage)
		}
		var expiry time.Time
		switch {
		case *expires != "" && *ttl != "":
			return errors.New("give --expires or --ttl, not both")
		case *ttl != "":
			d, err := parseLifetime(*ttl)
			if err != nil {
				return fmt.Errorf("--ttl: %w", err)
			}
			expiry = time.Now().Add(d)
		default:
			if expiry, err = parseExpiry(*expires, time.Now()); err != nil {
				return fmt.Errorf("--expires: %w", err)
			}
		}
		req := auth.IssueRequest{Name: *name, Admin: *admin, UserID: *user, Expiry: expiry}
		var key string
		if c.key != "" || os.Getenv("HEARTH_API_KEY") != "" {
			key, err = createKeyRemote(ctx, &c, req)
		} else {
			key, err = createKeyLocal(ctx, &c, req)
		}
		if err != nil {
			return err
		}
		fmt.Fprintln(out.stdout, key) // first: a failure to save must not lose the key
		if !expiry.IsZero() {
			fmt.Fprintf(out.stderr, "expires %s\n", expiry.Local().Format(time.RFC3339))
		}
		if *save {
			cfg, err := c.config()
			if err != nil {
				return err
			}
			path := savedKeyPath(cfg)
			if err := errors.Join(os.WriteFile(path, []byte(key+"\n"), 0o600), os.Chmod(path, 0o600)); err != nil {
				return fmt.Errorf("save key: %w", err)
			}
		}
		return nil
	case "list":
		if len(pos) != 0 {
			return errors.New(apikeyUsage)
		}
		cl, err := c.client()
		if err != nil {
			return err
		}
		keys, err := cl.ListAPIKeys(ctx, *user)
		if err != nil {
			return err
		}
		if *asJSON {
			return safetext.WriteJSON(out.stdout, keys)
		}
		return printKeys(out.stdout, keys, time.Now())
	case "revoke":
		id, err := onlyArg(pos, "usage: hearth apikey revoke ID [--force]")
		if err != nil {
			return err
		}
		cl, err := c.client()
		if err != nil {
			return err
		}
		k, err := cl.RevokeAPIKey(ctx, id, *force)
		if err != nil {
			return err
		}
		fmt.Fprintf(out.stdout, "%s revoked %s\n", k.ID, k.RevokedAt.Local().Format(time.RFC3339))
		return nil
	default:
		return fmt.Errorf("unknown apikey command %q\n%s", sub, apikeyUsage)
	}
}

// createKeyLocal writes the key into this host's database: how the first
// admin key is made, with no daemon or key needed.
func createKeyLocal(ctx context.Context, c *common, req auth.IssueRequest) (string, error) {
	cfg, err := c.config()
	if err != nil {
		return "", err
	}
	return app.CreateAPIKeyLocal(ctx, cfg, req)
}

// createKeyRemote asks the daemon for the key (an admin key is needed).
func createKeyRemote(ctx context.Context, c *common, req auth.IssueRequest) (string, error) {
	cl, err := c.client()
	if err != nil {
		return "", err
	}
	k, err := cl.CreateAPIKey(ctx, api.CreateAPIKey{Name: req.Name, User: req.UserID, Admin: req.Admin, ExpiresAt: req.Expiry})
	if err != nil {
		return "", err
	}
	return k.Key, nil
}

func printKeys(w io.Writer, keys []api.APIKey, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tUSER\tSCOPE\tSTATUS\tCREATED\tEXPIRES\tLAST USED")
	when := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Local().Format("2006-01-02 15:04")
	}
	for _, k := range keys {
		scope, user, name := "user", k.User, k.Name
		if k.Admin {
			scope = "admin"
		}
		if user == "" {
			user = "-"
		}
		if name == "" {
			name = "-"
		}
		status := string(k.Status)
		if k.Status == api.APIKeyStatusRevoked {
			status += " " + when(k.RevokedAt)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, name, user, scope, status,
			when(k.CreatedAt), when(k.ExpiresAt), when(k.LastUsedAt))
	}
	return tw.Flush()
}

// parseExpiry reads --expires: "" (never), a lifetime from now (30d, 12h,
// 90m) or a time (2030-01-02, 2030-01-02T15:04:05Z).
func parseExpiry(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation("2006-01-02", s, time.Local); err == nil {
		return t, nil
	}
	d, err := parseLifetime(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither a lifetime (30d, 12h) nor a time (2030-01-02, RFC 3339)", s)
	}
	return now.Add(d), nil
}

// parseLifetime reads a positive duration, with "d" for days (30d) as well
// as Go's units (12h, 90m).
func parseLifetime(s string) (time.Duration, error) {
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 1 || n > int(auth.MaxLifetime/(24*time.Hour)) {
			return 0, fmt.Errorf("%q: want a whole number of days from 1 to %d", s, int(auth.MaxLifetime/(24*time.Hour)))
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%q is not a lifetime such as 30d or 12h", s)
		}
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q: a lifetime must be positive", s)
	}
	return d, nil
}
