package testimage

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/images/imagetar"
)

// writeELF writes a minimal 64-bit ELF whose only program header has the
// given type, enough for debug/elf to parse.
func writeELF(t *testing.T, progType elf.ProgType) string {
	t.Helper()
	const ehsize, phsize = 64, 56
	interp := []byte("/lib64/ld-linux-x86-64.so.2\x00")
	hdr := elf.Header64{
		Type:      uint16(elf.ET_EXEC),
		Machine:   uint16(elf.EM_X86_64),
		Version:   uint32(elf.EV_CURRENT),
		Phoff:     ehsize,
		Ehsize:    ehsize,
		Phentsize: phsize,
		Phnum:     1,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	prog := elf.Prog64{
		Type:   uint32(progType),
		Off:    ehsize + phsize,
		Filesz: uint64(len(interp)),
		Memsz:  uint64(len(interp)),
	}
	var b bytes.Buffer
	if err := binary.Write(&b, binary.LittleEndian, hdr); err != nil {
		t.Fatal(err)
	}
	if err := binary.Write(&b, binary.LittleEndian, prog); err != nil {
		t.Fatal(err)
	}
	b.Write(interp)
	p := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(p, b.Bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckStatic(t *testing.T) {
	if err := CheckStatic(writeELF(t, elf.PT_LOAD)); err != nil {
		t.Errorf("static ELF rejected: %v", err)
	}
	err := CheckStatic(writeELF(t, elf.PT_INTERP))
	if err == nil || !strings.Contains(err.Error(), "busybox-static") || !strings.Contains(err.Error(), "/lib64/ld-linux-x86-64.so.2") {
		t.Errorf("dynamic ELF: err %v, want one naming the interpreter and busybox-static", err)
	}
	script := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := CheckStatic(script); err == nil || !strings.Contains(err.Error(), "busybox-static") {
		t.Errorf("non-ELF: err %v, want one mentioning busybox-static", err)
	}
	if err := CheckStatic(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing file: want error")
	}
}

func TestBuildRootfsRejectsDynamicBusybox(t *testing.T) {
	err := BuildRootfs(context.Background(), t.TempDir(), writeELF(t, elf.PT_INTERP))
	if err == nil || !strings.Contains(err.Error(), "busybox-static") {
		t.Errorf("err %v, want the busybox-static hint", err)
	}
}

// needBusybox skips unless the host has the static busybox the image needs
// (Debian's busybox-static).
func needBusybox(t *testing.T) {
	t.Helper()
	if err := CheckStatic(DefaultBusybox); err != nil {
		t.Skipf("no static busybox: %v", err)
	}
}

func TestImageLayer(t *testing.T) {
	needBusybox(t)
	ctx := context.Background()
	dir := t.TempDir()
	if err := BuildRootfs(ctx, dir, ""); err != nil {
		t.Fatal(err)
	}
	applets, err := Applets(ctx, DefaultBusybox)
	if err != nil {
		t.Fatal(err)
	}

	var layer bytes.Buffer
	if err := Layer(dir).WriteTar(ctx, &layer); err != nil {
		t.Fatal(err)
	}
	got := make(map[string]*tar.Header)
	contents := make(map[string]string)
	tr := tar.NewReader(&layer)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		got[h.Name] = h
		contents[h.Name] = string(b)
	}

	type want struct {
		typ      byte
		mode     int64
		uid, gid int
	}
	for name, w := range map[string]want{
		"bin/":        {tar.TypeDir, 0o755, 0, 0},
		"bin/busybox": {tar.TypeReg, 0o755, 0, 0},
		"etc/":        {tar.TypeDir, 0o755, 0, 0},
		"etc/passwd":  {tar.TypeReg, 0o644, 0, 0},
		"etc/group":   {tar.TypeReg, 0o644, 0, 0},
		"tmp/":        {tar.TypeDir, 0o1777, 0, 0},
		"home/user/":  {tar.TypeDir, 0o755, UserUID, UserGID},
		"proc/":       {tar.TypeDir, 0o755, 0, 0},
		"sys/":        {tar.TypeDir, 0o755, 0, 0},
		"dev/":        {tar.TypeDir, 0o755, 0, 0},
	} {
		h := got[name]
		if h == nil {
			t.Errorf("%s missing", name)
			continue
		}
		if h.Typeflag != w.typ || h.Mode != w.mode || h.Uid != w.uid || h.Gid != w.gid {
			t.Errorf("%s: type %c mode %o owner %d:%d, want %c %o %d:%d", name, h.Typeflag, h.Mode, h.Uid, h.Gid, w.typ, w.mode, w.uid, w.gid)
		}
	}
	for _, a := range append(applets, "sh", "echo") {
		h := got["bin/"+a]
		if h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
			t.Errorf("bin/%s: %+v, want symlink to busybox", a, h)
		}
	}
	if !strings.Contains(contents["etc/passwd"], "user:x:1000:1000:user:/home/user:/bin/sh\n") ||
		!strings.HasPrefix(contents["etc/passwd"], "root:x:0:0:") {
		t.Errorf("etc/passwd = %q", contents["etc/passwd"])
	}
	if contents["etc/group"] != "root:x:0:\nuser:x:1000:\n" {
		t.Errorf("etc/group = %q", contents["etc/group"])
	}
}

func TestWriteDeterministic(t *testing.T) {
	needBusybox(t)
	var a, b bytes.Buffer
	if err := writeImage(context.Background(), &a, ""); err != nil {
		t.Fatal(err)
	}
	if err := writeImage(context.Background(), &b, ""); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two builds of the test image differ")
	}
	if !bytes.Contains(a.Bytes(), []byte(`"io.containerd.image.name":"`+Ref+`"`)) {
		t.Error("image tar does not name " + Ref)
	}
}

func TestConfig(t *testing.T) {
	c := Config()
	if len(c.Env) != 1 || c.Env[0] != "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" ||
		len(c.Cmd) != 1 || c.Cmd[0] != "/bin/sh" || c.WorkingDir != "/home/user" {
		t.Errorf("Config() = %+v", c)
	}
}

// writeImage builds the rootfs in a temporary directory and writes the image
// tar for Ref to w.
func writeImage(ctx context.Context, w io.Writer, busybox string) (err error) {
	dir, err := os.MkdirTemp("", "sandstorm-testimage-*")
	if err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	defer func() {
		err = errors.Join(err, os.RemoveAll(dir))
	}()
	if err := BuildRootfs(ctx, dir, busybox); err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	if err := imagetar.WriteRefs(ctx, w, []string{Ref}, Config(), Layer(dir)); err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	return nil
}
