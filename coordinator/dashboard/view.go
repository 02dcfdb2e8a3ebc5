package dashboard

import (
	"fmt"
	"html/template"
	"net/url"
	"strconv"
	"strings"
	"time"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// parseTemplates parses each page template together with the layout.
func parseTemplates() (map[string]*template.Template, error) {
	funcs := template.FuncMap{"jobKeyID": jobKeyID}
	out := map[string]*template.Template{}
	for _, name := range []string{"history", "build", "agents", "queue", "cluster", "login", "error"} {
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, err
		}
		out[name] = t
	}
	return out, nil
}

// jobKeyID is the HTML id of a step's elements (keys are identifiers, but
// the id must stay valid whatever they hold): other runes become
// ".HEX." (a key holds no "." unescaped, so two keys never share an id).
func jobKeyID(key string) string {
	var b strings.Builder
	for _, r := range key {
		if r < 128 && (r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			b.WriteRune(r)
		} else {
			fmt.Fprintf(&b, ".%x.", r)
		}
	}
	return b.String()
}

func enumName(s, prefix string) string { return strings.ToLower(strings.TrimPrefix(s, prefix)) }

func buildState(s kilnv1.BuildState) string { return enumName(s.String(), "BUILD_STATE_") }

func jobState(s kilnv1.JobState) string { return enumName(s.String(), "JOB_STATE_") }

func waitReason(r *kilnv1.WaitReason) string {
	if r == nil {
		return ""
	}
	return r.GetMessage()
}

func finished(s kilnv1.BuildState) bool {
	switch s {
	case kilnv1.BuildState_BUILD_STATE_PASSED, kilnv1.BuildState_BUILD_STATE_FAILED, kilnv1.BuildState_BUILD_STATE_CANCELED:
		return true
	}
	return false
}

// span is the duration between two Unix-millisecond times; an unfinished
// span runs until now, and one that has not started is empty.
func span(startMs, endMs int64, now time.Time) string {
	if startMs == 0 {
		return ""
	}
	end := now
	if endMs != 0 {
		end = time.UnixMilli(endMs)
	}
	return dur(end.Sub(time.UnixMilli(startMs)))
}

func dur(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	case d < time.Minute:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
	default:
		return d.Truncate(time.Second).String()
	}
}

// when formats a Unix-millisecond time in UTC ("" for 0).
func when(ms int64) string {
	if ms == 0 {
		return ""
	}
	return time.UnixMilli(ms).UTC().Format("2006-01-02 15:04:05Z")
}

func short(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func itoa(n int) string        { return strconv.Itoa(n) }
func u64(n uint64) string      { return strconv.FormatUint(n, 10) }
func urlQuery(s string) string { return url.QueryEscape(s) }

func bytesHuman(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
