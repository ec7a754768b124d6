package sandbox

import (
	"os/exec"
	"testing"
)

func TestOwner(t *testing.T) {
	me, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if !me.Alive() {
		t.Errorf("this process %v is not alive", me)
	}
	back, err := ParseOwner(me.String())
	if err != nil || back != me {
		t.Errorf("ParseOwner(%s) = %v, %v", me, back, err)
	}
	// A process that ended, a reused pid, another boot: all dead.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	for _, o := range []Owner{
		{Boot: me.Boot, PID: cmd.Process.Pid, Start: me.Start},
		{Boot: me.Boot, PID: me.PID, Start: me.Start + 1},
		{Boot: "another", PID: me.PID, Start: me.Start},
	} {
		if o.Alive() {
			t.Errorf("%v is alive", o)
		}
	}
	for _, bad := range []string{"", "a.b", "boot.x.1", "boot.1.y", ".1.2"} {
		if _, err := ParseOwner(bad); err == nil {
			t.Errorf("ParseOwner(%q) accepted", bad)
		}
	}
}
