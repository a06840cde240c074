package awslab

import (
	"bytes"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{
		"Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=tag%3AName&Filter.1.Value.1=web&Filter.1.Value.2=db*&MaxResults=5",
		"Action=RunInstances&Version=2016-11-15&ImageId=ami-0123456789abcdef0&MinCount=1&MaxCount=2&TagSpecification.1.ResourceType=instance&TagSpecification.1.Tag.1.Key=Name&TagSpecification.1.Tag.1.Value=x",
		"Action=ImportImage&DiskContainer.1.Format=VHD&DiskContainer.1.UserBucket.S3Bucket=b&DiskContainer.1.UserBucket.S3Key=k%2Fv.vhd",
		"Action=RegisterImage&BlockDeviceMapping.1.DeviceName=%2Fdev%2Fxvda&BlockDeviceMapping.1.Ebs.SnapshotId=snap-1&BlockDeviceMapping.2.NoDevice=",
		"InstanceId.1=i-1&InstanceId.3=i-3&InstanceId.0=x&InstanceId.a=y",
		"a=1&a=2", "=x", "a..b=1", "a=%zz", "&&&", "Filter.1.Value.1=x", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, form string) {
		p, err := parseQuery(form)
		if err != nil {
			return
		}
		// the parameters survive encoding and decoding
		v := url.Values{}
		for k, val := range p {
			v.Set(k, val)
		}
		p2, err := parseQuery(v.Encode())
		if err != nil || len(p2) != len(p) {
			t.Fatalf("re-encoded %q: %v (%d params, want %d)", v.Encode(), err, len(p2), len(p))
		}
		for k, val := range p {
			if p2[k] != val {
				t.Fatalf("parameter %s: %q after re-encoding, want %q", k, p2[k], val)
			}
		}
		// the accessors take anything
		for _, prefix := range []string{"Filter", "InstanceId", "TagSpecification", "BlockDeviceMapping", "DiskContainer"} {
			idx := p.indexes(prefix)
			if !slices.IsSorted(idx) || len(p.list(prefix)) > len(idx) || len(p.structs(prefix)) > len(idx) {
				t.Fatalf("%s: indexes %v", prefix, idx)
			}
			p.sub(prefix)
		}
		p.filters("Filter")
		p.tagSpecs("instance", "volume")
		p.boolean("DryRun")
		p.integer("MaxResults", 0)
		page(p, 50, 5, 1000)
	})
}

func FuzzParseAuthorization(f *testing.F) {
	for _, s := range []string{
		"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
		"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
		"AWS AKIDEXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg=",
		"AWS4-HMAC-SHA256 Credential=a/b/c/d/e,,,, Signature=",
		"AWS4-HMAC-SHA256 ", "", "AWS4-HMAC-SHA256 Credential==/=/=/=/=",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		a, err := parseAuthorization(h)
		if err != nil {
			return
		}
		if !validSignature(a.Signature) || !slices.IsSorted(a.SignedHeaders) || a.Credential.Terminator != "aws4_request" || len(a.Credential.Date) != 8 {
			t.Fatalf("accepted %q as %+v", h, a)
		}
		for _, sh := range a.SignedHeaders {
			if sh == "" || sh != strings.ToLower(sh) {
				t.Fatalf("signed header %q", sh)
			}
		}
		if strings.Count(a.Credential.scope(), "/") != 3 {
			t.Fatalf("scope %q", a.Credential.scope())
		}
	})
}

func FuzzS3XML(f *testing.F) {
	for _, s := range []string{
		`<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>"a54357aff0632cce46d942af68356b38"</ETag></Part><Part><PartNumber>2</PartNumber><ETag>"0c78aef83f66abc1fa1e8477f296d394"</ETag><ChecksumCRC32>AAAAAA==</ChecksumCRC32></Part></CompleteMultipartUpload>`,
		`<Delete><Quiet>true</Quiet><Object><Key>a/b</Key></Object><Object><Key>c</Key><VersionId>x</VersionId></Object></Delete>`,
		`<Tagging><TagSet><Tag><Key>ferry:job</Key><Value>j1</Value></Tag></TagSet></Tagging>`,
		`<CompleteMultipartUpload><Part><PartNumber>0</PartNumber></Part></CompleteMultipartUpload>`,
		`<Delete></Delete>`, `<Tagging><TagSet><Tag><Key></Key></Tag></TagSet></Tagging>`, `<a>`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if parts, err := parseComplete(b); err == nil {
			for _, p := range parts {
				if p.Number < 1 || p.Number > maxPartNumber || strings.HasPrefix(p.ETag, `"`) || strings.HasSuffix(p.ETag, `"`) {
					t.Fatalf("part %+v", p)
				}
			}
		}
		if d, err := parseDeleteObjects(b); err == nil {
			if len(d.Keys) == 0 || len(d.Keys) > 1000 || slices.Contains(d.Keys, "") {
				t.Fatalf("delete %+v", d)
			}
		}
		if tags, err := parseTagging(b); err == nil {
			if len(tags) > 10 {
				t.Fatalf("%d tags", len(tags))
			}
		}
	})
}

func FuzzChunked(f *testing.F) {
	for _, s := range []string{
		"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n",
		"400\r\n" + strings.Repeat("a", 1024) + "\r\n0\r\n\r\n",
		"zz\r\n", "5\r\nhel", "0\r\nbad trailer\r\n\r\n", "ffffffffffffffff\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		v := &verified{payload: streamingUnsignedTrail}
		n, err := io.Copy(io.Discard, io.LimitReader(newChunkedReader(bytes.NewReader(body), v), 1<<20))
		if err == nil && n > int64(len(body)) {
			t.Fatalf("decoded %d bytes out of %d", n, len(body))
		}
	})
}

func FuzzByteRange(f *testing.F) {
	for _, s := range []string{"bytes=0-9", "bytes=100-", "bytes=-5", "bytes=5-1", "bytes=0-0,5-6", "items=0-1", "bytes=-0", "bytes=99999999999999999999-"} {
		f.Add(s, int64(1000))
	}
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			return
		}
		a, b, err := byteRange(h, size)
		if err == nil && (a < 0 || b > size || a >= b) {
			t.Fatalf("range %q of %d: [%d, %d)", h, size, a, b)
		}
	})
}

func FuzzReadIndex(f *testing.F) {
	dir := f.TempDir()
	good := filepath.Join(dir, "seed.idx")
	if err := writeIndex(good, index{{0, hash{1}}, {7, hash{2}}}); err != nil {
		f.Fatal(err)
	}
	b, _ := os.ReadFile(good)
	f.Add(b)
	f.Add(append([]byte(journalMagic+"\x01\x00\x00\x00"), make([]byte, 45)...))
	f.Add([]byte("FLBI"))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "x")
		os.WriteFile(path, data, 0o644)
		if x, err := readIndex(path); err == nil {
			for i := 1; i < len(x); i++ {
				if x[i].Index <= x[i-1].Index {
					t.Fatal("index out of order")
				}
			}
		}
		if x, err := readJournal(path); err == nil {
			for i := 1; i < len(x); i++ {
				if x[i].Index <= x[i-1].Index {
					t.Fatal("journal index out of order")
				}
			}
		}
	})
}
