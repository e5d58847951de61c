package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/app"
	"github.com/hearth-project/hearth/internal/client"
	"github.com/hearth-project/hearth/internal/safetext"
)

const imageUsage = `usage: hearth image build [--profile minimal | SPEC.yaml] [--kernel-package PKG] [--detach]
       hearth image builds | cancel BUILD_ID | list | inspect IMAGE | verify IMAGE | rm IMAGE | gc

` + clientNote + `
A build is a job of the daemon's: it goes on if this command is interrupted,
and the same build asked for again (here or elsewhere) joins the running one.
cancel ends a build for everyone who asked for it: a queued one at once, a
running one once the builder has stopped and removed its work.

       hearth image build --local [--profile minimal | SPEC.yaml] [--agent PATH] [--kernel-package PKG]

--local builds on this host without the daemon (as root, into its state directory).`

// maxSpecUpload is what the daemon takes as an uploaded spec.
const maxSpecUpload = 256 << 10

func cmdImage(ctx context.Context, args []string, out output) error {
	if len(args) < 1 {
		return errors.New(imageUsage)
	}
	sub := args[0]
	fs := newFlags("image "+sub, imageUsage, out)
	var c common
	c.registerClient(fs)
	profile := fs.String("profile", "minimal", "profile to build (or give a spec file as the argument) (build)")
	kernel := fs.String("kernel-package", "", "Debian kernel package (build; default: linux-image-amd64's current one)")
	detach := fs.Bool("detach", false, "print the build and return at once (build)")
	local := fs.Bool("local", false, "build on this host without the daemon, as root (build)")
	agent := fs.String("agent", "", "static hearth-agent binary (build --local; default: hearth-agent next to this binary)")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	if sub == "build" && *local {
		cfg, err := c.config()
		if err != nil {
			return err
		}
		name := *profile
		if len(pos) == 1 {
			name = pos[0]
		}
		return app.BuildVerifiedImage(ctx, cfg, name, *agent, *kernel, out.stdout)
	}
	if *agent != "" {
		return errors.New("--agent is for build --local: the daemon builds with the hearth-agent next to its own binary")
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	one := func() (string, error) { return onlyArg(pos, "usage: hearth image "+sub+" IMAGE") }
	switch sub {
	case "build":
		req := api.BuildImage{Profile: *profile, KernelPackage: *kernel}
		if len(pos) > 1 {
			return errors.New(imageUsage)
		}
		if len(pos) == 1 {
			if req, err = specRequest(pos[0], *kernel); err != nil {
				return err
			}
		}
		return buildImage(ctx, cl, req, *detach, out)
	case "builds":
		bs, err := cl.Builds(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(out.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSPEC\tSTATE\tPHASE\tIMAGE\tAGE\tERROR")
		for _, b := range bs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.ID, b.SpecName, b.State, b.Phase, short(b.Image),
				time.Since(b.CreatedAt).Round(time.Second), safetext.Line(b.Error, 120))
		}
		return tw.Flush()
	case "cancel":
		id, err := onlyArg(pos, "usage: hearth image cancel BUILD_ID")
		if err != nil {
			return err
		}
		b, err := cl.CancelBuild(ctx, id)
		if err != nil {
			return err
		}
		if b.State == api.ImageBuildStateCancelled {
			fmt.Fprintf(out.stdout, "cancelled build %s of %s\n", b.ID, b.SpecName)
		} else {
			fmt.Fprintf(out.stdout, "cancelling build %s of %s: it ends once the builder has stopped (hearth image builds)\n", b.ID, b.SpecName)
		}
		return nil
	case "list":
		imgs, err := cl.ListImages(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(out.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tID\tROLE\tSTATUS\tSIZE\tCREATED")
		for _, i := range imgs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%dMiB\t%s\n", i.Name, short(i.ID), i.Role, i.Status, i.SizeBytes>>20,
				i.CreatedAt.Local().Format(time.RFC3339))
		}
		return tw.Flush()
	case "inspect":
		ref, err := one()
		if err != nil {
			return err
		}
		d, err := cl.GetImage(ctx, ref)
		if err != nil {
			return err
		}
		return safetext.WriteJSON(out.stdout, d)
	case "verify":
		ref, err := one()
		if err != nil {
			return err
		}
		d, err := cl.VerifyImage(ctx, ref)
		if err != nil {
			return err
		}
		fmt.Fprintf(out.stdout, "image %s (%s): %s\n", d.Name, short(d.ID), d.Status)
		if d.Status == api.ImageDetailStatusVerified {
			return nil
		}
		if d.Verification.Error != "" {
			fmt.Fprintf(out.stdout, "  %s\n", safetext.Line(d.Verification.Error, 0))
		}
		for _, c := range d.Verification.Claims {
			if !c.OK {
				fmt.Fprintf(out.stdout, "  %s %s: %s\n", c.Kind, safetext.Line(c.Subject, 0), safetext.Line(c.Detail, 0))
			}
		}
		return fmt.Errorf("image %s failed verification", d.Name)
	case "rm":
		ref, err := one()
		if err != nil {
			return err
		}
		img, err := cl.DeleteImage(ctx, ref)
		if err != nil {
			return err
		}
		fmt.Fprintf(out.stdout, "removed %s %s\n", img.Name, short(img.ID))
		return nil
	case "gc":
		res, err := cl.CollectImages(ctx)
		if err != nil {
			return err
		}
		return safetext.WriteJSON(out.stdout, res)
	default:
		return fmt.Errorf("unknown image command %q\n%s", sub, imageUsage)
	}
}

// short is the first 12 characters of an image id, as lists show it.
func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// specRequest uploads the spec file at path for the daemon to build.
func specRequest(path, kernel string) (api.BuildImage, error) {
	f, err := os.Open(path)
	if err != nil {
		return api.BuildImage{}, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSpecUpload+1))
	if err != nil {
		return api.BuildImage{}, err
	}
	if len(b) > maxSpecUpload {
		return api.BuildImage{}, fmt.Errorf("%s is larger than %d KiB, the most the daemon takes as a spec", path, maxSpecUpload>>10)
	}
	return api.BuildImage{Spec: string(b), KernelPackage: kernel}, nil
}

