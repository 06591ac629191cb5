package deploy

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/relay46/relay46/config"
)

type composeFile struct {
	Name     string                    `yaml:"name"`
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Build struct {
		Context string            `yaml:"context"`
		Args    map[string]string `yaml:"args"`
	} `yaml:"build"`
	Image           string   `yaml:"image"`
	NetworkMode     string   `yaml:"network_mode"`
	Ports           []string `yaml:"ports"`
	Restart         string   `yaml:"restart"`
	ReadOnly        bool     `yaml:"read_only"`
	CapDrop         []string `yaml:"cap_drop"`
	CapAdd          []string `yaml:"cap_add"`
	SecurityOpt     []string `yaml:"security_opt"`
	Sysctls         any      `yaml:"sysctls"`
	User            string   `yaml:"user"`
	Tmpfs           []string `yaml:"tmpfs"`
	Volumes         []string `yaml:"volumes"`
	StopGracePeriod string   `yaml:"stop_grace_period"`
	Healthcheck     struct {
		Test        []string `yaml:"test"`
		Interval    string   `yaml:"interval"`
		Timeout     string   `yaml:"timeout"`
		StartPeriod string   `yaml:"start_period"`
		Retries     int      `yaml:"retries"`
	} `yaml:"healthcheck"`
	Ulimits map[string]any `yaml:"ulimits"`
	Logging map[string]any `yaml:"logging"`
}

func loadCompose(t *testing.T) composeService {
	t.Helper()
	b, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var f composeFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true) // a misspelt key fails here, as `docker compose config` would
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	svc, ok := f.Services["relay46"]
	if len(f.Services) != 1 || !ok {
		t.Fatalf("services %v, want relay46", f.Services)
	}
	if _, ok := f.Volumes["relay46-data"]; !ok {
		t.Errorf("no named volume relay46-data")
	}
	return svc
}

// TestCompose checks the compose file against the Dockerfile and the
// config defaults it depends on.
func TestCompose(t *testing.T) {
	svc := loadCompose(t)
	if svc.NetworkMode != "host" || len(svc.Ports) > 0 {
		t.Errorf("network_mode %q, ports %v: want host networking (IPv6 egress, real client addresses) and no ports", svc.NetworkMode, svc.Ports)
	}
	if svc.Sysctls != nil {
		t.Errorf("sysctls: Docker refuses net.* sysctls with host networking")
	}
	if svc.Restart != "unless-stopped" || !svc.ReadOnly {
		t.Errorf("restart %q read_only %v", svc.Restart, svc.ReadOnly)
	}
	if !slices.Equal(svc.CapDrop, []string{"ALL"}) || !slices.Equal(svc.CapAdd, []string{"NET_BIND_SERVICE"}) {
		t.Errorf("cap_drop %v cap_add %v: want [ALL] and [NET_BIND_SERVICE], the file capability's", svc.CapDrop, svc.CapAdd)
	}
	for _, o := range svc.SecurityOpt {
		if strings.HasPrefix(o, "no-new-privileges") && !strings.HasSuffix(o, "false") {
			t.Errorf("security_opt %s makes the image's file capability inert: relay46 could not bind :80/:443", o)
		}
	}
	if svc.User != "" {
		t.Errorf("user %q: the image's 65532 is the one the volume is made for", svc.User)
	}
	if svc.Build.Context != ".." {
		t.Errorf("build context %q, want the repository root", svc.Build.Context)
	}
	if _, err := os.Stat(filepath.Join(svc.Build.Context, "Dockerfile")); err != nil {
		t.Error(err)
	}

	stages := parseDockerfile(t, filepath.Join(repo, "Dockerfile"))
	final := stages[len(stages)-1]
	cmd := execForm(t, final.last("CMD"))
	configDir := filepath.Dir(cmd[len(cmd)-1])
	mounts := map[string]string{}
	for _, v := range svc.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 {
			t.Fatalf("volume %q", v)
		}
		mounts[parts[1]] = v
	}
	if m := mounts[configDir]; !strings.HasPrefix(m, "./") || !strings.HasSuffix(m, ":ro") {
		t.Errorf("the config directory %s (the image's CMD) must be a read-only bind mount of a directory: %q", configDir, m)
	}
	if m := mounts[final.last("VOLUME")]; m != "relay46-data:"+config.DefaultStorage {
		t.Errorf("storage volume %q, want relay46-data on %s", m, config.DefaultStorage)
	}
	hc := final.last("HEALTHCHECK")
	if want := append([]string{"CMD"}, execForm(t, hc[strings.Index(hc, "CMD"):])...); !slices.Equal(svc.Healthcheck.Test, want) {
		t.Errorf("healthcheck %v, want the image's %v", svc.Healthcheck.Test, want)
	}
	if grace, err := time.ParseDuration(svc.StopGracePeriod); err != nil || grace <= config.DefaultShutdownGrace {
		t.Errorf("stop_grace_period %q must exceed shutdown_grace's default %s, or Docker kills open connections", svc.StopGracePeriod, config.DefaultShutdownGrace)
	}
	if !slices.ContainsFunc(svc.Tmpfs, func(s string) bool { return strings.HasPrefix(s, "/tmp") }) {
		t.Errorf("read_only root without a /tmp tmpfs")
	}
}
