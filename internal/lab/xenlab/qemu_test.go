package xenlab

import (
	"bytes"
	"encoding/base64"
	"net/url"
	"strings"
	"testing"
	"time"
)

// bootSector is a 512-byte x86 boot sector: it writes itself to LBA 256
// (byte 128 KiB, CBT block 2) with the BIOS's extended write, prints
// FERRY-BOOT-OK on COM1 and halts.
func bootSector() []byte {
	code := []byte{
		0xFA,       // cli
		0x31, 0xC0, // xor ax,ax
		0x8E, 0xD8, // mov ds,ax
		0x8E, 0xC0, // mov es,ax
		0x8E, 0xD0, // mov ss,ax
		0xBC, 0x00, 0x7C, // mov sp,0x7c00
		0xFB,             // sti
		0xBE, 0x28, 0x7C, // mov si,dap
		0xB4, 0x43, // mov ah,0x43
		0xB0, 0x00, // mov al,0
		0xCD, 0x13, // int 0x13
		0xBE, 0x38, 0x7C, // mov si,msg
		0xBA, 0xF8, 0x03, // mov dx,0x3f8
		0xAC,       // next: lodsb
		0x84, 0xC0, // test al,al
		0x74, 0x03, // jz done
		0xEE,       // out dx,al
		0xEB, 0xF8, // jmp next
		0xFA,       // done: cli
		0xF4,       // hlt
		0xEB, 0xFC, // jmp done
		// dap at 0x28: size 16, 1 sector from 0000:7C00 to LBA 256
		0x10, 0x00, 0x01, 0x00, 0x00, 0x7C, 0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0,
	}
	b := make([]byte, 512)
	copy(b, code)
	copy(b[0x38:], "FERRY-BOOT-OK\r\n\x00")
	b[510], b[511] = 0x55, 0xAA
	return b
}

func TestQEMUBoot(t *testing.T) {
	qemu := FindQEMU()
	if qemu == "" {
		t.Skip("qemu-system-x86_64 not installed (Debian package qemu-system-x86)")
	}
	l := newLab(t, "", func(o *Options) { o.QEMU, o.ShutdownTimeout = qemu, 300*time.Millisecond })
	const size = 4 << 20
	vm := l.mkVM("guest")
	vdi := l.mkVDI("boot", size)
	img := make([]byte, size)
	copy(img, bootSector())
	l.importRaw(vdi, img)
	l.attach(vm, vdi, "0", true)
	l.mustCall(nil, "VDI.enable_cbt", vdi)
	var s0 string
	l.mustCall(&s0, "VDI.snapshot", vdi, map[string]any{})

	l.mustCall(nil, "VM.start", vm, false, false)
	if l.sameFile(vdi, s0) {
		t.Error("the guest writes a disk that shares its file with a snapshot")
	}
	deadline := time.Now().Add(60 * time.Second)
	var console string
	for !strings.Contains(console, "FERRY-BOOT-OK") {
		if time.Now().After(deadline) {
			t.Fatalf("no boot message; console:\n%s", console)
		}
		time.Sleep(50 * time.Millisecond)
		_, b := l.get("/console", url.Values{"vm": {vm}})
		console = string(b)
	}
	// the guest ignores the ACPI button: clean_shutdown kills it after the
	// timeout
	l.mustCall(nil, "VM.clean_shutdown", vm)
	var st string
	l.field("VM", vm, "power_state", &st)
	if st != "Halted" {
		t.Fatalf("power state %s after clean_shutdown", st)
	}
	var s1 string
	l.mustCall(&s1, "VDI.snapshot", vdi, map[string]any{})
	var b64 string
	l.mustCall(&b64, "VDI.list_changed_blocks", s0, s1)
	bm, _ := base64.StdEncoding.DecodeString(b64)
	for i := int64(0); i < size/cbtBlock; i++ {
		if bitmap(bm).has(i) != (i == 2) {
			t.Errorf("block %d changed %v; the guest wrote block 2 only", i, bitmap(bm).has(i))
		}
	}
	data := l.exportRaw(vdi)
	if !bytes.Equal(data[128<<10:128<<10+512], bootSector()) {
		t.Error("the guest's write is not in the VDI")
	}
}
