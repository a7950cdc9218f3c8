// Command loadgen sends signed MyTPE webhooks to one URL, each with a unique delivery id, and
// reports throughput and latency as one JSON object on stdout.
//
// Two modes, the same requests in both:
//   - closed: -conns keep-alive connections, each sending its next request when the last is
//     answered (saturation throughput);
//   - open: requests scheduled at -rate per second whatever the answers do, latency measured from
//     each request's scheduled time (so a stall is counted, not hidden: no coordinated omission).
//
// Bodies come from -template files in which {{DELIVERY}} and {{ENTITY}} are replaced per request;
// each request is signed as MyTPE does: sha256=hex(HMAC-SHA256(secret, "<unix ts>.<body>")).
// With -timeline, each answered request of the measured window is also written to that file as one
// line, "<µs from the window's start to its send (open: its scheduled send)> <latency µs>", in order
// of send: where in time the slow answers were.
// Standard library only; bounded by -duration (and -max requests).
package main

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type repeated []string

func (t *repeated) String() string     { return strings.Join(*t, ",") }
func (t *repeated) Set(v string) error { *t = append(*t, v); return nil }

type config struct {
	targets   []*url.URL
	secret    []byte
	mode      string
	conns     int
	rate      float64
	duration  time.Duration
	warmup    time.Duration
	max       int64
	runID     string
	templates [][]byte
	timeline  string
}

type result struct {
	Mode       string         `json:"mode"`
	Conns      int            `json:"conns"`
	Rate       float64        `json:"rate,omitempty"`
	Sent       int64          `json:"sent"`
	OK         int64          `json:"ok"`
	Statuses   map[string]int `json:"statuses"`
	IOErrors   int64          `json:"io_errors"`
	Seconds    float64        `json:"seconds"`
	RPS        float64        `json:"rps"`
	P50        float64        `json:"p50_ms"`
	P90        float64        `json:"p90_ms"`
	P99        float64        `json:"p99_ms"`
	P999       float64        `json:"p999_ms"`
	Max        float64        `json:"max_ms"`
	Late       int64          `json:"late"`
	FirstError string         `json:"first_error,omitempty"`
}

// recorder collects the latencies and statuses of the measured window (after the warm-up).
type recorder struct {
	mu        sync.Mutex
	latencies []time.Duration
	sentAt    []time.Time // each latency's send (open: scheduled send) time, in the same order
	statuses  map[int]int
	ioErrors  int64
	firstErr  string
}

func (r *recorder) add(status int, sent time.Time, latency time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.ioErrors++
		if r.firstErr == "" {
			r.firstErr = err.Error()
		}
		return
	}
	r.statuses[status]++
	r.latencies = append(r.latencies, latency)
	r.sentAt = append(r.sentAt, sent)
}

// writeTimeline writes each answered request as "<µs from start to its send> <latency µs>", in order of send.
func (r *recorder) writeTimeline(path string, start time.Time) error {
	order := make([]int, len(r.latencies))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return r.sentAt[order[a]].Before(r.sentAt[order[b]]) })
	var out bytes.Buffer
	for _, i := range order {
		fmt.Fprintf(&out, "%d %d\n", r.sentAt[i].Sub(start).Microseconds(), r.latencies[i].Microseconds())
	}
	return os.WriteFile(path, out.Bytes(), 0o644)
}

// client is one keep-alive HTTP/1.1 connection, written and read by hand: the generator must cost
// far less per request than the servers it measures.
type client struct {
	cfg    *config
	target *url.URL
	conn   net.Conn
	rd     *bufio.Reader
	buf    bytes.Buffer
}

func (c *client) dial() error {
	conn, err := net.DialTimeout("tcp", c.target.Host, 5*time.Second)
	if err != nil {
		return err
	}
	c.conn = conn
	c.rd = bufio.NewReaderSize(conn, 16384)
	return nil
}

func (c *client) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

