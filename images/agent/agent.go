// Package agent holds the sources of sandstorm's agent image: the pinned
// Claude Agent SDK (package.json, package-lock.json), the runner that runs
// one query inside a sandbox (runner.mjs) and, for hosts with a registry, a
// Containerfile. images/agentimage builds the same image with no registry;
// it reads the sources from Files, so the builder binary is self-contained.
package agent

import "embed"

// Files holds package.json, package-lock.json and runner.mjs.
//
//go:embed package.json package-lock.json runner.mjs
var Files embed.FS

// InstallDir is where the image carries the SDK and the runner.
const InstallDir = "/opt/sandstorm-agent"
