package agentimage

import "embed"

// Files holds the image's own sources: package.json and package-lock.json
// (the SDK, pinned exactly) and runner.mjs. The Containerfile next to them
// describes the same image for hosts that can pull a base image. What the
// host and the runner say to each other is package runnerproto.
//
//go:embed package.json package-lock.json runner.mjs
var Files embed.FS

// InstallDir is where the image carries the SDK and the runner.
const InstallDir = "/opt/sandstorm-agent"

// RunnerCommand starts the runner under tini: as PID 1 it reaps the orphans
// agent tools leave behind (they would count against the pids limit) and
// forwards signals to the runner. It is also the image's own command.
func RunnerCommand() []string {
	return []string{"tini", "--", "node", InstallDir + "/runner.mjs"}
}