func (c *client) request(n int64) []byte {
	tpl := c.cfg.templates[n%int64(len(c.cfg.templates))]
	delivery := fmt.Sprintf("%s-%d", c.cfg.runID, n)
	entity := fmt.Sprintf("%08x-0000-4000-8000-%012x", n%4096, n)
	body := bytes.Replace(tpl, []byte("{{DELIVERY}}"), []byte(delivery), 1)
	body = bytes.Replace(body, []byte("{{ENTITY}}"), []byte(entity), 1)
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	mac := hmac.New(sha256.New, c.cfg.secret)
	mac.Write([]byte(ts))
	mac.Write([]byte("."))
	mac.Write(body)
	c.buf.Reset()
	fmt.Fprintf(&c.buf, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n", c.target.RequestURI(), c.target.Host)
	fmt.Fprintf(&c.buf, "Content-Length: %d\r\nX-MytpePay-Timestamp: %s\r\nX-MytpePay-Delivery-Id: %s\r\n", len(body), ts, delivery)
	fmt.Fprintf(&c.buf, "X-MytpePay-Signature: sha256=%s\r\n\r\n", hex.EncodeToString(mac.Sum(nil)))
	c.buf.Write(body)
	return c.buf.Bytes()
}

// do sends request n and reads the whole answer; it returns the HTTP status.
func (c *client) do(n int64) (int, error) {
	if c.conn == nil {
		if err := c.dial(); err != nil {
			return 0, err
		}
	}
	if _, err := c.conn.Write(c.request(n)); err != nil {
		c.close()
		return 0, err
	}
	status, err := c.readResponse()
	if err != nil {
		c.close()
	}
	return status, err
}

func (c *client) readResponse() (int, error) {
	line, err := c.rd.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	fields := bytes.Fields(line)
	if len(fields) < 2 {
		return 0, fmt.Errorf("bad status line %q", line)
	}
	status, err := strconv.Atoi(string(fields[1]))
	if err != nil {
		return 0, err
	}
	length, closing := -1, false
	for {
		h, err := c.rd.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(h) <= 2 {
			break
		}
		name, value, _ := bytes.Cut(h, []byte(":"))
		value = bytes.TrimSpace(value)
		switch strings.ToLower(string(name)) {
		case "content-length":
			length, _ = strconv.Atoi(string(value))
		case "connection":
			closing = bytes.EqualFold(value, []byte("close"))
		case "transfer-encoding":
			return 0, errors.New("chunked answers are not expected")
		}
	}
	if length < 0 {
		return 0, errors.New("answer without content-length")
	}
	if _, err := c.rd.Discard(length); err != nil {
		return 0, err
	}
	if closing {
		c.close()
	}
	return status, nil
}

// startClients runs work on cfg.conns goroutines, each with a connection of its own, spread over the
// targets; the returned group is done when every work function has returned.
func startClients(cfg *config, work func(c *client)) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i := 0; i < cfg.conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := &client{cfg: cfg, target: cfg.targets[i%len(cfg.targets)]}
			defer c.close()
			work(c)
		}(i)
	}
	return &wg
}

func closedLoop(cfg *config, rec *recorder, measureFrom, end time.Time) int64 {
	var next atomic.Int64
	startClients(cfg, func(c *client) {
		for {
			n := next.Add(1) - 1
			now := time.Now()
			if now.After(end) || (cfg.max > 0 && n >= cfg.max) {
				return
			}
			status, err := c.do(n)
			if now.After(measureFrom) {
				rec.add(status, now, time.Since(now), err)
			}
			if err != nil {
				time.Sleep(10 * time.Millisecond)
			}
		}
	}).Wait()
	return next.Load()
}

type job struct {
	n       int64
	planned time.Time
}

