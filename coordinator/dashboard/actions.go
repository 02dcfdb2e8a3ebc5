package dashboard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// safeNext keeps a post-login redirect on this site (a path, never
// "//host" or a URL).
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	return next
}

// loginPage asks for an API token.
func (d *Dashboard) loginPage(w http.ResponseWriter, r *http.Request) {
	s := d.sessionOf(w, r)
	d.render(w, http.StatusOK, "login", s, "Log in", map[string]any{
		"Next": safeNext(r.URL.Query().Get("next")), "Message": r.URL.Query().Get("msg"),
	})
}

// login checks the token with a call it must be allowed to make as a
// viewer (ListBuilds) and keeps it in an HttpOnly cookie.
func (d *Dashboard) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, MaxFormBytes)
	s := d.sessionOf(w, r)
	next := safeNext(r.PostFormValue("next"))
	again := func(code int, msg string) {
		d.render(w, code, "login", s, "Log in", map[string]any{"Next": next, "Message": msg})
	}
	if !checkCSRF(r) {
		again(http.StatusForbidden, "the form expired (CSRF token mismatch); submit it again")
		return
	}
	tok := strings.TrimSpace(r.PostFormValue("token"))
	switch {
	case tok == "":
		again(http.StatusBadRequest, "token: required (kilnctl token create prints one)")
		return
	case len(tok) > MaxTokenBytes:
		again(http.StatusBadRequest, fmt.Sprintf("token: %d bytes; the limit is %d", len(tok), MaxTokenBytes))
		return
	case strings.ContainsAny(tok, " \t\r\n;,\""):
		again(http.StatusBadRequest, "token: contains spaces or punctuation no token has")
		return
	}
	s.token = tok
	err := d.call(r, s, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		_, err := kilnv1.NewControlServiceClient(cc).ListBuilds(ctx, &kilnv1.ListBuildsRequest{Limit: 1})
		return err
	})
	if err != nil {
		again(httpStatus(err), "token refused: "+status.Convert(err).Message())
		return
	}
	http.SetCookie(w, &http.Cookie{Name: tokenCookie, Value: tok, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// logout drops the token cookie.
func (d *Dashboard) logout(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, MaxFormBytes)
	if !checkCSRF(r) {
		http.Error(w, "CSRF token mismatch", http.StatusForbidden)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: tokenCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// decide approves or rejects a blocked approval step through
// DecideApproval: the leader commits it, and with ACLs the decider is the
// token, the approvers rule applies and the audit log records it.
func (d *Dashboard) decide(w http.ResponseWriter, r *http.Request, s session) {
	r.Body = http.MaxBytesReader(w, r.Body, MaxFormBytes)
	id := r.PathValue("id")
	if !checkCSRF(r) {
		d.render(w, http.StatusForbidden, "error", s, "Error", map[string]any{"What": "approval",
			"Message": "the form expired (CSRF token mismatch); reload the build page and decide again", "Code": 403})
		return
	}
	var approve bool
	switch r.PostFormValue("decision") {
	case "approve":
		approve = true
	case "reject":
	default:
		d.render(w, http.StatusBadRequest, "error", s, "Error", map[string]any{"What": "approval",
			"Message": "decision: must be approve or reject", "Code": 400})
		return
	}
	by := strings.TrimSpace(r.PostFormValue("by"))
	if by == "" {
		// Without ACLs a name is all there is; with them the server
		// replaces it by the token's.
		by = "web@" + hostOnly(r.RemoteAddr)
	}
	req := &kilnv1.DecideApprovalRequest{RequestId: randomHex(16), BuildId: id, Step: r.PostFormValue("step"),
		Approve: approve, By: by, Comment: r.PostFormValue("comment")}
	err := d.call(r, s, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		_, err := kilnv1.NewControlServiceClient(cc).DecideApproval(ctx, req)
		return err
	})
	if err != nil {
		d.fail(w, r, s, "approval of "+req.GetStep(), err)
		return
	}
	d.log.Info("approval decided from the dashboard", zap.String("build", id), zap.String("step", req.GetStep()),
		zap.Bool("approved", approve))
	http.Redirect(w, r, "/builds/"+id, http.StatusSeeOther)
}

func hostOnly(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i > 0 {
		return strings.Trim(addr[:i], "[]")
	}
	return addr
}

// artifact downloads one artifact of a build. The blob must be one of the
// build's artifacts (ListArtifacts, authorized as such), so the link cannot
// fetch other blobs such as source archives.
func (d *Dashboard) artifact(w http.ResponseWriter, r *http.Request, s session) {
	id, sha, p := r.PathValue("id"), r.PathValue("sha"), r.URL.Query().Get("path")
	arts, err := d.listArtifacts(r, s, id)
	if err != nil {
		d.fail(w, r, s, "artifacts of build "+id, err)
		return
	}
	var file *kilnv1.ArtifactFile
	for _, a := range arts {
		if f := a.GetFile(); f.GetSha256() == sha && (p == "" || f.GetPath() == p) {
			file = f
			break
		}
	}
	if file == nil {
		d.fail(w, r, s, "artifact", status.Errorf(codes.NotFound, "build %s has no artifact %s with content %s", id, p, sha))
		return
	}
	ctx, cancel := context.WithCancel(s.callCtx(r.Context()))
	defer cancel()
	var stream kilnv1.BlobService_DownloadClient
	var first *kilnv1.DownloadResponse
	// Only opening the stream goes through the leader-following client: a
	// download is not retried halfway.
	err = d.cfg.Client.Do(ctx, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		var err error
		if stream, err = kilnv1.NewBlobServiceClient(cc).Download(ctx, &kilnv1.DownloadRequest{Sha256: sha}); err != nil {
			return err
		}
		first, err = stream.Recv()
		return err
	})
	if err != nil {
		d.fail(w, r, s, "download "+file.GetPath(), err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", path.Base(file.GetPath())))
	w.Header().Set("Content-Length", strconv.FormatInt(file.GetSize(), 10))
	for msg := first; ; {
		if _, err := w.Write(msg.GetData()); err != nil {
			return // the browser went away
		}
		if msg, err = stream.Recv(); err != nil {
			if !errors.Is(err, io.EOF) {
				d.log.Warn("artifact download broke off", zap.String("build", id), zap.String("sha256", sha), zap.Error(err))
			}
			return
		}
	}
}
