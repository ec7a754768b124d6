package podman

import "fmt"

// idRange maps size ids starting at container to ids starting at host, as
// /etc/subuid ranges do for a rootless service's user namespace.
type idRange struct {
	container, host, size int
}

// hostID is the host id the service's user namespace gives container id
// id. A service without ranges (root, no user namespace) keeps ids as they are.
func hostID(ranges []idRange, id int) (int, error) {
	if len(ranges) == 0 {
		return id, nil
	}
	for _, r := range ranges {
		if id >= r.container && id < r.container+r.size {
			return r.host + id - r.container, nil
		}
	}
	return 0, fmt.Errorf("id %d is outside the service's user namespace mapping %v", id, ranges)
}
