package upstream_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"

	"github.com/relay46/relay46/config"
	"github.com/relay46/relay46/upstream"
)

// A home pushes an address of its /64; the route uses the prefix with the
// server's fixed interface identifier, on 443 and (for :80) on 80.
func ExampleRegistry_Push() {
	storage, _ := os.MkdirTemp("", "relay46-example")
	defer os.RemoveAll(storage)
	cfg, err := config.Parse("relay46.yaml", []byte(`
acme: {storage: "`+storage+`"}
updates: {listen: ":8053"}
routes:
  - name: misskey
    hosts: [misskey.example.com]
    allowed_prefixes: ["2001:db8::/32"]
    upstreams: [{prefix_from: update, interface_id: "::2:64"}]
    update: {password_hash: "$2a$04$CxYMXcbBZyF/ZWnMnoOGMeP3aa/tyHipHddd0LJNMU34d9FNHsSL2"}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	reg := upstream.NewRegistry(upstream.Options{})
	defer reg.Close()
	routes, _ := reg.Apply(cfg)
	ctx := context.Background()

	res, err := reg.Push(ctx, "misskey", netip.MustParseAddr("2001:db8:1200:3400:9c1d:2f0e:aa07:5b31"), "ddclient")
	fmt.Println(res == upstream.PushChanged, err)
	tls, _ := routes["misskey"].Main.Candidates(ctx)
	http, _ := routes["misskey"].HTTP.Candidates(ctx)
	fmt.Println(tls, http)

	_, err = reg.Push(ctx, "misskey", netip.MustParseAddr("2001:db9::1"), "ddclient")
	fmt.Println(err)
	// Output:
	// true <nil>
	// [[2001:db8:1200:3400::2:64]:443] [[2001:db8:1200:3400::2:64]:80]
	// address refused: 2001:db9::2:64 is outside allowed_prefixes
}
