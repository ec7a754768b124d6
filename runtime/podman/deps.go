package podman

// Placeholder so go.mod/go.sum carry the backends' modules; the Podman
// backend helper deletes this file once real code imports them.
import (
	_ "github.com/moby/moby/api/pkg/stdcopy"
	_ "github.com/moby/moby/api/types/container"
	_ "github.com/moby/moby/api/types/mount"
	_ "github.com/moby/moby/api/types/network"
	_ "github.com/moby/moby/client"
	_ "go.podman.io/podman/v6/pkg/bindings"
	_ "go.podman.io/podman/v6/pkg/bindings/containers"
	_ "go.podman.io/podman/v6/pkg/bindings/images"
	_ "go.podman.io/podman/v6/pkg/bindings/system"
	_ "go.podman.io/podman/v6/pkg/domain/entities"
	_ "go.podman.io/podman/v6/pkg/specgen"
)
