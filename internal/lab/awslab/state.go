package awslab

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/lab/labkit"
)

const (
	// stateVersion is the version of state.json's layout.
	stateVersion = 1
	stateFile    = "state.json"
	credFile     = "credentials.json"
	// gib is the unit of EBS volume and snapshot sizes.
	gib = int64(1) << 30
)

// state is every EC2 and EBS resource of the region. S3 buckets and
// objects keep their metadata in their own files (s3.go). The Server's
// mutex guards it.
type state struct {
	Version   int    `json:"version"`
	Account   string `json:"account"`
	TokenKey  []byte `json:"token_key"` // signs EBS block tokens
	Instances map[string]*instance
	Images    map[string]*image
	Snapshots map[string]*snapshot
	Volumes   map[string]*volume
	Imports   map[string]*importTask
	Exports   map[string]*exportTask
	VPCs      map[string]*vpc
	Subnets   map[string]*subnet
	Groups    map[string]*secGroup
	// Tags by resource ID.
	Tags map[string]map[string]string
}

type instance struct {
	ID             string    `json:"id"`
	Reservation    string    `json:"reservation"`
	ImageID        string    `json:"image_id"`
	Type           string    `json:"type"`
	KeyName        string    `json:"key_name,omitempty"`
	SubnetID       string    `json:"subnet_id"`
	VPCID          string    `json:"vpc_id"`
	AZ             string    `json:"az"`
	PrivateIP      string    `json:"private_ip"`
	Groups         []string  `json:"groups"`
	Arch           string    `json:"arch"`
	BootMode       string    `json:"boot_mode,omitempty"`
	RootDevice     string    `json:"root_device"`
	UserData       string    `json:"user_data,omitempty"`
	ClientToken    string    `json:"client_token,omitempty"`
	LaunchIndex    int       `json:"launch_index"`
	State          string    `json:"state"`
	Until          time.Time `json:"until"`    // a transitional state lasts until then
	Ready          bool      `json:"ready"`    // root volumes materialised
	Launched       time.Time `json:"launched"` // last start
	ReasonCode     string    `json:"reason_code,omitempty"`
	ReasonMessage  string    `json:"reason_message,omitempty"`
	TransitionNote string    `json:"transition_note,omitempty"`
	Ended          time.Time `json:"ended,omitzero"` // when it terminated
}

type attachment struct {
	InstanceID          string    `json:"instance_id"`
	Device              string    `json:"device"`
	State               string    `json:"state"` // attaching attached detaching
	Time                time.Time `json:"time"`
	Until               time.Time `json:"until"`
	DeleteOnTermination bool      `json:"delete_on_termination"`
}

type volume struct {
	ID         string      `json:"id"`
	Size       int64       `json:"size"` // GiB
	SnapshotID string      `json:"snapshot_id,omitempty"`
	AZ         string      `json:"az"`
	Type       string      `json:"type"`
	Iops       int64       `json:"iops,omitempty"`
	State      string      `json:"state"` // creating available in-use deleting error
	Until      time.Time   `json:"until"`
	Ready      bool        `json:"ready"` // its file holds its content
	Created    time.Time   `json:"created"`
	Lineage    string      `json:"lineage"`
	Attach     *attachment `json:"attach,omitempty"`
	Token      string      `json:"client_token,omitempty"`
}

type snapshot struct {
	ID          string    `json:"id"`
	VolumeID    string    `json:"volume_id"` // vol-ffffffff when not from a volume, as AWS reports it
	Size        int64     `json:"size"`      // GiB
	Description string    `json:"description,omitempty"`
	Status      string    `json:"status"` // pending completed error
	Message     string    `json:"message,omitempty"`
	Progress    int       `json:"progress"`
	Start       time.Time `json:"start"`
	Completed   time.Time `json:"completed,omitzero"`
	Until       time.Time `json:"until"`
	Ready       bool      `json:"ready"` // its block index is complete
	// Source is how its blocks arrive: volume (CreateSnapshot), direct
	// (EBS direct APIs), import (ImportSnapshot/ImportImage).
	Source   string    `json:"source"`
	Lineage  string    `json:"lineage"`
	Parent   string    `json:"parent,omitempty"`
	Token    string    `json:"client_token,omitempty"`
	Deadline time.Time `json:"deadline,omitzero"` // direct: error unless completed by then
	Bytes    int64     `json:"bytes"`             // data stored
}

