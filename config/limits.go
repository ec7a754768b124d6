package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/sandstorm-dev/sandstorm/egress"
	"github.com/sandstorm-dev/sandstorm/images/agentimage"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
	"github.com/sandstorm-dev/sandstorm/webhook"
)

// LimitsEnv names the limits file when no flag does.
const LimitsEnv = "SANDSTORM_CONFIG"

// DefaultLimitsPath is tried last, relative to the working directory.
const DefaultLimitsPath = "config/limits.yaml"

// Limits is limits.yaml: what this host allows every run. Each field's
// json tag is its key and its limits tag how a reload treats it (see
// limitsKey): the keys, the reload's diff, ds serve --help and README's
// example are all read from here.
type Limits struct {
	MaxConcurrentAgents   int    `json:"max_concurrent_agents"`
	CPULimit              Cores  `json:"cpu_limit"`
	MemoryBytes           Bytes  `json:"memory_limit"`
	PidsLimit             int64  `json:"pids_limit"`
	SessionTimeoutSeconds int    `json:"session_timeout_seconds"`
	Image                 string `json:"image" limits:"was=docker_image"`
	// NetworkMode is proxy (default: egress only through the gateway's
	// policy proxy), none (nothing but the model) or bridge (unrestricted).
	NetworkMode string `json:"network_mode"`
	// Egress is the proxy's policy (network_mode: proxy).
	Egress Egress `json:"egress"`
	// Secrets are values the sandbox never sees, by the name of the
	// environment variable that holds a placeholder in the sandbox.
	Secrets Secrets `json:"secrets"`
	// QueueSize requests may wait for a free slot, each at most QueueWaitSeconds.
	QueueSize        int `json:"queue_size"`
	QueueWaitSeconds int `json:"queue_wait_seconds"`
	// MaxBudgetUSD bounds each run's model spend at the gateway (list
	// prices); a request may ask for less. MaxModelRequests and
	// MaxOutputTokens bound its calls and output tokens. 0 is no bound.
	MaxBudgetUSD     float64 `json:"max_budget_usd"`
	MaxModelRequests int     `json:"max_model_requests"`
	MaxOutputTokens  int64   `json:"max_output_tokens"`
	// Isolation is runc (default) or gvisor (see sandbox.Isolation); the
	// backend is opened with it at start.
	Isolation string `json:"isolation" limits:"restart"`
	// AllowUnenforced lists the policy items runs may go without where the
	// backend cannot enforce them (each run's stream says so); any other
	// missing item fails the run closed.
	AllowUnenforced []string `json:"allow_unenforced"`
	// StateDir holds the run store (runs.db) and each run's files; default
	// DefaultStateDir (root) or ~/.local/state/sandstorm.
	StateDir string `json:"state_dir" limits:"restart"`
	// RunRetention is how long a finished run is kept; RunStoreMaxBytes
	// bounds the store (the oldest finished runs go first). The store's
	// upkeep is started with them.
	RunRetention     Days  `json:"run_retention" limits:"restart"`
	RunStoreMaxBytes Bytes `json:"run_store_max_size" limits:"restart"`
	// MaxOutputFiles and MaxOutputBytes bound the files handed back from
	// each run's workspace; over them, the largest are skipped.
	MaxOutputFiles int   `json:"max_output_files"`
	MaxOutputBytes Bytes `json:"max_output_bytes"`
	// WebhookURL, if set, gets every finished run's summary (a request may
	// name its own); the run service is opened with it.
	WebhookURL string `json:"webhook_url" limits:"restart"`
	// WebhookAllow are the internal addresses webhooks may reach (see webhook.Sender.Allow).
	WebhookAllow []netip.Prefix `json:"webhook_allow" limits:"restart"`
	// Pool is ds serve's warm pool.
	Pool Pool `json:"pool"`
	// Source is the file these came from, or "" for built-in defaults.
	Source string `json:"-"`
}

// DefaultLimits are used when no limits file exists.
func DefaultLimits() Limits {
	return Limits{
		MaxConcurrentAgents:   5,
		CPULimit:              2,
		MemoryBytes:           4 << 30,
		PidsLimit:             oci.DefaultPids,
		SessionTimeoutSeconds: 600,
		Image:                 agentimage.Ref,
		NetworkMode:           NetworkProxy,
		QueueSize:             100,
		QueueWaitSeconds:      60,
		Isolation:             string(sandbox.IsolationRunc),
		RunRetention:          Days(7 * 24 * time.Hour),
		RunStoreMaxBytes:      1 << 30,
		MaxOutputFiles:        1000,
		MaxOutputBytes:        100 << 20,
		Pool:                  Pool{Size: 2, MaxRefillConcurrency: 1},
	}
}

// NetworkProxy is the network mode in which the sandbox has only loopback
// and reaches the network through the gateway's egress proxy.
const NetworkProxy = "proxy"

