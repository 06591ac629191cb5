//go:build !linux

package main

import (
	"errors"
	"os"
)

// Elsewhere than Linux the password is read from standard input as a
// line: pipe it in (printf '%s\n' "$PASSWORD" | relay46 passwd).
func isTerminal(*os.File) bool { return false }

func readNoEcho(*os.File) ([]byte, error) { return nil, errors.New("no terminal support") }
