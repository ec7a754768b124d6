// Package ctxio makes long copies notice cancellation.
package ctxio

import (
	"context"
	"io"
)

// Reader reads r until ctx is done, checked between reads.
func Reader(ctx context.Context, r io.Reader) io.Reader { return reader{ctx, r} }

type reader struct {
	ctx context.Context
	r   io.Reader
}

func (c reader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