type blockMapping struct {
	Device              string `json:"device"`
	SnapshotID          string `json:"snapshot_id,omitempty"`
	VolumeSize          int64  `json:"volume_size,omitempty"`
	VolumeType          string `json:"volume_type,omitempty"`
	DeleteOnTermination bool   `json:"delete_on_termination"`
	NoDevice            bool   `json:"no_device,omitempty"`
}

type image struct {
	ID          string         `json:"id"`
	Name        string         `json:"name"`
	Description string         `json:"description,omitempty"`
	Arch        string         `json:"arch"`
	Virt        string         `json:"virt"`
	BootMode    string         `json:"boot_mode,omitempty"`
	EnaSupport  bool           `json:"ena_support"`
	RootDevice  string         `json:"root_device"`
	Mappings    []blockMapping `json:"mappings"`
	State       string         `json:"state"` // pending available failed
	Until       time.Time      `json:"until"`
	Created     time.Time      `json:"created"`
	Platform    string         `json:"platform,omitempty"`
}

// importDisk is one disk of an import task.
type importDisk struct {
	Format      string `json:"format"` // VMDK VHD VHDX RAW, as given (upper case)
	Bucket      string `json:"bucket,omitempty"`
	Key         string `json:"key,omitempty"`
	URL         string `json:"url,omitempty"`
	Description string `json:"description,omitempty"`
	Device      string `json:"device,omitempty"`
	// SourceSnapshot is ImportImage's DiskContainer.SnapshotId: an EBS
	// snapshot used as it is.
	SourceSnapshot string `json:"source_snapshot,omitempty"`
	Size           int64  `json:"size"` // bytes of the source object
	SnapshotID     string `json:"snapshot_id,omitempty"`
	Progress       int    `json:"progress"`
	Status         string `json:"status"`
	Message        string `json:"message"`
}

type importTask struct {
	ID          string       `json:"id"`
	Kind        string       `json:"kind"` // snapshot image
	Description string       `json:"description,omitempty"`
	Status      string       `json:"status"` // active completed deleting deleted
	Message     string       `json:"message"`
	Progress    int          `json:"progress"`
	Until       time.Time    `json:"until"`
	Done        bool         `json:"done"` // the conversion finished (or failed)
	Failed      string       `json:"failed,omitempty"`
	Disks       []importDisk `json:"disks"`
	ImageID     string       `json:"image_id,omitempty"`
	Arch        string       `json:"arch,omitempty"`
	Platform    string       `json:"platform,omitempty"`
	License     string       `json:"license,omitempty"`
	BootMode    string       `json:"boot_mode,omitempty"`
	Hypervisor  string       `json:"hypervisor,omitempty"`
	Role        string       `json:"role,omitempty"`
	Token       string       `json:"client_token,omitempty"`
	Created     time.Time    `json:"created"`
}

type exportTask struct {
	ID          string    `json:"id"`
	Kind        string    `json:"kind"` // image instance
	ImageID     string    `json:"image_id,omitempty"`
	InstanceID  string    `json:"instance_id,omitempty"`
	Target      string    `json:"target,omitempty"` // citrix vmware microsoft
	Format      string    `json:"format"`           // VMDK RAW VHD
	Container   string    `json:"container,omitempty"`
	Bucket      string    `json:"bucket"`
	Prefix      string    `json:"prefix"`
	Key         string    `json:"key"`
	Description string    `json:"description,omitempty"`
	Role        string    `json:"role,omitempty"`
	Status      string    `json:"status"` // active completed deleting deleted (image); active cancelling cancelled completed (instance)
	Message     string    `json:"message"`
	Progress    int       `json:"progress"`
	Until       time.Time `json:"until"`
	Done        bool      `json:"done"`
	Failed      string    `json:"failed,omitempty"`
	Token       string    `json:"client_token,omitempty"`
	Created     time.Time `json:"created"`
}

