package awslab

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"
)

// ec2Namespace is the XML namespace of EC2 API version 2016-11-15, the
// version every current SDK speaks.
const (
	ec2Namespace = "http://ec2.amazonaws.com/doc/2016-11-15/"
	ec2Version   = "2016-11-15"
)

// ec2Error is an EC2 API error: a code, a message, an HTTP status.
type ec2Error struct {
	Code    string
	Message string
	Status  int
}

func (e *ec2Error) Error() string { return e.Code + ": " + e.Message }

func ec2Err(code, format string, a ...any) *ec2Error {
	return &ec2Error{Code: code, Message: fmt.Sprintf(format, a...), Status: http.StatusBadRequest}
}

func asEC2Error(err error) *ec2Error {
	var e *ec2Error
	if errors.As(err, &e) {
		return e
	}
	return &ec2Error{Code: "InternalError", Message: "An internal error has occurred: " + err.Error(), Status: http.StatusInternalServerError}
}

// ec2Handler serves one action; it runs under the lab's lock and returns
// the children of the <ActionResponse> element (the requestId is added).
type ec2Handler func(ctx context.Context, p params) ([]*node, error)

func (s *Server) ec2Actions() map[string]ec2Handler {
	return map[string]ec2Handler{
		"DescribeInstances":           s.describeInstances,
		"RunInstances":                s.runInstances,
		"StartInstances":              s.startInstances,
		"StopInstances":               s.stopInstances,
		"RebootInstances":             s.rebootInstances,
		"TerminateInstances":          s.terminateInstances,
		"GetConsoleOutput":            s.getConsoleOutput,
		"DescribeInstanceTypes":       s.describeInstanceTypes,
		"DescribeImages":              s.describeImages,
		"RegisterImage":               s.registerImage,
		"DeregisterImage":             s.deregisterImage,
		"DescribeSnapshots":           s.describeSnapshots,
		"CreateSnapshot":              s.createSnapshot,
		"CreateSnapshots":             s.createSnapshots,
		"DeleteSnapshot":              s.deleteSnapshot,
		"DescribeVolumes":             s.describeVolumes,
		"CreateVolume":                s.createVolume,
		"DeleteVolume":                s.deleteVolume,
		"AttachVolume":                s.attachVolume,
		"DetachVolume":                s.detachVolume,
		"DescribeSubnets":             s.describeSubnets,
		"DescribeVpcs":                s.describeVpcs,
		"DescribeSecurityGroups":      s.describeSecurityGroups,
		"DescribeAvailabilityZones":   s.describeAvailabilityZones,
		"DescribeRegions":             s.describeRegions,
		"CreateTags":                  s.createTags,
		"DeleteTags":                  s.deleteTags,
		"DescribeTags":                s.describeTags,
		"ImportSnapshot":              s.importSnapshot,
		"ImportImage":                 s.importImage,
		"DescribeImportSnapshotTasks": s.describeImportSnapshotTasks,
		"DescribeImportImageTasks":    s.describeImportImageTasks,
		"CancelImportTask":            s.cancelImportTask,
		"ExportImage":                 s.exportImage,
		"DescribeExportImageTasks":    s.describeExportImageTasks,
		"CreateInstanceExportTask":    s.createInstanceExportTask,
		"DescribeExportTasks":         s.describeExportTasks,
		"CancelExportTask":            s.cancelExportTask,
	}
}

// maxForm bounds an EC2 request body.
const maxForm = 1 << 20

