package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/crypto/bcrypt"
)

// maxPasswordCost bounds -cost: every update is checked against the hash,
// and each step doubles the work.
const maxPasswordCost = 14

// cmdPasswd prints the bcrypt hash of a password, for a route's
// update: password_hash. The password is asked twice on the terminal,
// without echo, or read as the first line of standard input:
//
//	relay46 passwd
//	printf '%s\n' "$PASSWORD" | relay46 passwd
func cmdPasswd(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlags("passwd", stderr)
	cost := fs.Int("cost", bcrypt.DefaultCost, fmt.Sprintf("bcrypt cost, %d to %d", bcrypt.DefaultCost, maxPasswordCost))
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *cost < bcrypt.DefaultCost || *cost > maxPasswordCost {
		fmt.Fprintf(stderr, "relay46 passwd: -cost must be from %d to %d\n", bcrypt.DefaultCost, maxPasswordCost)
		return errUsage
	}
	pw, tty, err := readPassword(stdin, stderr)
	if err != nil {
		return err
	}
	switch {
	case len(pw) == 0:
		return errors.New("empty password")
	case len(pw) > 72:
		return errors.New("longer than 72 bytes, which is all bcrypt uses: choose a shorter one")
	}
	h, err := bcrypt.GenerateFromPassword(pw, *cost)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, string(h))
	if tty {
		fmt.Fprintf(stderr, "Put it in the route's config:\n    update: {username: NAME, password_hash: %q}\nand give the password to the home's dyndns2 client (ddclient, inadyn, the router).\n", h)
	}
	return nil
}

// readPassword asks on the terminal when stdin is one, else reads a line.
func readPassword(stdin io.Reader, prompt io.Writer) (pw []byte, tty bool, err error) {
	if f, ok := stdin.(*os.File); ok && isTerminal(f) {
		fmt.Fprint(prompt, "Password: ")
		pw, err := readNoEcho(f)
		fmt.Fprintln(prompt)
		if err != nil {
			return nil, true, err
		}
		fmt.Fprint(prompt, "Again: ")
		again, err := readNoEcho(f)
		fmt.Fprintln(prompt)
		if err != nil {
			return nil, true, err
		}
		if !bytes.Equal(pw, again) {
			return nil, true, errors.New("the passwords differ")
		}
		return pw, true, nil
	}
	line, err := bufio.NewReader(stdin).ReadBytes('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, false, err
	}
	return bytes.TrimRight(line, "\r\n"), false, nil
}