// buildImage asks the daemon for a build and follows it to its end with a
// progress bar (a line per phase when stdout is no terminal). A dropped
// connection resumes from the last event; an interrupt leaves the build
// running.
func buildImage(ctx context.Context, cl *client.Client, req api.BuildImage, detach bool, out output) error {
	b, joined, err := cl.BuildImage(ctx, req)
	if err != nil {
		return err
	}
	verb := "started"
	if joined {
		verb = "joined the running"
	}
	fmt.Fprintf(out.stderr, "%s build %s of %s\n", verb, b.ID, b.SpecName)
	if detach {
		return safetext.WriteJSON(out.stdout, b)
	}
	bar := newProgressBar(out.stderr)
	var after int64
	for attempt := 0; ; attempt++ {
		done, last, err := followBuild(ctx, cl, b.ID, after, bar)
		if done != nil {
			bar.finish()
			return buildOutcome(*done, out.stdout)
		}
		if ctx.Err() != nil {
			bar.finish()
			fmt.Fprintf(out.stderr, "the build goes on in the daemon: hearth image builds\n")
			return ctx.Err()
		}
		if last > after {
			after, attempt = last, 0
		}
		if attempt >= 5 {
			bar.finish()
			return fmt.Errorf("following build %s: %w", b.ID, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(attempt+1) * time.Second):
		}
	}
}

// followBuild reads a build's events after after until done (returned),
// or until the stream breaks (the last event's id is returned to resume).
func followBuild(ctx context.Context, cl *client.Client, id string, after int64, bar *progressBar) (*api.ImageBuild, int64, error) {
	st, err := cl.BuildEvents(ctx, id, after)
	if err != nil {
		return nil, after, err
	}
	defer st.Close()
	for {
		e, err := st.Next()
		if err != nil {
			return nil, after, err
		}
		if e.Type != api.ImageBuildEventTypeDone {
			after = e.ID
		}
		switch e.Type {
		case api.ImageBuildEventTypeProgress:
			bar.step(e.Step, e.Steps, e.Phase, e.Line)
		case api.ImageBuildEventTypeLog, api.ImageBuildEventTypeDropped:
			bar.log(e.Line)
		case api.ImageBuildEventTypeDone:
			return &e.Build, after, nil
		}
	}
}

// buildOutcome prints a finished build and is an error unless it made a
// verified image.
func buildOutcome(b api.ImageBuild, stdout io.Writer) error {
	if b.State != api.ImageBuildStateSucceeded {
		return fmt.Errorf("build %s %s: %s", b.ID, b.State, safetext.Line(b.Error, 0))
	}
	fmt.Fprintf(stdout, "%s %s %s\n", b.SpecName, short(b.Image), b.ImageStatus)
	return nil
}

// progressBar shows a build's phases: on a terminal one line redrawn in
// place ("[#####.....] 4/8 rootfs  1m12s"), with the build's log lines
// printed above it; elsewhere a line per phase and the log lines.
type progressBar struct {
	w      io.Writer
	tty    bool
	start  time.Time
	status string // the bar's current text, on a terminal
}

func newProgressBar(w io.Writer) *progressBar {
	f, ok := w.(*os.File)
	tty := false
	if ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 && os.Getenv("TERM") != "dumb" {
			tty = true
		}
	}
	return &progressBar{w: w, tty: tty, start: time.Now()}
}

const barWidth = 24

func (p *progressBar) step(step, steps int, phase, line string) {
	phase, line = safetext.Line(phase, 40), safetext.Line(line, 200)
	if !p.tty {
		if line != "" {
			fmt.Fprintln(p.w, line)
		} else {
			fmt.Fprintf(p.w, "[%d/%d] %s\n", step, steps, phase)
		}
		return
	}
	filled := 0
	if steps > 0 {
		filled = barWidth * max(step-1, 0) / steps
	}
	p.status = fmt.Sprintf("[%s%s] %d/%d %-10s %s", strings.Repeat("#", filled), strings.Repeat(".", barWidth-filled),
		step, steps, phase, time.Since(p.start).Round(time.Second))
	fmt.Fprintf(p.w, "\r\033[K%s", p.status)
}

func (p *progressBar) log(line string) {
	line = safetext.Line(line, 300)
	if !p.tty {
		fmt.Fprintln(p.w, line)
		return
	}
	fmt.Fprintf(p.w, "\r\033[K%s\n%s", line, p.status)
}

func (p *progressBar) finish() {
	if p.tty && p.status != "" {
		fmt.Fprint(p.w, "\r\033[K")
	}
	p.status = ""
}