type vpc struct {
	ID      string `json:"id"`
	CIDR    string `json:"cidr"`
	Default bool   `json:"default"`
	DHCP    string `json:"dhcp"`
}

type subnet struct {
	ID      string `json:"id"`
	VPCID   string `json:"vpc_id"`
	CIDR    string `json:"cidr"`
	AZ      string `json:"az"`
	Default bool   `json:"default"`
	// Next is the last octets' counter for private addresses.
	Next int `json:"next"`
}

type secGroup struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Description string `json:"description"`
	VPCID       string `json:"vpc_id"`
}

func newState() *state {
	return &state{
		Version:   stateVersion,
		Instances: map[string]*instance{},
		Images:    map[string]*image{},
		Snapshots: map[string]*snapshot{},
		Volumes:   map[string]*volume{},
		Imports:   map[string]*importTask{},
		Exports:   map[string]*exportTask{},
		VPCs:      map[string]*vpc{},
		Subnets:   map[string]*subnet{},
		Groups:    map[string]*secGroup{},
		Tags:      map[string]map[string]string{},
	}
}

// loadState reads state.json in dir; a missing file reports found false.
func loadState(dir string) (*state, bool, error) {
	path := filepath.Join(dir, stateFile)
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("aws lab: read state %s: %w", path, err)
	}
	st := newState()
	if err := json.Unmarshal(b, st); err != nil {
		return nil, false, fmt.Errorf("aws lab: state %s: %v: %w", path, err, errs.ErrCorrupt)
	}
	if st.Version != stateVersion {
		return nil, false, fmt.Errorf("aws lab: state %s: version %d, this lab reads %d: %w", path, st.Version, stateVersion, errs.ErrUnimplemented)
	}
	if len(st.TokenKey) < 16 || len(st.Account) != 12 {
		return nil, false, fmt.Errorf("aws lab: state %s: no account or token key: %w", path, errs.ErrCorrupt)
	}
	// maps absent from an older file
	fresh := newState()
	if st.Instances == nil {
		st.Instances = fresh.Instances
	}
	if st.Images == nil {
		st.Images = fresh.Images
	}
	if st.Snapshots == nil {
		st.Snapshots = fresh.Snapshots
	}
	if st.Volumes == nil {
		st.Volumes = fresh.Volumes
	}
	if st.Imports == nil {
		st.Imports = fresh.Imports
	}
	if st.Exports == nil {
		st.Exports = fresh.Exports
	}
	if st.VPCs == nil {
		st.VPCs = fresh.VPCs
	}
	if st.Subnets == nil {
		st.Subnets = fresh.Subnets
	}
	if st.Groups == nil {
		st.Groups = fresh.Groups
	}
	if st.Tags == nil {
		st.Tags = fresh.Tags
	}
	return st, true, nil
}

func (st *state) save(dir string) error {
	b, err := json.MarshalIndent(st, "", " ")
	if err != nil {
		return fmt.Errorf("aws lab: encode state: %w", err)
	}
	return labkit.WriteFile(filepath.Join(dir, stateFile), b, 0o644)
}

// bootstrap creates a new region: an account, the default VPC with one
// subnet per availability zone, and its default security group.
func (s *Server) bootstrap() *state {
	st := newState()
	n, _ := rand.Int(rand.Reader, big.NewInt(9e11))
	st.Account = fmt.Sprintf("%012d", n.Int64()+1e11)
	st.TokenKey = make([]byte, 32)
	rand.Read(st.TokenKey)
	v := &vpc{ID: newID("vpc"), CIDR: "172.31.0.0/16", Default: true, DHCP: newID("dopt")}
	st.VPCs[v.ID] = v
	for i, az := range s.zones() {
		sn := &subnet{ID: newID("subnet"), VPCID: v.ID, CIDR: fmt.Sprintf("172.31.%d.0/20", 16*i), AZ: az, Default: true, Next: 10}
		st.Subnets[sn.ID] = sn
	}
	g := &secGroup{ID: newID("sg"), Name: "default", Description: "default VPC security group", VPCID: v.ID}
	st.Groups[g.ID] = g
	return st
}

