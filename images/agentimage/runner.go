package agentimage

import "embed"

// Files holds the image's own sources: package.json and package-lock.json
// (the SDK, pinned exactly) and runner.mjs. The Containerfile next to them
// describes the same image for hosts that can pull a base image.
//
//go:embed package.json package-lock.json runner.mjs
var Files embed.FS

// What the host side and the runner inside the image agree on.
const (
	// InstallDir is where the image carries the SDK and the runner.
	InstallDir = "/opt/sandstorm-agent"
	// MountDir is where the runner finds its gateway session directory
	// (the socket that serves the model and the run's config).
	MountDir = "/run/sandstorm"
	// TokenEnv passes the gateway session token to the runner.
	TokenEnv = "SANDSTORM_MODEL_TOKEN"
	// GatewayAddrEnv, for a sandbox on another host, is the gateway's TCP
	// address (host:port); GatewayCAEnv the PEM of the CA its TLS
	// certificate is verified with; GatewayEgressEnv=1 says the session has
	// an egress proxy there, EgressCAEnv the PEM of the CA it intercepts with.
	GatewayAddrEnv   = "SANDSTORM_GATEWAY_ADDR"
	GatewayCAEnv     = "SANDSTORM_GATEWAY_CA"
	GatewayEgressEnv = "SANDSTORM_GATEWAY_EGRESS"
	EgressCAEnv      = "SANDSTORM_EGRESS_CA"
	// WaitEnv=1 makes the runner of a warm sandbox wait for its config as
	// long as it takes (the gateway answers when a request claims it).
	WaitEnv = "SANDSTORM_RUNNER_WAIT"
)

// RunnerCommand starts the runner under tini: as PID 1 it reaps the orphans
// agent tools leave behind (they would count against the pids limit) and
// forwards signals to the runner. It is also the image's own command.
func RunnerCommand() []string {
	return []string{"tini", "--", "node", InstallDir + "/runner.mjs"}
}
