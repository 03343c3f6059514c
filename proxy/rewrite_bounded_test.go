package proxy

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
)

func TestReplaceBounded(t *testing.T) {
	old, new := []byte("http://h/fhir"), []byte("https://p/api")
	for in, want := range map[string]string{
		`{"url":"http://h/fhir"}`:             `{"url":"https://p/api"}`,
		`{"url":"http://h/fhir/Patient/1"}`:   `{"url":"https://p/api/Patient/1"}`,
		`{"url":"http://h/fhir?_getpages=x"}`: `{"url":"https://p/api?_getpages=x"}`,
		`{"url":"http://h/fhir2/Patient/1"}`:  `{"url":"http://h/fhir2/Patient/1"}`,
		`{"url":"http://h/fhir.old/x"}`:       `{"url":"http://h/fhir.old/x"}`,
		`http://h/fhir`:                       `https://p/api`,
		`http://h/fhirhttp://h/fhir/`:         `http://h/fhirhttps://p/api/`,
		`a http://h/fhir-b http://h/fhir#c`:   `a http://h/fhir-b https://p/api#c`,
	} {
		if got := string(replaceBounded([]byte(in), old, new)); got != want {
			t.Errorf("replaceBounded(%q) = %q, want %q", in, got, want)
		}
	}
	r := newBaseRewriter("http://h/fhir", "https://p/api")
	if got := r.String("http://h/fhir2/Patient/1/_history/1"); got != "http://h/fhir2/Patient/1/_history/1" {
		t.Errorf("header of another base rewritten: %s", got)
	}
	if got := r.String("http://h/fhir/Patient/1/_history/1"); got != "https://p/api/Patient/1/_history/1" {
		t.Errorf("Location not rewritten: %s", got)
	}
}

// TestBoundedReplacingReaderRandom compares the streaming bounded replacer
// with replaceBounded over random inputs and random read sizes.
func TestBoundedReplacingReaderRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	old, new := []byte("ab/c"), []byte("XYZ")
	alphabet := []byte("ab/c\"-2 ")
	for n := 0; n < 3000; n++ {
		in := make([]byte, rng.IntN(60))
		for i := range in {
			in[i] = alphabet[rng.IntN(len(alphabet))]
		}
		want := replaceBounded(in, old, new)
		got, err := io.ReadAll(NewBoundedReplacingReader(&randomChunks{data: in, rng: rng}, old, new))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("input %q: got %q, want %q (%v)", in, got, want, err)
		}
	}
}

// randomChunks returns its data in random small pieces.
type randomChunks struct {
	data []byte
	rng  *rand.Rand
}

func (c *randomChunks) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), 1+c.rng.IntN(5), len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}
