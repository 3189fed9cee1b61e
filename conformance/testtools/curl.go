package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// curl's exit statuses that the tests can see.
const (
	curlOK          = 0
	curlUsage       = 2
	curlResolve     = 6
	curlConnect     = 7
	curlWriteError  = 23
	curlTimeout     = 28
	curlRecvFailure = 56
)

type curlOptions struct {
	url            string
	silent         bool
	include        bool   // -i: the status line and headers before the body
	output         string // -o: the body's file; empty: stdout
	writeOut       string // -w: printed after the transfer
	connectTimeout time.Duration
	maxTime        time.Duration
	iface          string // --interface: the local address to send from
}

func parseCurl(args []string) (curlOptions, error) {
	var o curlOptions
	seconds := func(flag, v string) (time.Duration, error) {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 {
			return 0, fmt.Errorf("%s: bad number of seconds %q", flag, v)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		value := func() (string, error) {
			if i+1 >= len(args) {
				return "", fmt.Errorf("option %s: needs a value", a)
			}
			i++
			return args[i], nil
		}
		var err error
		var v string
		switch {
		case a == "--silent":
			o.silent = true
		case a == "--include":
			o.include = true
		case a == "--globoff", a == "--disable":
		case a == "-o" || a == "--output":
			o.output, err = value()
		case a == "-w" || a == "--write-out":
			o.writeOut, err = value()
		case a == "--connect-timeout":
			if v, err = value(); err == nil {
				o.connectTimeout, err = seconds(a, v)
			}
		case a == "-m" || a == "--max-time":
			if v, err = value(); err == nil {
				o.maxTime, err = seconds(a, v)
			}
		case a == "--interface":
			o.iface, err = value()
		case strings.HasPrefix(a, "--"):
			err = fmt.Errorf("option %s: not supported here", a)
		case strings.HasPrefix(a, "-") && len(a) > 1:
			// Bundled single-letter flags without values: -sq, -gqs, -i.
			for _, c := range a[1:] {
				switch c {
				case 's':
					o.silent = true
				case 'q', 'g':
				case 'i':
					o.include = true
				default:
					err = fmt.Errorf("option -%c: not supported here", c)
				}
			}
		default:
			if o.url != "" {
				err = fmt.Errorf("one URL only (have %q, then %q)", o.url, a)
			}
			o.url = a
		}
		if err != nil {
			return o, err
		}
	}
	if o.url == "" {
		return o, errors.New("no URL")
	}
	if !strings.Contains(o.url, "://") {
		o.url = "http://" + o.url
	}
	if !strings.HasPrefix(o.url, "http://") {
		return o, fmt.Errorf("URL %s: only http:// here", o.url)
	}
	return o, nil
}

func curl(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	o, err := parseCurl(args)
	if err != nil {
		fmt.Fprintf(stderr, "curl: %v\n", err)
		return curlUsage
	}
	code, status := curlFetch(o, stdout)
	if code != curlOK && !o.silent {
		fmt.Fprintf(stderr, "curl: (%d) %v\n", code, status.err)
	}
	if o.writeOut != "" {
		fmt.Fprint(stdout, expandWriteOut(o.writeOut, status.httpCode))
	}
	return code
}

type curlStatus struct {
	httpCode int
	err      error
}

func curlFetch(o curlOptions, stdout io.Writer) (int, curlStatus) {
	dialer := &net.Dialer{Timeout: o.connectTimeout}
	if o.iface != "" {
		ip := net.ParseIP(o.iface)
		if ip == nil {
			return curlConnect, curlStatus{err: fmt.Errorf("--interface %s: want an IP address", o.iface)}
		}
		dialer.LocalAddr = &net.TCPAddr{IP: ip}
	}
	client := &http.Client{
		Transport: &http.Transport{
			DialContext:        dialer.DialContext,
			DisableKeepAlives:  true,
			DisableCompression: true,
		},
		Timeout: o.maxTime,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // curl follows no redirect without -L
		},
	}
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, o.url, nil)
	if err != nil {
		return curlUsage, curlStatus{err: err}
	}
	req.Header.Set("User-Agent", "curl/8 (moat testtools)")
	req.Header.Set("Accept", "*/*")
	resp, err := client.Do(req)
	if err != nil {
		return curlErrorCode(err), curlStatus{err: err}
	}
	defer resp.Body.Close()
	st := curlStatus{httpCode: resp.StatusCode}
	body := stdout
	if o.output != "" && o.output != "-" {
		f, err := os.Create(o.output)
		if err != nil {
			st.err = err
			return curlWriteError, st
		}
		defer f.Close()
		body = f
	}
	if o.include {
		fmt.Fprintf(body, "%s %s\r\n", resp.Proto, resp.Status)
		resp.Header.Write(body)
		fmt.Fprint(body, "\r\n")
	}
	if _, err := io.Copy(body, resp.Body); err != nil {
		st.err = err
		return curlErrorCode(err), st
	}
	return curlOK, st
}

// curlErrorCode is curl's exit status for a failed transfer.
func curlErrorCode(err error) int {
	var dnsErr *net.DNSError
	var opErr *net.OpError
	var netErr net.Error
	switch {
	case errors.As(err, &dnsErr):
		return curlResolve
	case errors.As(err, &netErr) && netErr.Timeout():
		return curlTimeout
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return curlConnect
	default:
		return curlRecvFailure
	}
}

// expandWriteOut is -w's text with %{http_code} (000 when no response came) and \n, \r, \t.
func expandWriteOut(format string, httpCode int) string {
	r := strings.NewReplacer(`%{http_code}`, fmt.Sprintf("%03d", httpCode),
		`%{response_code}`, fmt.Sprintf("%03d", httpCode), `\n`, "\n", `\r`, "\r", `\t`, "\t")
	return r.Replace(format)
}