// FindLimits returns the limits file to read: the flag's value, then
// $SANDSTORM_CONFIG, then ./config/limits.yaml if it exists; "" means defaults.
func FindLimits(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv(LimitsEnv); env != "" {
		return env
	}
	if _, err := os.Stat(DefaultLimitsPath); err == nil {
		return DefaultLimitsPath
	}
	return ""
}

// LoadLimits reads path over the defaults; "" gives the defaults.
func LoadLimits(path string) (Limits, []string, error) {
	l := DefaultLimits()
	if path == "" {
		return l, nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return l, nil, fmt.Errorf("%w: limits file: %w", ErrInvalid, err)
	}
	l, warnings, err := ParseLimits(data)
	l.Source = path
	if err != nil {
		return l, warnings, fmt.Errorf("%s: %w", path, err)
	}
	return l, warnings, nil
}

// ParseLimits parses limits.yaml content over the defaults.
func ParseLimits(data []byte) (Limits, []string, error) {
	l := DefaultLimits()
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return l, nil, fmt.Errorf("%w: not valid YAML: %w", ErrInvalid, err)
	}
	if string(j) == "null" {
		return l, nil, nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(j, &raw); err != nil {
		return l, nil, fmt.Errorf("%w: must be a mapping of keys to values", ErrInvalid)
	}
	warnings := unknownKeys(sortedKeys(raw), acceptedKeys())
	fields := reflect.ValueOf(&l).Elem()
	for _, k := range limitsKeys {
		key := k.name
		v, ok := raw[key]
		if old, used := raw[k.was]; used && k.was != "" {
			warnings = append(warnings, fmt.Sprintf("%q is the old name of %q", k.was, k.name))
			if !ok {
				// The new name wins when a file has both.
				key, v, ok = k.was, old, true
			}
		}
		if !ok {
			continue
		}
		if err := json.Unmarshal(v, fields.Field(k.field).Addr().Interface()); err != nil {
			return l, warnings, fmt.Errorf("%w: %s: %s", ErrInvalid, key, describeJSONError(err))
		}
	}
	if _, ok := raw["pool"]; !ok {
		// By default at most half the slots wait warm: the rest stay free
		// for runs that fit no warm sandbox, and for other processes.
		l.Pool.Size = min(l.Pool.Size, l.MaxConcurrentAgents/2)
	}
	return l, warnings, l.Validate()
}

// Cores is a number of CPU cores: 2, 2.5 or "2".
type Cores float64

// UnmarshalJSON leaves c as it is on null, as encoding/json does.
func (c *Cores) UnmarshalJSON(v []byte) error {
	if isNull(v) {
		return nil
	}
	f, err := number(v)
	*c = Cores(f)
	return err
}

// Bytes is a size: "4gb", "512m" or a bare number of bytes.
type Bytes int64

// UnmarshalJSON leaves b as it is on null, as encoding/json does.
func (b *Bytes) UnmarshalJSON(v []byte) error {
	if isNull(v) {
		return nil
	}
	n, err := size(v)
	*b = Bytes(n)
	return err
}

// Days is a duration written as 7 (days), "7d", or "36h".
type Days time.Duration

// UnmarshalJSON leaves d as it is on null, as encoding/json does.
func (d *Days) UnmarshalJSON(v []byte) error {
	if isNull(v) {
		return nil
	}
	n, err := days(v)
	*d = Days(n)
	return err
}

// Pool is limits.yaml's pool block: warm sandboxes kept ready for ds
// serve's requests (each holds one of max_concurrent_agents).
type Pool struct {
	Size                 int `json:"size"`
	MaxRefillConcurrency int `json:"max_refill_concurrency"`
}

// UnmarshalJSON refuses keys the pool block does not have.
func (p *Pool) UnmarshalJSON(v []byte) error {
	type plain Pool
	return strict(v, (*plain)(p))
}

// SecretSource is where a secret's value comes from on the host, and the
// hosts it may go to.
type SecretSource struct {
	FromEnv  string   `json:"from_env,omitempty"`
	FromFile string   `json:"from_file,omitempty"`
	Hosts    []string `json:"hosts"`
}

// Secrets is the secrets block: NAME: {from_env|from_file, hosts}.
type Secrets map[string]SecretSource

func (s *Secrets) UnmarshalJSON(v []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(v, &raw); err != nil {
		return errors.New("must map names to {from_env or from_file, hosts}")
	}
	out := Secrets{}
	for _, name := range sortedKeys(raw) {
		var src SecretSource
		if err := strict(raw[name], &src); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := src.validate(name); err != nil {
			return err
		}
		out[name] = src
	}
	*s = out
	return nil
}

