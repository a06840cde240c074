package ova

import (
	"archive/tar"
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// TestQemuReadsFerry writes every standard pattern into an OVA and has
// qemu-img read the VMDK member taken out of it.
func TestQemuReadsFerry(t *testing.T) {
	disktest.QemuImg(t)
	for _, pt := range disktest.Patterns(testing.Short()) {
		t.Run(pt.Name, func(t *testing.T) {
			dir := t.TempDir()
			vm := testVM("q-"+pt.Name, core.BIOS, pt)
			path := writeFile(t, dir, vm, []*disktest.Pattern{pt}, nil)
			r := openFile(t, path)
			if err := r.Verify(t.Context()); err != nil {
				t.Fatalf("verify: %v", err)
			}
			img, err := r.OpenDisk(t.Context(), 0)
			if err != nil {
				t.Fatalf("open disk: %v", err)
			}
			verifyQemuImage(t, img, pt)
			img.Close()
			if pt.Size == 0 {
				// qemu 7.2 opens no streamOptimized VMDK of 0 sectors
				// ("Unsupported image type"), its own included
				return
			}
			vmdkPath := extract(t, path, vm.Name+"-disk1.vmdk", dir)
			qi := disktest.QemuInfoOf(t, vmdkPath, "")
			if qi.Format != "vmdk" || qi.VirtualSize != pt.Size {
				t.Fatalf("qemu-img info: format %s size %d, want vmdk %d", qi.Format, qi.VirtualSize, pt.Size)
			}
			if st, _ := qi.Specific.Data["create-type"].(string); st != "streamOptimized" {
				t.Fatalf("qemu-img info: create type %q", st)
			}
			rawPath := filepath.Join(dir, "want.raw")
			disktest.WriteRaw(t, pt, rawPath)
			disktest.Qemu(t, "compare", "-f", "vmdk", "-F", "raw", vmdkPath, rawPath)
			disktest.Qemu(t, "check", "-f", "vmdk", vmdkPath)
		})
	}
}

// TestFerryReadsQemu wraps qemu-img's streamOptimized VMDKs in an OVA
// written the way VirtualBox writes one (its namespaces, a vbox:Machine
// section, IDE disks, the SHA-1 manifest last) and reads it, from the
// file and as a stream.
func TestFerryReadsQemu(t *testing.T) {
	disktest.QemuImg(t)
	for _, pt := range disktest.Patterns(testing.Short()) {
		t.Run(pt.Name, func(t *testing.T) {
			ctx := t.Context()
			if pt.Size == 0 {
				t.Skip("qemu-img 7.2 cannot write a streamOptimized VMDK of 0 sectors")
			}
			vmdkPath := disktest.QemuMake(t, pt, "vmdk", "subformat=streamOptimized")
			vmdkBytes, err := os.ReadFile(vmdkPath)
			if err != nil {
				t.Fatal(err)
			}
			ova := vboxOVA(t, "vbox-vm", core.UEFI, pt.Size, vmdkBytes)
			path := filepath.Join(t.TempDir(), "vbox.ova")
			if err := os.WriteFile(path, ova, 0o644); err != nil {
				t.Fatal(err)
			}
			r := openFile(t, path)
			vm := r.VM()
			want := core.VMSpec{
				Name: "vbox-vm", CPUs: 2, MemoryBytes: 2048 << 20, Firmware: core.UEFI, OSType: "Ubuntu_64",
				Disks: []core.DiskSpec{{Name: "disk1", Size: pt.Size, Bootable: true, Position: 0}},
				NICs:  []core.NICSpec{{Name: "Ethernet adapter on 'NAT'", Network: "NAT"}},
			}
			if fmt.Sprint(vm) != fmt.Sprint(want) {
				t.Fatalf("VM()\n got %+v\nwant %+v", vm, want)
			}
			if err := r.Verify(ctx); err != nil {
				t.Fatalf("verify: %v", err)
			}
			if m := r.Info().Extra["manifest"]; m != "sha1" {
				t.Fatalf("manifest algorithm %v", m)
			}
			img, err := r.OpenDisk(ctx, 0)
			if err != nil {
				t.Fatalf("open disk: %v", err)
			}
			defer img.Close()
			verifyQemuImage(t, img, pt)

			sr, err := Format().OpenStream(ctx, bytes.NewReader(ova), &archive.OpenOptions{Disks: testRegistry()})
			if err != nil {
				t.Fatalf("open stream: %v", err)
			}
			defer sr.Close()
			i, s, err := sr.NextDisk(ctx)
			if err != nil {
				t.Fatalf("next disk: %v", err)
			}
			if i != 0 {
				t.Fatalf("disk index %d", i)
			}
			verifyStream(t, s, pt)
			if _, _, err := sr.NextDisk(ctx); err != io.EOF {
				t.Fatalf("after the last disk: %v, want io.EOF", err)
			}
		})
	}
}

// vboxOVA builds an OVA the way VirtualBox 6/7 exports one, around a VMDK.
func vboxOVA(t testing.TB, name string, fw core.Firmware, capacity int64, vmdkBytes []byte) []byte {
	t.Helper()
	firmware := "BIOS"
	if fw == core.UEFI {
		firmware = "EFI"
	}
	ovf := fmt.Sprintf(`<?xml version="1.0"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References>
    <File ovf:id="file1" ovf:href="%[1]s-disk001.vmdk"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="%[2]d" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" vbox:uuid="5e5a2d8c-1111-2222-3333-444455556666"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks used in the package</Info>
    <Network ovf:name="NAT">
      <Description>Logical network used by this appliance.</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="%[1]s">
    <Info>A virtual machine</Info>
    <OperatingSystemSection ovf:id="94">
      <Info>The kind of installed guest operating system</Info>
      <Description>Ubuntu_64</Description>
      <vbox:OSType ovf:required="false">Ubuntu_64</vbox:OSType>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>%[1]s</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:Caption>2 virtual CPU</rasd:Caption>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:Caption>2048 MB of memory</rasd:Caption>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>2048 MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>2048</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Caption>ideController0</rasd:Caption>
        <rasd:Description>IDE Controller</rasd:Description>
        <rasd:ElementName>ideController0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>PIIX4</rasd:ResourceSubType>
        <rasd:ResourceType>5</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Caption>Ethernet adapter on 'NAT'</rasd:Caption>
        <rasd:Connection>NAT</rasd:Connection>
        <rasd:ElementName>Ethernet adapter on 'NAT'</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:Caption>disk1</rasd:Caption>
        <rasd:Description>Disk Image</rasd:Description>
        <rasd:ElementName>disk1</rasd:ElementName>
        <rasd:HostResource>/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
    <vbox:Machine ovf:required="false" version="1.19-linux" uuid="{0b8a7f4e-aaaa-bbbb-cccc-ddddeeeeffff}" name="%[1]s" OSType="Ubuntu_64" snapshotFolder="Snapshots">
      <ovf:Info>Complete VirtualBox machine configuration in VirtualBox format</ovf:Info>
      <Hardware>
        <CPU count="2"/>
        <Memory RAMSize="2048"/>
        <Firmware type="%[3]s"/>
        <Network>
          <Adapter slot="0" enabled="true" MACAddress="080027C0FFEE" type="82540EM">
            <NAT/>
          </Adapter>
        </Network>
      </Hardware>
    </vbox:Machine>
  </VirtualSystem>
</Envelope>
`, name, capacity, firmware)
	disk := name + "-disk001.vmdk"
	sum := func(b []byte) string { s := sha1.Sum(b); return hex.EncodeToString(s[:]) }
	mf := fmt.Sprintf("SHA1 (%s.ovf) = %s\nSHA1 (%s) = %s\n", name, sum([]byte(ovf)), disk, sum(vmdkBytes))
	return buildTar(t, []tarMember{{name + ".ovf", []byte(ovf)}, {disk, vmdkBytes}, {name + ".mf", []byte(mf)}})
}

type tarMember struct {
	name string
	data []byte
}

// buildTar writes members with Go's archive/tar (ustar, PAX if needed),
// as another tool would.
func buildTar(t testing.TB, ms []tarMember) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, m := range ms {
		if err := tw.WriteHeader(&tar.Header{Name: m.name, Mode: 0o644, Size: int64(len(m.data)), Typeflag: tar.TypeReg, Format: tar.FormatUSTAR}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(m.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestMemberOrderAndManifest checks the member order with GNU tar and
// archive/tar, and the manifest against sha256sum/sha1sum of the
// extracted members.
func TestMemberOrderAndManifest(t *testing.T) {
	pts := roundTripPatterns()
	for _, alg := range []string{"sha256", "sha1"} {
		for _, how := range []string{"file", "pipe"} {
			t.Run(alg+"/"+how, func(t *testing.T) {
				dir := t.TempDir()
				vm := testVM("order", core.BIOS, pts...)
				write := writeFile
				if how == "pipe" {
					write = writePipe
				}
				path := write(t, dir, vm, pts, map[string]string{"manifest": alg})
				want := []string{"order.ovf", "order.mf", "order-disk1.vmdk", "order-disk2.vmdk"}
				var got []string
				for _, h := range members(t, path) {
					if h.Typeflag != tar.TypeReg || h.Format&(tar.FormatUSTAR|tar.FormatPAX) == 0 {
						t.Fatalf("member %s: type %q format %v", h.Name, h.Typeflag, h.Format)
					}
					got = append(got, h.Name)
				}
				if strings.Join(got, " ") != strings.Join(want, " ") {
					t.Fatalf("archive/tar lists %v, want %v", got, want)
				}
				if tarBin, err := exec.LookPath("tar"); err == nil {
					out, err := exec.CommandContext(t.Context(), tarBin, "tf", path).CombinedOutput()
					if err != nil {
						t.Fatalf("tar tf: %v\n%s", err, out)
					}
					if strings.Fields(string(out))[0] != "order.ovf" || strings.Join(strings.Fields(string(out)), " ") != strings.Join(want, " ") {
						t.Fatalf("tar tf lists %q", out)
					}
				}
				xdir := filepath.Join(dir, "x")
				os.Mkdir(xdir, 0o755)
				for _, n := range want {
					extract(t, path, n, xdir)
				}
				mf, err := os.ReadFile(filepath.Join(xdir, "order.mf"))
				if err != nil {
					t.Fatal(err)
				}
				// the manifest, parsed independently of parseManifest
				mfSums := map[string]string{}
				prefix := strings.ToUpper(alg) + "("
				for _, line := range strings.Split(strings.TrimSuffix(string(mf), "\n"), "\n") {
					name, sum, ok := strings.Cut(strings.TrimPrefix(line, prefix), ")= ")
					if !strings.HasPrefix(line, prefix) || !ok {
						t.Fatalf("manifest line %q is not %sname)= hex", line, prefix)
					}
					mfSums[name] = sum
				}
				tool := alg + "sum"
				var toolSums map[string]string
				if p, err := exec.LookPath(tool); err == nil {
					cmd := exec.CommandContext(t.Context(), p, want[0], want[2], want[3])
					cmd.Dir = xdir
					out, err := cmd.Output()
					if err != nil {
						t.Fatalf("%s: %v", tool, err)
					}
					toolSums = map[string]string{}
					for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
						f := strings.Fields(line)
						toolSums[f[1]] = f[0]
					}
				} else {
					toolSums = map[string]string{}
					for _, n := range []string{want[0], want[2], want[3]} {
						b, _ := os.ReadFile(filepath.Join(xdir, n))
						if alg == "sha1" {
							s := sha1.Sum(b)
							toolSums[n] = hex.EncodeToString(s[:])
						} else {
							s := sha256.Sum256(b)
							toolSums[n] = hex.EncodeToString(s[:])
						}
					}
				}
				if fmt.Sprint(toolSums) != fmt.Sprint(mfSums) || len(mfSums) != 3 {
					t.Fatalf("manifest %v\n%s gives %v", mfSums, tool, toolSums)
				}
				// qemu-img reads the extracted VMDK
				if _, err := exec.LookPath("qemu-img"); err == nil {
					vmdkPath := filepath.Join(xdir, want[3])
					rawPath := filepath.Join(dir, "want.raw")
					disktest.WriteRaw(t, pts[1], rawPath)
					disktest.Qemu(t, "compare", "-f", "vmdk", "-F", "raw", vmdkPath, rawPath)
					disktest.Qemu(t, "check", "-f", "vmdk", vmdkPath)
				}
			})
		}
	}
}

// TestBigMember writes a 9 GiB sparse disk: the VMDK is small, but the
// member was laid out with a PAX header in case it was not. GNU tar,
// archive/tar, ferry and qemu-img all read the result.
func TestBigMember(t *testing.T) {
	pt := &disktest.Pattern{Name: "big", Size: 9 << 30, Seed: 9, Data: []disk.Extent{{Off: 0, Len: 1 << 20}, {Off: 9<<30 - 4096, Len: 4096}}}
	dir := t.TempDir()
	vm := testVM("big", core.BIOS, pt)
	path := writeFile(t, dir, vm, []*disktest.Pattern{pt}, nil)
	hs := members(t, path)
	if len(hs) != 3 || hs[2].Name != "big-disk1.vmdk" || hs[2].PAXRecords["size"] == "" {
		t.Fatalf("members %+v: want a PAX size record on the disk", hs)
	}
	if tarBin, err := exec.LookPath("tar"); err == nil {
		out, err := exec.CommandContext(t.Context(), tarBin, "tvf", path).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "big-disk1.vmdk") {
			t.Fatalf("tar tvf: %v\n%s", err, out)
		}
	}
	r := openFile(t, path)
	if err := r.Verify(t.Context()); err != nil {
		t.Fatal(err)
	}
	img, err := r.OpenDisk(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	disktest.VerifyImage(t, img, pt)
	if _, err := exec.LookPath("qemu-img"); err == nil {
		qi := disktest.QemuInfoOf(t, extract(t, path, "big-disk1.vmdk", dir), "")
		if qi.VirtualSize != pt.Size {
			t.Fatalf("qemu-img: virtual size %d", qi.VirtualSize)
		}
	}
}

// TestHeaderEncoder checks memberHeader against archive/tar and GNU tar,
// with a synthetic 9 GiB member.
func TestHeaderEncoder(t *testing.T) {
	tests := []struct {
		name string
		size int64
		pax  bool
	}{
		{"small.vmdk", 1000, false},
		{"small-pax.vmdk", 1000, true},
		{"limit.vmdk", maxUstarSize, false},
		{"limit-pax.vmdk", maxUstarSize + 1, true},
		{"huge.vmdk", 9 << 30, true},
		{"zero.vmdk", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr, err := memberHeader(tt.name, tt.size, 1700000000, tt.pax)
			if err != nil {
				t.Fatal(err)
			}
			if int64(len(hdr)) != headerLen(tt.pax) {
				t.Fatalf("header of %d bytes, want %d", len(hdr), headerLen(tt.pax))
			}
			h, err := tar.NewReader(bytes.NewReader(hdr)).Next()
			if err != nil {
				t.Fatal(err)
			}
			if h.Name != tt.name || h.Size != tt.size || h.Typeflag != tar.TypeReg || h.ModTime.Unix() != 1700000000 {
				t.Fatalf("archive/tar reads %+v", h)
			}
		})
	}
	if _, err := memberHeader("x", maxUstarSize+1, 0, false); err == nil {
		t.Fatal("a ustar-only header took a 8 GiB member")
	}
	if _, err := memberHeader(strings.Repeat("n", 101), 1, 0, false); err == nil {
		t.Fatal("a 101-byte name was accepted")
	}
	// GNU tar lists a sparse file holding a 9 GiB member behind our header
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		t.Skip("no tar")
	}
	hdr, _ := memberHeader("huge.vmdk", 9<<30, 1700000000, true)
	path := filepath.Join(t.TempDir(), "huge.tar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(hdr)
	f.Truncate(int64(len(hdr)) + 9<<30 + 2*blockSize)
	f.Close()
	out, err := exec.CommandContext(t.Context(), tarBin, "tvf", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "9663676416") || !strings.Contains(string(out), "huge.vmdk") {
		t.Fatalf("tar tvf: %v\n%s", err, out)
	}
	for _, n := range []int64{0, 1 << 30, 7 << 30} {
		if needsPAX(n) {
			t.Errorf("needsPAX(%d)", n)
		}
	}
	for _, n := range []int64{8 << 30, 9 << 30} {
		if !needsPAX(n) {
			t.Errorf("!needsPAX(%d)", n)
		}
	}
}

// verifyQemuImage is disktest.VerifyImage, except for "mixed": qemu skips
// all-zero 64 KiB grains, and where a pattern extent ends in zeros just
// past a grain boundary, VerifyImage's 4 KiB coverage chunks (aligned to
// the pattern's extents, not to 4 KiB) straddle the unallocated grain and
// it fails although the image is right. That case is checked here with
// the same rules at sector granularity, and the content with
// disk.Compare.
func verifyQemuImage(t *testing.T, img disk.Image, pt *disktest.Pattern) {
	t.Helper()
	if pt.Name != "mixed" {
		disktest.VerifyImage(t, img, pt)
		return
	}
	ctx := t.Context()
	res, err := disk.Compare(ctx, img, disktest.PatternImage{P: pt}, &disk.CompareOptions{Strict: true})
	if err != nil || !res.Identical {
		t.Fatalf("%s: compare: %+v, %v", pt.Name, res, err)
	}
	var data []disk.Extent
	var next int64
	for e, err := range img.Extents(ctx, 0, img.Size()) {
		if err != nil || e.Off != next || e.Len <= 0 {
			t.Fatalf("%s: extent %+v after %d: %v", pt.Name, e, next, err)
		}
		next = e.End()
		if e.Kind == disk.Data {
			data = append(data, e)
		}
	}
	if next != img.Size() {
		t.Fatalf("%s: extents end at %d", pt.Name, next)
	}
	sector := make([]byte, 512)
	for _, e := range pt.Data {
		for off := e.Off &^ 511; off < e.End(); off += 512 {
			pt.Fill(off, sector)
			if disktest.IsZero(sector) {
				continue
			}
			in := false
			for _, d := range data {
				if d.Off <= off && off+512 <= d.End() {
					in = true
					break
				}
			}
			if !in {
				t.Fatalf("%s: non-zero sector at %d outside every data extent", pt.Name, off)
			}
		}
	}
}

// TestOtherTarWriters repacks a ferry OVA with GNU tar in its formats,
// with "./" names and a PAX global header, and reads the result.
func TestOtherTarWriters(t *testing.T) {
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		t.Skip("no tar")
	}
	pts := smallPatterns()
	dir := t.TempDir()
	path := writeFile(t, dir, testVM("base", core.BIOS, pts...), pts, nil)
	x := filepath.Join(dir, "x")
	os.Mkdir(x, 0o755)
	names := []string{"base.ovf", "base.mf", "base-disk1.vmdk", "base-disk2.vmdk"}
	for _, n := range names {
		extract(t, path, n, x)
	}
	tests := []struct {
		name string
		args []string
	}{
		{"ustar", []string{"--format=ustar"}},
		{"gnu", []string{"--format=gnu"}},
		{"pax", []string{"--format=pax"}},
		{"pax global header", []string{"--format=pax", "--pax-option=comment=made by GNU tar"}},
		{"dot slash", []string{"--format=gnu", "./base.ovf", "./base.mf", "./base-disk1.vmdk", "./base-disk2.vmdk"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.ova")
			args := append([]string{"-cf", out, "-C", x}, tt.args...)
			if !strings.HasPrefix(tt.args[len(tt.args)-1], "./") {
				args = append(args, names...)
			}
			if b, err := exec.CommandContext(t.Context(), tarBin, args...).CombinedOutput(); err != nil {
				t.Fatalf("tar %v: %v\n%s", args, err, b)
			}
			b, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !Format().Probe(disk.BytesFile(out, b)) {
				t.Fatal("probe refuses it")
			}
			if err := fileErr(b); err != nil {
				t.Fatalf("file: %v", err)
			}
			if err := streamErr(b); err != nil {
				t.Fatalf("stream: %v", err)
			}
			r := openFile(t, out)
			for i, pt := range pts {
				img, err := r.OpenDisk(t.Context(), i)
				if err != nil {
					t.Fatal(err)
				}
				disktest.VerifyImage(t, img, pt)
				img.Close()
			}
		})
	}
}