func openLoop(cfg *config, rec *recorder, measureFrom, end time.Time) (int64, int64) {
	jobs := make(chan job, 1<<16)
	wg := startClients(cfg, func(c *client) {
		for j := range jobs {
			status, err := c.do(j.n)
			if !j.planned.Before(measureFrom) {
				rec.add(status, j.planned, time.Since(j.planned), err)
			}
		}
	})
	interval := time.Duration(float64(time.Second) / cfg.rate)
	start := time.Now()
	var n, late int64
	for {
		planned := start.Add(time.Duration(n) * interval)
		if planned.After(end) || (cfg.max > 0 && n >= cfg.max) {
			break
		}
		if wait := time.Until(planned); wait > 0 {
			time.Sleep(wait)
		}
		select {
		case jobs <- job{n, planned}:
		default: // every connection busy and the queue full: the server is far behind
			late++
		}
		n++
	}
	close(jobs)
	wg.Wait()
	return n, late
}

func percentile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return float64(sorted[i].Microseconds()) / 1000
}

func parse() (*config, error) {
	var tpls, urls repeated
	flag.Var(&urls, "url", "webhook URL, e.g. http://127.0.0.1:8080/webhooks/mytpe (repeatable: connections alternate)")
	secret := flag.String("secret", "", "signing secret (whsec_...)")
	mode := flag.String("mode", "closed", "closed (saturation) or open (fixed rate)")
	conns := flag.Int("conns", 32, "connections")
	rate := flag.Float64("rate", 0, "requests per second (open mode)")
	duration := flag.Duration("duration", 10*time.Second, "measured time, after the warm-up")
	warmup := flag.Duration("warmup", 2*time.Second, "time sent but not measured")
	max := flag.Int64("max", 0, "stop after this many requests (0: no cap)")
	runID := flag.String("run-id", "", "delivery id prefix, unique per run")
	flag.Var(&tpls, "template", "body template file (repeatable)")
	timeline := flag.String("timeline", "", "also write each measured answer's send time and latency to this file")
	flag.Parse()
	if *secret == "" || *runID == "" || len(tpls) == 0 {
		return nil, errors.New("-secret, -run-id and -template are required")
	}
	if *mode == "open" && *rate <= 0 {
		return nil, errors.New("-mode open needs -rate")
	}
	cfg := &config{secret: []byte(*secret), mode: *mode, conns: *conns, rate: *rate,
		duration: *duration, warmup: *warmup, max: *max, runID: *runID, timeline: *timeline}
	for _, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("-url: %q is not an http URL", raw)
		}
		cfg.targets = append(cfg.targets, u)
	}
	if len(cfg.targets) == 0 {
		return nil, errors.New("-url is required")
	}
	for _, path := range tpls {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		cfg.templates = append(cfg.templates, bytes.TrimSpace(data))
	}
	return cfg, nil
}

func main() {
	cfg, err := parse()
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	rec := &recorder{statuses: map[int]int{}}
	measureFrom := time.Now().Add(cfg.warmup)
	end := measureFrom.Add(cfg.duration)
	var sent, late int64
	if cfg.mode == "open" {
		sent, late = openLoop(cfg, rec, measureFrom, end)
	} else {
		sent = closedLoop(cfg, rec, measureFrom, end)
	}
	seconds := time.Since(measureFrom).Seconds()
	if cfg.timeline != "" {
		if err := rec.writeTimeline(cfg.timeline, measureFrom); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
	}
	// Sorted in place for the percentiles: from here on sentAt no longer pairs with latencies.
	sort.Slice(rec.latencies, func(i, j int) bool { return rec.latencies[i] < rec.latencies[j] })
	res := result{Mode: cfg.mode, Conns: cfg.conns, Rate: cfg.rate, Sent: sent, Statuses: map[string]int{},
		IOErrors: rec.ioErrors, Seconds: seconds, Late: late, FirstError: rec.firstErr}
	for status, count := range rec.statuses {
		res.Statuses[strconv.Itoa(status)] = count
		if status >= 200 && status < 300 {
			res.OK += int64(count)
		}
	}
	res.RPS = float64(res.OK) / math.Min(seconds, cfg.duration.Seconds()) // a -max run may end early
	l := rec.latencies
	res.P50, res.P90, res.P99, res.P999 = percentile(l, 0.5), percentile(l, 0.9), percentile(l, 0.99), percentile(l, 0.999)
	if len(l) > 0 {
		res.Max = float64(l[len(l)-1].Microseconds()) / 1000
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}