func (s SecretSource) validate(name string) error {
	if !envName(name) {
		return fmt.Errorf("%s: not an environment variable name (A-Z, 0-9, _)", name)
	}
	if (s.FromEnv == "") == (s.FromFile == "") {
		return fmt.Errorf("%s: give exactly one of from_env and from_file", name)
	}
	if len(s.Hosts) == 0 {
		return fmt.Errorf("%s: hosts: name the hosts the secret may go to", name)
	}
	for _, h := range s.Hosts {
		if _, err := egress.ParseHost(h); err != nil {
			return fmt.Errorf("%s: hosts: %w", name, err)
		}
	}
	return nil
}

func envName(s string) bool {
	for i, c := range s {
		if !(c >= 'A' && c <= 'Z' || c == '_' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return s != ""
}

// LoadSecrets reads the secrets' values from the host. An error names the
// secret and where it looked, never a value.
func (l Limits) LoadSecrets() ([]egress.Secret, error) {
	var out []egress.Secret
	names := make([]string, 0, len(l.Secrets))
	for n := range l.Secrets {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		src := l.Secrets[name]
		var value string
		if src.FromEnv != "" {
			value = os.Getenv(src.FromEnv)
			if value == "" {
				return nil, fmt.Errorf("%w: secrets: %s: $%s is not set", ErrInvalid, name, src.FromEnv)
			}
		} else {
			data, err := os.ReadFile(src.FromFile)
			if err != nil {
				return nil, fmt.Errorf("%w: secrets: %s: %w", ErrInvalid, name, err)
			}
			value = strings.TrimSpace(string(data))
		}
		s := egress.Secret{Name: name, Value: value}
		for _, h := range src.Hosts {
			r, _ := egress.ParseHost(h)
			s.Hosts = append(s.Hosts, r)
		}
		out = append(out, s)
	}
	return out, nil
}

// Egress is the egress block: allow, deny, ports, max_bytes.
type Egress egress.Config

func (e *Egress) UnmarshalJSON(v []byte) error {
	var block struct {
		Allow    []string        `json:"allow"`
		Deny     []string        `json:"deny"`
		Ports    []int           `json:"ports"`
		MaxBytes json.RawMessage `json:"max_bytes"`
	}
	if err := strict(v, &block); err != nil {
		return err
	}
	c := egress.Config{Allow: block.Allow, Deny: block.Deny, Ports: block.Ports}
	if !isNull(block.MaxBytes) {
		n, err := size(block.MaxBytes)
		if err != nil {
			return fmt.Errorf("max_bytes: %w", err)
		}
		c.MaxBytes = n
	}
	if _, err := c.Policy(); err != nil {
		return err
	}
	*e = Egress(c)
	return nil
}

// strict decodes v into dst, refusing keys dst does not have and naming
// those it has instead.
func strict(v json.RawMessage, dst any) error {
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		msg := strings.Replace(describeJSONError(err), "json: unknown field", "unknown key", 1)
		return fmt.Errorf("%s (keys: %s)", msg, fieldNames(reflect.TypeOf(dst).Elem()))
	}
	return nil
}

// size accepts "4gb", "512m" or a bare number of bytes.
func size(v json.RawMessage) (int64, error) {
	var s string
	if json.Unmarshal(v, &s) != nil {
		s = string(v)
	}
	return oci.ParseSize(s)
}

// days accepts 7 (days), "7d", or a duration such as "36h".
func days(v json.RawMessage) (time.Duration, error) {
	var n float64
	if json.Unmarshal(v, &n) == nil {
		return time.Duration(n * float64(24*time.Hour)), nil
	}
	var s string
	if json.Unmarshal(v, &s) == nil {
		s = strings.TrimSpace(s)
		if d, ok := strings.CutSuffix(s, "d"); ok {
			if n, err := strconv.ParseFloat(d, 64); err == nil {
				return time.Duration(n * float64(24*time.Hour)), nil
			}
		}
		if d, err := time.ParseDuration(s); err == nil {
			return d, nil
		}
	}
	return 0, errors.New(`must be a number of days, such as 7 or "7d", or a duration such as "36h"`)
}

// number accepts 2, 2.5 or "2".
func number(v json.RawMessage) (float64, error) {
	var f float64
	if json.Unmarshal(v, &f) == nil {
		return f, nil
	}
	var s string
	if json.Unmarshal(v, &s) == nil {
		if f, err := strconv.ParseFloat(strings.TrimSpace(s), 64); err == nil {
			return f, nil
		}
	}
	return 0, errors.New("must be a number of cores, such as 2 or \"0.5\"")
}

// Validate checks every value, naming the key of the first bad one.
func (l Limits) Validate() error {
	bad := func(key, format string, a ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalid, key, fmt.Sprintf(format, a...))
	}
	switch {
	case l.MaxConcurrentAgents < 1 || l.MaxConcurrentAgents > 10000:
		return bad("max_concurrent_agents", "%d is outside 1..10000", l.MaxConcurrentAgents)
	case l.CPULimit < 0.01 || l.CPULimit > 1024:
		return bad("cpu_limit", "%g is outside 0.01..1024", l.CPULimit)
	case l.MemoryBytes < 64<<20:
		return bad("memory_limit", "%d bytes is below 64 MiB (the agent needs more)", l.MemoryBytes)
	case l.PidsLimit < 8:
		return bad("pids_limit", "%d is below 8", l.PidsLimit)
	case l.SessionTimeoutSeconds < 5 || l.SessionTimeoutSeconds > 86400:
		return bad("session_timeout_seconds", "%d is outside 5..86400", l.SessionTimeoutSeconds)
	case l.Image == "":
		return bad("image", "must not be empty")
	case l.NetworkMode != NetworkProxy && l.NetworkMode != string(oci.NetworkNone) && l.NetworkMode != string(oci.NetworkBridge):
		return bad("network_mode", "%q is not one of proxy, none, bridge", l.NetworkMode)
	case l.QueueSize < 0 || l.QueueSize > 100000:
		return bad("queue_size", "%d is outside 0..100000", l.QueueSize)
	case l.QueueWaitSeconds < 0 || l.QueueWaitSeconds > 3600:
		return bad("queue_wait_seconds", "%d is outside 0..3600", l.QueueWaitSeconds)
	}
	switch {
	case l.MaxBudgetUSD < 0:
		return bad("max_budget_usd", "%g is negative", l.MaxBudgetUSD)
	case l.MaxModelRequests < 0:
		return bad("max_model_requests", "%d is negative", l.MaxModelRequests)
	case l.MaxOutputTokens < 0:
		return bad("max_output_tokens", "%d is negative", l.MaxOutputTokens)
	}
	switch {
	case time.Duration(l.RunRetention) < time.Minute:
		return bad("run_retention", "%v is below 1m", time.Duration(l.RunRetention))
	case l.RunStoreMaxBytes < 1<<20:
		return bad("run_store_max_size", "%d bytes is below 1 MiB", l.RunStoreMaxBytes)
	case l.MaxOutputFiles < 0 || l.MaxOutputFiles > 100000:
		return bad("max_output_files", "%d is outside 0..100000", l.MaxOutputFiles)
	case l.MaxOutputBytes < 0:
		return bad("max_output_bytes", "%d is negative", l.MaxOutputBytes)
	case l.Pool.Size < 0 || l.Pool.Size > l.MaxConcurrentAgents:
		return bad("pool.size", "%d is outside 0..max_concurrent_agents (%d): each warm sandbox holds a slot", l.Pool.Size, l.MaxConcurrentAgents)
	case l.Pool.MaxRefillConcurrency < 0 || l.Pool.MaxRefillConcurrency > 64:
		return bad("pool.max_refill_concurrency", "%d is outside 0..64", l.Pool.MaxRefillConcurrency)
	case l.StateDir != "" && !filepath.IsAbs(l.StateDir):
		return bad("state_dir", "%q must be an absolute path", l.StateDir)
	}
	if l.WebhookURL != "" {
		if err := webhook.ValidURL(l.WebhookURL); err != nil {
			return bad("webhook_url", "%v", err)
		}
	}
	if len(l.Secrets) > 0 && l.NetworkMode != NetworkProxy {
		return bad("secrets", "need network_mode: proxy (the proxy puts them in at the boundary)")
	}
	if _, err := sandbox.ParseIsolation(l.Isolation); err != nil {
		return bad("isolation", "%q: choose %s or %s", l.Isolation, sandbox.IsolationRunc, sandbox.IsolationGVisor)
	}
	if _, err := sandbox.ParseItems(l.AllowUnenforced); err != nil {
		return bad("allow_unenforced", "%v", err)
	}
	return nil
}

// Policy is the sandbox policy these limits give.
// sandboxNetwork is the sandbox's own network: in proxy mode, loopback only.
func (l Limits) sandboxNetwork() oci.Network {
	if l.NetworkMode == NetworkProxy {
		return oci.NetworkNone
	}
	return oci.Network(l.NetworkMode)
}

// EgressPolicy is the egress proxy's policy, or nil when the network mode
// has no proxy.
func (l Limits) EgressPolicy() (*egress.Policy, error) {
	if l.NetworkMode != NetworkProxy {
		return nil, nil
	}
	p, err := egress.Config(l.Egress).Policy()
	if err != nil {
		return nil, fmt.Errorf("%w: egress: %w", ErrInvalid, err)
	}
	return &p, nil
}

func (l Limits) Policy() oci.Policy {
	return oci.Policy{
		MemoryBytes: int64(l.MemoryBytes),
		CPUs:        float64(l.CPULimit),
		Pids:        l.PidsLimit,
		Network:     l.sandboxNetwork(),
	}
}
