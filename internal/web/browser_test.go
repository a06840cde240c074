package web_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ferry-project/ferry/internal/api"
	"github.com/ferry-project/ferry/internal/auth"
	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/formats"
	"github.com/ferry-project/ferry/internal/disk/synth"
	"github.com/ferry-project/ferry/internal/job"
	"github.com/ferry-project/ferry/internal/lab/xenlab"
	"github.com/ferry-project/ferry/internal/pricing"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/provider/xen"
	"github.com/ferry-project/ferry/internal/service"
	"github.com/ferry-project/ferry/internal/site"
	"github.com/ferry-project/ferry/internal/store"
)

// controlPlane is ferry serve in-process: SQLite in a temporary
// directory, job workers, the API and the UI on a loopback port.
type controlPlane struct {
	url    string
	images string
	tokens map[auth.Role]string
}

func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	ctx := t.Context()
	dir := t.TempDir()
	c := &controlPlane{images: filepath.Join(dir, "images"), tokens: map[auth.Role]string{}}
	if err := os.MkdirAll(c.images, 0o755); err != nil {
		t.Fatal(err)
	}
	loc := store.Location{Dialect: store.SQLite, Path: filepath.Join(dir, "ferry.db")}
	st, err := store.Open(ctx, loc, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := job.NewRegistry()
	service.RegisterJobKinds(reg, service.NewImages(formats.Registry(), formats.Archives(), nil), c.images, nil)
	jm, err := job.Open(ctx, loc, st, reg, &job.Options{Work: true, SingleNode: true, PollInterval: 20 * time.Millisecond,
		LeaseTTL: time.Second, ProgressInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := jm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	sites := site.NewManager(st, site.Kinds(), site.NewSealer(site.Key{7}), &site.Options{Prices: pricing.Default()})
	cp := &service.ControlPlane{Store: st, Sites: sites, Jobs: jm}
	srv := httptest.NewServer(api.New(cp, &api.Options{Version: "ui-test", EventPoll: 50 * time.Millisecond}).Handler())
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		jm.Stop(context.Background())
		sites.Close()
		st.Close()
	})
	for _, r := range auth.Roles {
		tok, err := cp.CreateToken(ctx, "ui-"+string(r), r)
		if err != nil {
			t.Fatal(err)
		}
		c.tokens[r] = tok.Secret
	}
	c.url = srv.URL
	return c
}