// zones are the region's availability zones.
func (s *Server) zones() []string {
	return []string{s.region + "a", s.region + "b", s.region + "c"}
}

type storedCredentials struct {
	AccessKey string `json:"access_key"`
	SecretKey string `json:"secret_key"`
}

// loadCredentials settles the key pair: the one given (stored for the
// next start), else the stored one, else a new one.
func (s *Server) loadCredentials(ak, sk string) error {
	path := filepath.Join(s.dir, credFile)
	if ak == "" {
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			var c storedCredentials
			if err := json.Unmarshal(b, &c); err != nil || !validAccessKey(c.AccessKey) || c.SecretKey == "" {
				return fmt.Errorf("aws lab: credentials %s: unreadable: %w", path, errs.ErrCorrupt)
			}
			s.accessKey, s.secretKey = c.AccessKey, Secret(c.SecretKey)
			return nil
		case !os.IsNotExist(err):
			return fmt.Errorf("aws lab: read credentials %s: %w", path, err)
		}
		ak, sk = generateKeys()
		s.generated = true
	}
	s.accessKey, s.secretKey = ak, Secret(sk)
	b, _ := json.Marshal(storedCredentials{AccessKey: ak, SecretKey: sk})
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, b) {
		return nil
	}
	return labkit.WriteFile(path, b, 0o600)
}

// generateKeys returns a new key pair in AWS's shapes: an access key of 20
// upper-case letters and digits starting AKIA, a 40-character secret.
func generateKeys() (string, string) {
	const upper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
	const all = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	pick := func(alphabet string, n int) string {
		b := make([]byte, n)
		rand.Read(b)
		var sb strings.Builder
		for _, c := range b {
			sb.WriteByte(alphabet[int(c)%len(alphabet)])
		}
		return sb.String()
	}
	return "AKIA" + pick(upper, 16), pick(all, 40)
}

// recoverLocked brings the state in line with a fresh start: background
// work that was under way starts again, guests of running instances boot
// again (their processes died with the previous lab).
func (s *Server) recoverLocked() {
	s.removeOrphansLocked()
	for _, v := range sortedValues(s.st.Volumes) {
		if !v.Ready && v.State != "error" {
			s.startVolumeFillLocked(v)
		}
	}
	for _, sn := range sortedValues(s.st.Snapshots) {
		if !sn.Ready && sn.Status == "pending" && sn.Source == "volume" {
			s.startSnapshotCopyLocked(sn)
		}
	}
	for _, t := range sortedValues(s.st.Imports) {
		if !t.Done {
			s.startImportLocked(t)
		}
	}
	for _, t := range sortedValues(s.st.Exports) {
		if !t.Done {
			s.startExportLocked(t)
		}
	}
	for _, in := range sortedValues(s.st.Instances) {
		if in.State == "running" || in.State == "pending" && in.Ready {
			s.consoleNote(in.ID, "the lab restarted")
			s.bootGuestLocked(in)
		}
	}
}

// removeOrphansLocked removes files that belong to no resource: what a
// crash left between writing a file and recording its resource.
func (s *Server) removeOrphansLocked() {
	remove := func(sub string, known func(id string) bool) {
		ents, err := os.ReadDir(filepath.Join(s.dir, sub))
		if err != nil {
			return
		}
		for _, e := range ents {
			id, _, _ := strings.Cut(e.Name(), ".")
			if !known(id) {
				s.log.Info("removing a leftover file", "file", filepath.Join(sub, e.Name()))
				os.RemoveAll(filepath.Join(s.dir, sub, e.Name()))
			}
		}
	}
	remove("snapshots", func(id string) bool { return s.st.Snapshots[id] != nil })
	remove("volumes", func(id string) bool { return s.st.Volumes[id] != nil })
	remove("instances", func(id string) bool { return s.st.Instances[id] != nil })
}
