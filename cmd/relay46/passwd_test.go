package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/relay46/relay46/config"
)

func TestPasswd(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := cmdPasswd([]string{"-cost", "10"}, strings.NewReader("correct horse battery staple\n"), &out, &errOut); err != nil {
		t.Fatal(err)
	}
	hash := strings.TrimSpace(out.String())
	if err := bcrypt.CompareHashAndPassword([]byte(hash), []byte("correct horse battery staple")); err != nil {
		t.Fatalf("%q does not check the password: %v", hash, err)
	}
	if cost, _ := bcrypt.Cost([]byte(hash)); cost != 10 {
		t.Errorf("cost %d", cost)
	}
	// The hash is what a route's update: takes.
	_, err := config.Parse("t.yaml", []byte(`
updates: {listen: ":8053"}
routes:
  - name: home
    hosts: [home.example]
    upstreams: [{address_from: update}]
    update: {password_hash: "`+hash+`"}
`))
	if err != nil {
		t.Errorf("config refuses the printed hash: %v", err)
	}
	// Piped in, nothing but the hash is printed.
	if errOut.Len() != 0 || strings.Count(out.String(), "\n") != 1 {
		t.Errorf("stdout %q, stderr %q", out.String(), errOut.String())
	}
}

func TestPasswdRefuses(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		input string
		want  string
	}{
		{nil, "\n", "empty password"},
		{nil, "", "empty password"},
		{nil, strings.Repeat("x", 73) + "\n", "longer than 72 bytes"},
		{[]string{"-cost", "4"}, "pw\n", "usage"},
		{[]string{"extra"}, "pw\n", "usage"},
	} {
		var out, errOut bytes.Buffer
		err := cmdPasswd(tc.args, strings.NewReader(tc.input), &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), tc.want) && !(tc.want == "usage" && errors.Is(err, errUsage)) {
			t.Errorf("cmdPasswd(%q, %q) = %v, want %q", tc.args, tc.input, err, tc.want)
		}
		if out.Len() != 0 {
			t.Errorf("printed %q on an error", out.String())
		}
	}
}