// startXenPool starts a lab XenServer pool holding one VM, web-1.
func startXenPool(t *testing.T) string {
	t.Helper()
	srv, err := xenlab.New(t.Context(), xenlab.Options{Dir: t.TempDir(), Users: map[string]string{"root": "s3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { hs.Close(); srv.Close() })
	p, err := xen.Open(t.Context(), xen.Config{URL: hs.URL, User: "root", Password: "s3cret"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	img := synth.Image{P: synth.MakePattern("root", 8<<20, 0.3, 1)}
	if _, err := p.ImportVM(t.Context(), core.VMSpec{Name: "web-1", CPUs: 2, MemoryBytes: 1 << 30,
		Disks: []core.DiskSpec{{Name: "root", Size: img.Size(), Bootable: true}}}, []disk.Image{img}, &provider.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	return hs.URL
}

const chromiumPath = "/usr/bin/chromium"

// browser starts headless Chromium with a fresh profile and nothing that
// reaches out to the network.
func browser(t *testing.T) context.Context {
	t.Helper()
	path := chromiumPath
	if _, err := os.Stat(path); err != nil {
		if p, err := exec.LookPath("chromium"); err == nil {
			path = p
		} else if os.Getenv("FERRY_REQUIRE_TOOLS") == "1" {
			t.Fatalf("chromium not found (FERRY_REQUIRE_TOOLS=1): install the Debian package chromium")
		} else {
			t.Skip("chromium not installed (apt-get install chromium); FERRY_REQUIRE_TOOLS=1 makes this a failure")
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	actx, acancel := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.WindowSize(1280, 860),
	)
	t.Cleanup(acancel)
	bctx, bcancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(bcancel)
	return bctx
}

// ui drives one browser tab.
type ui struct {
	t    *testing.T
	ctx  context.Context
	base string   // the control plane's URL
	shot []string // screenshot directories
	n    int
}

func (u *ui) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	u.t.Helper()
	if err := chromedp.Do(u.ctx, steps...); err != nil {
		u.t.Fatalf("%s: %v\npage: %s", what, err, u.page())
	}
}

// wait polls a JavaScript predicate until it holds.
func (u *ui) wait(what, expr string) {
	u.t.Helper()
	if _, err := chromedp.Run(u.ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(25*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		u.t.Fatalf("waiting for %s (%s): %v\npage: %s", what, expr, err, u.page())
	}
}

// page is the visible text of the page, for failure messages.
func (u *ui) page() string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(u.ctx), 2*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.hash + "\n" + document.body.innerText`))
	if err != nil {
		return "(unreadable: " + err.Error() + ")"
	}
	return s
}

func (u *ui) screenshot(name string) {
	u.t.Helper()
	b, err := chromedp.Run(u.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		u.t.Fatalf("screenshot %s: %v", name, err)
	}
	u.n++
	for _, d := range u.shot {
		p := filepath.Join(d, fmt.Sprintf("%02d-%s.png", u.n, name))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			u.t.Fatal(err)
		}
		u.t.Logf("screenshot %s", p)
	}
}

// clear empties an input (SetValue refuses the empty string).
func clear(id string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`document.getElementById(%q).value = ""`, id))
}

func (u *ui) signIn(token string) {
	u.t.Helper()
	u.do("sign in",
		chromedp.Navigate("about:blank"), // leave the app so the next load starts clean
	)
	u.do("open sign-in", chromedp.Navigate(u.base+"/#/signin"), chromedp.WaitVisible(chromedp.ID("token")))
	u.do("type token", chromedp.SendKeys(chromedp.ID("token"), token), chromedp.Click(chromedp.ID("signin-submit")))
	u.wait("the sites page", `location.hash === "#/sites" && !document.getElementById("nav").hidden && document.getElementById("sites-table") !== null`)
}

// TestBrowser walks the UI in headless Chromium against an in-process
// control plane and a lab XenServer pool: sign in, add the pool as a xen
// site through the form, find its VM, convert an image from the Images
// page and watch the job reach succeeded at 100%, read the audit log; then
// check that a viewer sees no admin controls and a bad token lands on the
// sign-in page.
func TestBrowser(t *testing.T) {
	ctx := browser(t)
	start := time.Now()
	cp := startControlPlane(t)
	pool := startXenPool(t)
	src := filepath.Join(cp.images, "src.raw")
	if err := os.WriteFile(src, bytes.Repeat([]byte("ferry ui!"), 4<<20/9), 0o644); err != nil {
		t.Fatal(err)
	}
	u := &ui{t: t, ctx: ctx, base: cp.url, shot: []string{t.TempDir()}}
	if d := os.Getenv("FERRY_UI_SCREENSHOTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		u.shot = append(u.shot, d)
	}

	// Sign in.
	u.do("open the UI", chromedp.Navigate(cp.url+"/"), chromedp.WaitVisible(chromedp.ID("token")))
	u.wait("the sign-in page", `location.hash === "#/signin" && document.getElementById("nav").hidden`)
	u.do("type a wrong token", chromedp.SendKeys(chromedp.ID("token"), "ferry_"+strings.Repeat("0", 48)), chromedp.Click(chromedp.ID("signin-submit")))
	u.wait("the rejection", `document.querySelector("#page-signin .notice.error") !== null`)
	u.do("clear", clear("token"))
	u.screenshot("signin")
	u.do("type the admin token", chromedp.SendKeys(chromedp.ID("token"), cp.tokens[auth.Admin]), chromedp.Click(chromedp.ID("signin-submit")))
	u.wait("the sites page", `location.hash === "#/sites" && document.getElementById("sites-table") !== null && document.getElementById("site-form") !== null`)
	u.wait("the principal in the top bar", `document.getElementById("who").textContent.includes("admin")`)

	// Add the lab pool as a xen site through the form.
	u.do("fill the site form",
		chromedp.SetValue(chromedp.ID("site-name"), "lab"),
		chromedp.SetValue(chromedp.ID("site-kind"), "xen"),
		chromedp.SetValue(chromedp.ID("site-url"), pool),
		chromedp.SetValue(chromedp.ID("site-user"), "root"),
		chromedp.SetValue(chromedp.ID("site-password"), "s3cret"),
		chromedp.Click(chromedp.ID("site-add")))
	u.wait("the added site, healthy, with its VM", `(() => {
		const r = document.querySelector('#sites-table tr[data-site="lab"]');
		return r && r.querySelector('[data-status="ok"]') && r.textContent.includes("xen") && /\b1\b/.test(r.children[4].textContent);
	})()`)
	u.wait("the add notice", `document.querySelector("#sites-msg .notice.ok")?.textContent.includes("1 VMs")`)
	u.do("test the site", chromedp.Click(chromedp.CSS(`tr[data-site="lab"] button[data-action="test"]`)))
	u.wait("the test result", `document.querySelector("#sites-msg .notice.ok")?.textContent.includes("reachable")`)
	u.screenshot("sites")

	// The VM in the unified inventory.
	u.do("open VMs", chromedp.Click(chromedp.CSS(`#nav a[data-page="vms"]`)))
	u.wait("web-1 in the inventory", `(() => {
		const r = document.querySelector('#vms-table tr[data-vm="web-1"]');
		return r && r.textContent.includes("lab") && r.textContent.includes("1 GiB") && r.children[3].textContent === "2";
	})()`)
	u.do("filter", chromedp.SendKeys(chromedp.ID("vm-filter"), "nomatch"))
	u.wait("the filter to hide it", `document.querySelector('#vms-table tr[data-vm="web-1"]') === null`)
	u.do("clear the filter", clear("vm-filter"), chromedp.SendKeys(chromedp.ID("vm-filter"), "web"))
	u.do("refresh", chromedp.Click(chromedp.ID("vm-refresh")))
	u.wait("web-1 after refresh", `document.querySelector('#vms-table tr[data-vm="web-1"]') !== null && !document.getElementById("vm-refresh").disabled`)
	u.screenshot("vms")

	// Convert an image from the Images page and follow the job.
	u.do("open Images", chromedp.Click(chromedp.CSS(`#nav a[data-page="images"]`)), chromedp.WaitVisible(chromedp.ID("convert-form")))
	u.do("fill the conversion",
		chromedp.SetValue(chromedp.ID("conv-src"), "src.raw"),
		chromedp.SetValue(chromedp.ID("conv-dst"), "out.qcow2"),
		chromedp.SetValue(chromedp.ID("conv-format"), "qcow2"))
	u.screenshot("images")
	u.do("start it", chromedp.Click(chromedp.ID("conv-submit")))
	u.wait("the job page", `location.hash.startsWith("#/jobs/") && document.getElementById("job-state") !== null`)
	u.wait("the job to succeed at 100%", `document.querySelector('#job-state[data-state="succeeded"]') !== null &&
		document.querySelector('#job-progress [role="progressbar"]').getAttribute("aria-valuenow") === "100"`)
	u.wait("the finished event from the stream", `document.querySelector('#job-events tr[data-event="finished"]') !== null &&
		document.querySelector('#job-events tr[data-event="queued"]') !== null`)
	u.screenshot("job")
	if _, err := os.Stat(filepath.Join(cp.images, "out.qcow2")); err != nil {
		t.Errorf("conversion output: %v", err)
	}

	u.do("open Jobs", chromedp.Click(chromedp.CSS(`#nav a[data-page="jobs"]`)))
	u.wait("the job in the list", `document.querySelector('#jobs-table tr[data-job] [data-status="succeeded"]') !== null`)
	u.screenshot("jobs")

	u.do("open Audit", chromedp.Click(chromedp.CSS(`#nav a[data-page="audit"]`)))
	u.wait("the verified chain, newest first", `(() => {
		const v = document.getElementById("audit-verify");
		const rows = [...document.querySelectorAll("#audit-table tbody tr")].map(r => +r.children[0].textContent);
		return v && v.dataset.ok === "true" && rows.length >= 3 && rows[0] > rows[rows.length - 1] &&
			document.getElementById("audit-table").textContent.includes("POST /api/v1/images/convert");
	})()`)
	u.screenshot("audit")

	// A viewer sees the sites but no controls it cannot use.
	u.signIn(cp.tokens[auth.Viewer])
	u.wait("the viewer's sites page", `document.querySelector('#sites-table tr[data-site="lab"]') !== null &&
		document.getElementById("site-form") === null && document.querySelector('#sites-table button') === null`)
	u.do("open Images as viewer", chromedp.Click(chromedp.CSS(`#nav a[data-page="images"]`)))
	u.wait("no conversion form", `location.hash === "#/images" && document.querySelector("main .notice") !== null && document.getElementById("convert-form") === null`)

	// A token that stops working (401) sends the user back to sign in.
	u.do("break the token", chromedp.Evaluate[chromedp.Void](`sessionStorage.setItem("ferry.token", "ferry_`+strings.Repeat("1", 48)+`")`))
	u.do("open VMs", chromedp.Click(chromedp.CSS(`#nav a[data-page="vms"]`)))
	u.wait("the sign-in page after a 401", `location.hash === "#/signin" && document.getElementById("token") !== null && sessionStorage.getItem("ferry.token") === null`)
	t.Logf("browser walk took %v", time.Since(start).Round(time.Millisecond))
}
