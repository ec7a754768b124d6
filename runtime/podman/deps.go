package podman

import (
	_ "github.com/moby/moby/client"
	_ "go.podman.io/podman/v6/pkg/bindings"
	_ "go.podman.io/podman/v6/pkg/bindings/containers"
	_ "go.podman.io/podman/v6/pkg/bindings/images"
	_ "go.podman.io/podman/v6/pkg/specgen"
)