// serveEC2 serves an authenticated EC2 Query request.
func (s *Server) serveEC2(w http.ResponseWriter, r *http.Request, reqID string) {
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		s.ec2Fail(w, reqID, &ec2Error{Code: "InvalidHttpRequest", Message: "The EC2 API is served with POST or GET.", Status: http.StatusMethodNotAllowed})
		return
	}
	form := r.URL.RawQuery
	if r.Method == http.MethodPost {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxForm+1))
		if err != nil {
			s.ec2Fail(w, reqID, ec2Err("MalformedQueryString", "The request body could not be read."))
			return
		}
		if len(body) > maxForm {
			s.ec2Fail(w, reqID, ec2Err("MalformedQueryString", "The request body is too large."))
			return
		}
		if len(body) > 0 {
			if form != "" {
				form += "&"
			}
			form += string(body)
		}
	}
	p, err := parseQuery(form)
	if err != nil {
		s.ec2Fail(w, reqID, ec2Err("MalformedQueryString", "%v", err))
		return
	}
	action := p.str("Action")
	if action == "" {
		s.ec2Fail(w, reqID, ec2Err("MissingAction", "The request must contain the parameter Action."))
		return
	}
	h := s.ec2[action]
	if h == nil {
		s.ec2Fail(w, reqID, ec2Err("InvalidAction", "The action %s is not valid for this web service.", action))
		return
	}
	if v := p.str("Version"); v != "" && v != ec2Version {
		s.ec2Fail(w, reqID, ec2Err("InvalidParameterValue", "The lab serves API version %s, not %s.", ec2Version, v))
		return
	}
	dry, err := p.boolean("DryRun")
	if err != nil {
		s.ec2Fail(w, reqID, err)
		return
	}
	if dry {
		s.ec2Fail(w, reqID, &ec2Error{Code: "DryRunOperation", Message: "Request would have succeeded, but DryRun flag is set.", Status: http.StatusPreconditionFailed})
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.ec2Fail(w, reqID, &ec2Error{Code: "Unavailable", Message: "The service is unavailable.", Status: http.StatusServiceUnavailable})
		return
	}
	s.tickLocked()
	kids, err := h(r.Context(), p)
	serr := s.saveLocked()
	s.mu.Unlock()
	if err == nil && serr != nil {
		err = serr
	}
	if err != nil {
		s.log.Info("ec2 request failed", "action", action, "err", err)
		s.ec2Fail(w, reqID, err)
		return
	}
	s.log.Debug("ec2 request", "action", action)
	body := document(action+"Response", ec2Namespace, append([]*node{el("requestId", reqID)}, kids...))
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Write([]byte(body))
}

// ec2Fail writes EC2's error document.
func (s *Server) ec2Fail(w http.ResponseWriter, reqID string, err error) {
	e := asEC2Error(err)
	body := document("Response", "", []*node{
		el("Errors", el("Error", el("Code", e.Code), el("Message", e.Message))),
		el("RequestID", reqID),
	})
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(e.Status)
	w.Write([]byte(body))
}

// ec2AuthError reports an authentication failure as EC2 does.
func ec2AuthError(err error) *ec2Error {
	var ae *authError
	if !errors.As(err, &ae) {
		return asEC2Error(err)
	}
	switch ae.kind {
	case authMissing:
		return &ec2Error{Code: "MissingAuthenticationToken", Message: "Request is missing Authentication Token", Status: http.StatusUnauthorized}
	case authMalformed, authUnsupported:
		return &ec2Error{Code: "IncompleteSignature", Message: ae.msg, Status: http.StatusBadRequest}
	case authExpired:
		return &ec2Error{Code: "RequestExpired", Message: "Request has expired: " + ae.msg, Status: http.StatusBadRequest}
	}
	return &ec2Error{Code: "AuthFailure", Message: "AWS was not able to validate the provided access credentials", Status: http.StatusUnauthorized}
}

// match reports whether v matches an EC2 filter value: '*' matches any
// run of characters, '?' any one.
func match(pattern, v string) bool {
	ok, err := path.Match(escapeGlob(pattern), v)
	return err == nil && ok
}

