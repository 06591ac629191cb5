// Package leaktest fails a package's tests when goroutines running that
// package's code outlive them. It is for TestMain in _test.go files:
//
//	func TestMain(m *testing.M) { leaktest.Main(m, "relay46/proxy.", "the proxy") }
package leaktest

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Main runs the tests and, if they passed, waits up to 3 seconds for every
// goroutine whose stack mentions marker (other than the tests themselves)
// to end; those left make the run fail. It exits the process.
func Main(m *testing.M, marker, what string) {
	code := m.Run()
	if code == 0 {
		if leaked := Leaked(marker, 3*time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines leaked by %s:\n%s\n", what, leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// Leaked waits up to d for goroutines running code that matches marker to
// end, and returns the stacks of those that did not.
func Leaked(marker string, d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, marker) && !strings.Contains(g, "testing.") && !strings.Contains(g, "leaktest.") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
