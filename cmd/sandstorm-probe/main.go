// Command sandstorm-probe prints the fingerprint of the sandbox it runs in
// (see package probe). The conformance suite runs it in the test image.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/sandstorm-dev/sandstorm/runtime/conformance/probe"
)

func main() {
	var p probe.Paths
	list := func(dst *[]string) func(string) error {
		return func(s string) error {
			*dst = strings.Split(s, ",")
			return nil
		}
	}
	flag.Func("mounts", "comma-separated mount `points` to report", list(&p.Mounts))
	flag.Func("masked", "comma-separated `paths` that must be masked", list(&p.Masked))
	flag.Func("readonly", "comma-separated `paths` that must be read-only", list(&p.ReadOnly))
	status := flag.Bool("status", false, "print only the capability sets, NoNewPrivs and Seccomp, as KEY=VALUE lines")
	flag.Parse()
	if *status {
		kvs, err := probe.Status()
		if err != nil {
			fmt.Fprintln(os.Stderr, "sandstorm-probe:", err)
			os.Exit(1)
		}
		for _, kv := range kvs {
			fmt.Printf("%s=%s\n", kv[0], kv[1])
		}
		return
	}
	if err := probe.Write(os.Stdout, p); err != nil {
		fmt.Fprintln(os.Stderr, "sandstorm-probe:", err)
		os.Exit(1)
	}
}
