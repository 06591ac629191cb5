// Command relay46 is an IPv4 front door for servers that live on IPv6: it
// accepts :80 and :443 and relays them by Host and SNI to a home's IPv6
// address, passing TLS through or terminating it.
//
//	relay46 run -config /etc/relay46/relay46.yaml
//	relay46 check -config relay46.yaml
//	relay46 demo
//	relay46 health
//	relay46 reload
//	relay46 version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

const usage = `relay46: an IPv4 front door for servers on IPv6

Usage:
  relay46 run -config FILE     relay as configured (also: relay46 -config FILE)
  relay46 check -config FILE   validate a config file and explain what it does
  relay46 demo                 run a self-contained demonstration on loopback
  relay46 health               exit 0 if the running relay answers on its admin listener
  relay46 reload               make the running relay reload its config (like SIGHUP)
  relay46 passwd               print a password hash for a route's update: credentials
  relay46 version              print the version

Run "relay46 COMMAND -h" for a command's flags.
`

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return realMainCtx(ctx, args, stdout, stderr)
}

// realMainCtx runs a command until ctx is done and returns the exit code.
func realMainCtx(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = cmdRun(ctx, args, stderr)
	case "check":
		err = cmdCheck(args, stdout)
	case "demo":
		err = cmdDemo(ctx, args, stdout, stderr)
	case "health":
		err = cmdHealth(ctx, args, stdout, stderr)
	case "reload":
		err = cmdReload(ctx, args, stdout, stderr)
	case "passwd":
		err = cmdPasswd(args, os.Stdin, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, versionString())
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "relay46: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	fmt.Fprintf(stderr, "relay46 %s: %v\n", cmd, err)
	return 1
}

var errUsage = errors.New("usage")

func versionString() string {
	commit := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				commit = s.Value
			}
		}
	}
	return fmt.Sprintf("relay46 %s (commit %s, %s)", version, commit, goVersion())
}

func goVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.GoVersion
	}
	return "unknown"
}

// newFlags returns a FlagSet that reports errors instead of exiting.
func newFlags(name string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("relay46 "+name, flag.ContinueOnError)
	fs.SetOutput(out)
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected arguments: %v\n", fs.Args())
		return errUsage
	}
	return nil
}
