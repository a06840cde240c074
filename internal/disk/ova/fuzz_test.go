package ova

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

// rawOVA is a tiny OVA around a raw disk member, so that fuzzing spends
// its time in the descriptor parser and the tar indexing rather than in
// a VMDK.
func rawOVA(t testing.TB, mfLast bool) []byte {
	data := make([]byte, 4096)
	copy(data, "a raw disk member")
	copy(data[2048:], "more data")
	ovf := `<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References><File ovf:href="r-disk1.img" ovf:id="file1" ovf:size="4096"/></References>
  <DiskSection><Info>disks</Info><Disk ovf:capacity="4" ovf:capacityAllocationUnits="byte * 2^10" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="raw"/></DiskSection>
  <VirtualSystem ovf:id="r">
    <Info>A virtual machine</Info><Name>r</Name>
    <OperatingSystemSection ovf:id="36" vmw:osType="otherLinux64Guest"><Info>os</Info></OperatingSystemSection>
    <VirtualHardwareSection><Info>hw</Info>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>256</rasd:VirtualQuantity></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>root</rasd:ElementName><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:Address>00:50:56:00:00:01</rasd:Address><rasd:Connection>lan</rasd:Connection><rasd:ElementName>nic</rasd:ElementName><rasd:InstanceID>4</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType></Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`
	sum := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	mf := fmt.Sprintf("SHA256(r.ovf)= %s\nSHA256(r-disk1.img)= %s\n", sum([]byte(ovf)), sum(data))
	ms := []tarMember{{"r.ovf", []byte(ovf)}, {"r.mf", []byte(mf)}, {"r-disk1.img", data}}
	if mfLast {
		ms = []tarMember{ms[0], ms[2], ms[1]}
	}
	return buildTar(t, ms)
}

// ferryOVA is a small OVA from ferry's writer, streamed to a buffer.
func ferryOVA(t testing.TB) []byte {
	pt := &disktest.Pattern{Name: "f", Size: 128 << 10, Seed: 5, Data: []disk.Extent{{Off: 0, Len: 512}, {Off: 64 << 10, Len: 1024}}}
	var b bytes.Buffer
	writeArchive(t, &b, testVM("f", core.BIOS, pt), []*disktest.Pattern{pt}, nil)
	return b.Bytes()
}

func FuzzOpen(f *testing.F) {
	seeds := [][]byte{rawOVA(f, false), rawOVA(f, true), ferryOVA(f)}
	for _, s := range seeds {
		f.Add(s)
		f.Add(s[:len(s)/2])
		f.Add(s[:blockSize+100])
		for _, at := range []int{100, 148, 600, 700, 1200, 1600, 2100} {
			if at < len(s) {
				c := bytes.Clone(s)
				c[at] ^= 0x20
				f.Add(c)
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ctx := context.Background()
		reg := testRegistry()
		file := disk.BytesFile("fuzz.ova", b)
		Format().Probe(file)
		r, err := Format().Open(ctx, file, &archive.OpenOptions{Disks: reg})
		if err != nil {
			if errs.CodeOf(err) == errs.Unknown {
				t.Fatalf("open: error without a code: %v", err)
			}
		} else {
			vm := r.VM()
			r.Info()
			if err := r.Verify(ctx); err != nil && errs.CodeOf(err) == errs.Unknown {
				t.Fatalf("verify: error without a code: %v", err)
			}
			for i := range vm.Disks {
				img, err := r.OpenDisk(ctx, i)
				if err != nil {
					continue
				}
				readAll(t, img)
				img.Close()
			}
			r.Close()
		}
		sr, err := Format().OpenStream(ctx, bytes.NewReader(b), &archive.OpenOptions{Disks: reg})
		if err != nil {
			if errs.CodeOf(err) == errs.Unknown {
				t.Fatalf("open stream: error without a code: %v", err)
			}
			return
		}
		defer sr.Close()
		sr.VM()
		for range 16 {
			_, s, err := sr.NextDisk(ctx)
			if err != nil {
				if !errors.Is(err, io.EOF) && errs.CodeOf(err) == errs.Unknown {
					t.Fatalf("next disk: error without a code: %v", err)
				}
				return
			}
			for range 1 << 12 {
				if _, _, err := s.Next(ctx); err != nil {
					break
				}
			}
		}
	})
}

// readAll reads an image's data extents, at most 16 MiB of them.
func readAll(t *testing.T, img disk.Image) {
	buf := make([]byte, 1<<20)
	budget := int64(16 << 20)
	for e, err := range img.Extents(context.Background(), 0, img.Size()) {
		if err != nil || budget <= 0 {
			return
		}
		if e.Kind != disk.Data {
			continue
		}
		for off := e.Off; off < e.End() && budget > 0; {
			n := min(int64(len(buf)), e.End()-off)
			if _, err := img.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
				return
			}
			off += n
			budget -= n
		}
	}
}