// escapeGlob keeps '*' and '?' and makes everything else literal for
// path.Match.
func escapeGlob(p string) string {
	var b strings.Builder
	for _, c := range p {
		switch c {
		case '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// attrs gives a resource's values for a filter name; ok is false for a
// filter name the resource type does not know.
type attrs func(name string) (values []string, ok bool)

// matchFilters reports whether a resource passes every filter. Tag
// filters (tag:KEY, tag-key, tag-value) are handled from tags.
func matchFilters(fs []filter, tags map[string]string, a attrs) (bool, error) {
	for _, f := range fs {
		var vals []string
		switch {
		case strings.HasPrefix(f.Name, "tag:"):
			if v, ok := tags[strings.TrimPrefix(f.Name, "tag:")]; ok {
				vals = []string{v}
			}
		case f.Name == "tag-key":
			vals = sortedKeys(tags)
		case f.Name == "tag-value":
			for _, k := range sortedKeys(tags) {
				vals = append(vals, tags[k])
			}
		default:
			var ok bool
			vals, ok = a(f.Name)
			if !ok {
				return false, ec2Err("InvalidParameterValue", "The filter '%s' is invalid", f.Name)
			}
		}
		hit := false
		for _, want := range f.Values {
			for _, v := range vals {
				if match(want, v) {
					hit = true
				}
			}
		}
		if !hit {
			return false, nil
		}
	}
	return true, nil
}

// page applies MaxResults and NextToken to n items: it returns the range
// to answer and the next token ("" at the end). minMax is the smallest
// MaxResults the action accepts.
func page(p params, n int, minMax, maxMax int64) (from, to int, next string, err error) {
	limit, err := p.integer("MaxResults", 0)
	if err != nil {
		return 0, 0, "", err
	}
	if p.has("MaxResults") && (limit < minMax || limit > maxMax) {
		return 0, 0, "", ec2Err("InvalidParameterValue", "Value ( %d ) for parameter maxResults is invalid. Expecting a value between %d and %d.", limit, minMax, maxMax)
	}
	if tok := p.str("NextToken"); tok != "" {
		b, derr := base64.RawURLEncoding.DecodeString(tok)
		off, perr := strconv.Atoi(strings.TrimPrefix(string(b), "o:"))
		if derr != nil || perr != nil || !strings.HasPrefix(string(b), "o:") || off < 0 || off > n {
			return 0, 0, "", ec2Err("InvalidPaginationToken", "Invalid pagination token: %s", tok)
		}
		from = off
	}
	to = n
	if limit > 0 && from+int(limit) < n {
		to = from + int(limit)
		next = base64.RawURLEncoding.EncodeToString([]byte("o:" + strconv.Itoa(to)))
	}
	return from, to, next, nil
}

// notFoundCodes are the NotFound error codes by ID prefix.
var notFoundCodes = map[string]string{
	"i":           "InvalidInstanceID.NotFound",
	"ami":         "InvalidAMIID.NotFound",
	"snap":        "InvalidSnapshot.NotFound",
	"vol":         "InvalidVolume.NotFound",
	"subnet":      "InvalidSubnetID.NotFound",
	"vpc":         "InvalidVpcID.NotFound",
	"sg":          "InvalidGroup.NotFound",
	"import-snap": "InvalidConversionTaskId",
	"import-ami":  "InvalidConversionTaskId",
	"export-ami":  "InvalidExportImageTaskId.NotFound",
	"export-i":    "InvalidExportTaskID.NotFound",
}

// malformedCodes are the Malformed error codes by ID prefix.
var malformedCodes = map[string]string{
	"i":    "InvalidInstanceID.Malformed",
	"ami":  "InvalidAMIID.Malformed",
	"snap": "InvalidSnapshotID.Malformed",
	"vol":  "InvalidVolumeID.Malformed",
	"vpc":  "InvalidVpcID.Malformed",
	"sg":   "InvalidGroupId.Malformed",
}

// checkID checks that id is prefix-<hex>, else the type's Malformed code.
func checkID(prefix, id string) error {
	hexPart, ok := strings.CutPrefix(id, prefix+"-")
	good := ok && (len(hexPart) == 8 || len(hexPart) == 17)
	for _, c := range hexPart {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			good = false
		}
	}
	if good {
		return nil
	}
	code := malformedCodes[prefix]
	if code == "" {
		code = "InvalidParameterValue"
	}
	return ec2Err(code, "Invalid id: \"%s\"", id)
}

// notFound is the NotFound error for an ID of the given prefix.
func notFound(prefix, id string) error {
	code := notFoundCodes[prefix]
	if code == "" {
		code = "InvalidParameterValue"
	}
	switch prefix {
	case "i":
		return ec2Err(code, "The instance ID '%s' does not exist", id)
	case "ami":
		return ec2Err(code, "The image id '[%s]' does not exist", id)
	case "snap":
		return ec2Err(code, "The snapshot '%s' does not exist.", id)
	case "vol":
		return ec2Err(code, "The volume '%s' does not exist.", id)
	}
	return ec2Err(code, "The ID '%s' does not exist", id)
}

func missing(name string) error {
	return ec2Err("MissingParameter", "The request must contain the parameter %s", name)
}
