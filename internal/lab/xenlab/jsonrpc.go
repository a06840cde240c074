package xenlab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"strings"
)

// maxRequestBody bounds a JSON-RPC request.
const maxRequestBody = 32 << 20

// rpcRequest is a decoded JSON-RPC call.
type rpcRequest struct {
	V2     bool
	ID     json.RawMessage
	Method string
	Params []any // numbers as json.Number
}

// errMalformed is a request xapi answers with HTTP 500, not a JSON-RPC
// error.
type errMalformed struct{ msg string }

func (e *errMalformed) Error() string { return e.msg }

// decodeRequest decodes a JSON-RPC 1.0 or 2.0 request the way xapi does:
// an object with a string method, params an array (optional in 2.0), and
// a non-null string or integer id; "jsonrpc" absent (1.0), "1.0" or "2.0".
func decodeRequest(b []byte) (*rpcRequest, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var raw map[string]json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return nil, &errMalformed{"Jsonrpc.Malformed_method_request: body is not a JSON object: " + err.Error()}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, &errMalformed{"Jsonrpc.Malformed_method_request: data after the request object"}
	}
	r := &rpcRequest{}
	if v, ok := raw["jsonrpc"]; ok {
		var s string
		if err := json.Unmarshal(v, &s); err != nil || (s != "2.0" && s != "1.0") {
			return nil, &errMalformed{"Jsonrpc.Malformed_method_request: invalid field 'jsonrpc' in request body"}
		}
		r.V2 = s == "2.0"
	}
	m, ok := raw["method"]
	if !ok || json.Unmarshal(m, &r.Method) != nil || r.Method == "" {
		return nil, &errMalformed{"Jsonrpc.Malformed_method_request: invalid field 'method' in request body"}
	}
	id, ok := raw["id"]
	if !ok || !validID(id) {
		return nil, &errMalformed{"Jsonrpc.Malformed_method_request: invalid field 'id' in request body (a string or an integer, never null)"}
	}
	r.ID = id
	p, ok := raw["params"]
	switch {
	case !ok && r.V2:
		r.Params = []any{}
	case !ok:
		return nil, &errMalformed{"Jsonrpc.Malformed_method_request: missing field 'params' in request body"}
	default:
		pd := json.NewDecoder(bytes.NewReader(p))
		pd.UseNumber()
		var params []any
		if err := pd.Decode(&params); err != nil || params == nil {
			return nil, &errMalformed{"Jsonrpc.Malformed_method_request: field 'params' is not an array"}
		}
		r.Params = params
	}
	return r, nil
}

func validID(b json.RawMessage) bool {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return false
	}
	switch b[0] {
	case '"':
		var s string
		return json.Unmarshal(b, &s) == nil
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		var n json.Number
		if json.Unmarshal(b, &n) != nil {
			return false
		}
		_, err := n.Int64()
		return err == nil
	}
	return false
}

// encodeResponse writes a JSON-RPC response in the request's version.
func encodeResponse(req *rpcRequest, result any, err *apiError) []byte {
	var v any
	switch {
	case err != nil && req.V2:
		v = struct {
			JSONRPC string          `json:"jsonrpc"`
			Error   any             `json:"error"`
			ID      json.RawMessage `json:"id"`
		}{"2.0", struct {
			Code    int      `json:"code"`
			Message string   `json:"message"`
			Data    []string `json:"data"`
		}{1, err.Code, err.Params}, req.ID}
	case err != nil:
		v = struct {
			Result any             `json:"result"`
			Error  []string        `json:"error"`
			ID     json.RawMessage `json:"id"`
		}{nil, append([]string{err.Code}, err.Params...), req.ID}
	case req.V2:
		v = struct {
			JSONRPC string          `json:"jsonrpc"`
			Result  any             `json:"result"`
			ID      json.RawMessage `json:"id"`
		}{"2.0", result, req.ID}
	default:
		v = struct {
			Result any             `json:"result"`
			Error  any             `json:"error"`
			ID     json.RawMessage `json:"id"`
		}{result, nil, req.ID}
	}
	b, merr := json.Marshal(v)
	if merr != nil {
		return encodeResponse(req, nil, internalErr("encode result: %v", merr))
	}
	return b
}

// serveJSONRPC handles POST /jsonrpc.
func (s *Server) serveJSONRPC(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "JSON-RPC is served by POST /jsonrpc", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody+1))
	if err != nil {
		internalHTML(w, "read request: "+err.Error())
		return
	}
	if len(body) > maxRequestBody {
		internalHTML(w, "request body over 32 MiB")
		return
	}
	req, err := decodeRequest(body)
	if err != nil {
		internalHTML(w, err.Error())
		return
	}
	result, aerr := s.dispatch(r.Context(), req)
	w.Header().Set("Content-Type", "application/json")
	w.Write(encodeResponse(req, result, aerr))
}

