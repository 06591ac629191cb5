// Package e2e holds relay46's end-to-end tests. They run the built
// binary, as a user would, against real peers:
//
//   - TestTopology builds the real topology out of network namespaces: an
//     IPv4-only client, the dual-stack relay and an IPv6-only home running
//     nginx, with Pebble playing Let's Encrypt on the IPv4 side. It needs
//     root (ip netns) and prints what it proves as it goes.
//
//   - TestSoak runs one relay46 on loopback for a few minutes under mixed
//     legitimate and hostile traffic with periodic reloads, checks every
//     byte end to end, and compares open files, memory and goroutines at
//     the start and the end.
//
// Run them with make e2e (both, the soak for 2 minutes), make soak
// (SOAK=1h for an hour), or directly:
//
//	go test -v -run Topology ./e2e
//	RELAY46_SOAK=10m go test -v -timeout 15m -run Soak ./e2e
//
// RELAY46_BIN, when set, is the relay46 binary to test instead of one
// built from this module.
//
// There is no non-test code here; this file only documents the package.
package e2e
