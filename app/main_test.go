package app

import (
	"flag"
	"os"
	"strconv"
	"testing"
)

// minParallel is how many of this package's tests run at once when
// -parallel is not given. The tests spend much of their time waiting on
// loopback HTTP, simulated upstream latency and status polling, so the
// default (GOMAXPROCS, 2 on a small CI machine) leaves the CPUs idle. More
// than 4 gains little on 2 cores, and every test holds its upstream's
// data several times over under -race (6 at once peaked at 7 GB).
const minParallel = 4

func TestMain(m *testing.M) {
	flag.Parse()
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if p := flag.Lookup("test.parallel"); !given && p != nil {
		if n, err := strconv.Atoi(p.Value.String()); err == nil && n < minParallel {
			_ = p.Value.Set(strconv.Itoa(minParallel))
		}
	}
	os.Exit(m.Run())
}