// internalHTML answers a malformed request as xapi does: HTTP 500 with an
// HTML body.
func internalHTML(w http.ResponseWriter, msg string) {
	w.Header().Set("Content-Type", "text/html")
	w.Header().Set("Connection", "close")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, "<html><body><h1>HTTP 500 internal server error</h1>An unexpected error occurred; please wait a while and try again. If the problem persists, please contact your support representative.<h1> Additional information </h1>%s</body></html>", html.EscapeString(msg))
}

// serveXMLRPC answers POST / with an XML-RPC fault: the lab speaks
// JSON-RPC only.
func (s *Server) serveXMLRPC(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	io.Copy(io.Discard, io.LimitReader(r.Body, maxRequestBody))
	w.Header().Set("Content-Type", "text/xml")
	const msg = "ferry's XenServer lab serves JSON-RPC only: POST /jsonrpc with Content-Type application/json (XML-RPC on / is not served)"
	fmt.Fprintf(w, `<?xml version="1.0"?><methodResponse><fault><value><struct><member><name>faultCode</name><value><int>1</int></value></member><member><name>faultString</name><value><string>%s</string></value></member></struct></value></fault></methodResponse>`, html.EscapeString(msg))
}

// call is one API call being served.
type call struct {
	ctx     context.Context
	name    string // wire name without "Async."
	class   string
	msg     *messageDef
	session string
	args    []any
	task    string // the task of an Async call, or ""
	// progress reports progress of an Async call's task (0..1).
	progress func(float64)
}

type handlerFunc func(c *call) (any, error)

// dispatch finds and runs the handler of a request.
func (s *Server) dispatch(ctx context.Context, req *rpcRequest) (any, *apiError) {
	name := req.Method
	async := false
	if rest, ok := strings.CutPrefix(name, "Async."); ok {
		name, async = rest, true
	}
	cls, msgName, ok := strings.Cut(name, ".")
	ci := s.schema.classes[cls]
	if !ok || ci == nil {
		return nil, apiErr(errMethodUnknown, req.Method)
	}
	md := ci.messages[msgName]
	if md == nil || (async && !asyncAllowed(md)) {
		return nil, apiErr(errMethodUnknown, req.Method)
	}
	nparams := len(req.Params)
	if md.Session {
		nparams--
	}
	want, opt := len(md.Params), optionalParams(cls, msgName)
	if nparams < want-opt || nparams > want+extraParams(cls, msgName) {
		return nil, apiErr(errParamCount, req.Method, fmt.Sprint(want-opt), fmt.Sprint(nparams))
	}
	c := &call{ctx: ctx, name: name, class: cls, msg: md}
	params := req.Params
	if md.Session {
		ref, _ := params[0].(string)
		if !s.validSession(ref) {
			handle := ref
			if _, isStr := params[0].(string); !isStr {
				b, _ := json.Marshal(params[0])
				handle = string(b)
			}
			return nil, apiErr(errSessionInvalid, handle)
		}
		c.session = ref
		params = params[1:]
	}
	params = params[:min(len(params), len(md.Params))]
	for i, p := range md.Params {
		if i >= len(params) {
			c.args = append(c.args, defaultParam(cls, msgName, p))
			continue
		}
		v, err := convert(p.Type, params[i])
		if err != nil {
			return nil, apiErr(errFieldType, p.Name)
		}
		c.args = append(c.args, v)
	}
	h := s.lookupHandler(cls, md)
	if h == nil {
		return nil, apiErr(errNotImplemented, req.Method)
	}
	if async {
		ref, err := s.startTask(c, "Async."+name, h)
		if err != nil {
			return nil, asAPIError(err)
		}
		return ref, nil
	}
	c.progress = func(float64) {}
	res, err := h(c)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return nil, apiErr(errTaskCancelled, "")
		}
		return nil, asAPIError(err)
	}
	return res, nil
}

// asyncAllowed reports whether Async.<class>.<msg> exists: explicit
// messages and the implicit constructors and destructors, but not field
// accessors, as in xapi.
func asyncAllowed(md *messageDef) bool {
	if !md.Implicit {
		return true
	}
	return md.Name == "create" || md.Name == "destroy"
}

// defaultParam is the value xapi's datamodel gives an omitted trailing
// parameter.
func defaultParam(class, msg string, p paramDef) any {
	switch {
	case class == "session" && p.Name == "version":
		return "1.1"
	case strings.HasSuffix(p.Type, " set"):
		return []any{}
	}
	return ""
}
