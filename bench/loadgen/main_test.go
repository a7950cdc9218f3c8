package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Answers recorded in the order they came back, not the order they were sent: the timeline is in send order.
func TestTimelineIsWrittenInSendOrder(t *testing.T) {
	start := time.Now()
	rec := &recorder{statuses: map[int]int{}}
	rec.add(200, start.Add(30*time.Millisecond), 5*time.Millisecond, nil)
	rec.add(200, start.Add(10*time.Millisecond), 40*time.Millisecond, nil)
	rec.add(0, start.Add(15*time.Millisecond), 0, os.ErrDeadlineExceeded) // failed: no answer, no line
	rec.add(503, start.Add(20*time.Millisecond), 2*time.Millisecond, nil)
	path := filepath.Join(t.TempDir(), "timeline")
	if err := rec.writeTimeline(path, start); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := "10000 40000\n20000 2000\n30000 5000\n"
	if string(got) != want {
		t.Fatalf("timeline %q, want %q", got, want)
	}
}

// The rank is rounded, as bench/tail.py's p99 rounds it: 0.99 * 150 = 148.5 is the 149th of 150.
func TestPercentileRoundsItsRank(t *testing.T) {
	sorted := make([]time.Duration, 150)
	for i := range sorted {
		sorted[i] = time.Duration(i) * time.Millisecond
	}
	if got := percentile(sorted, 0.99); got != 148 {
		t.Fatalf("p99 of 0..149 ms: %v ms, want 148", got)
	}
}
