package app

import (
	"bytes"
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

func TestOrganizeOutputByPatient(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	// Patient is not first: blocks still start with it (the IG's resource
	// block is the header, then the resource it names, then the others).
	types := []string{"Condition", "Encounter", "Patient", "Observation", "Practitioner", "Organization", "Location"}
	for _, level := range []string{"/Group/half/$export", "/Patient/$export"} {
		m := e.exportAt(level, url.Values{"_type": {strings.Join(types, ",")}, "organizeOutputBy": {"Patient"}})
		if m.OutputOrganizedBy != "Patient" {
			t.Errorf("manifest outputOrganizedBy = %q", m.OutputOrganizedBy)
		}
		tt, _ := time.Parse(time.RFC3339Nano, m.TransactionTime)
		q := fhirtest.Query{Types: types, Until: tt}
		if strings.HasPrefix(level, "/Group/") {
			q.GroupID = "half"
		}
		want := e.sim.Expected(q)
		got := map[string]map[string][]byte{}
		var blocks, resources int64
		for _, f := range m.Output {
			if f.Type != "" {
				t.Errorf("organized output lists a type: %+v", f)
			}
			var patient string
			var count int64
			first, afterHeader := true, false
			err := e.client.Download(context.Background(), f.URL, func(line []byte) error {
				var head struct {
					ResourceType, ID string
					Parameter        []struct {
						Name           string
						ValueReference struct{ Reference string } `json:"valueReference"`
					} `json:"parameter"`
				}
				if err := json.Unmarshal(line, &head); err != nil {
					return err
				}
				if head.ResourceType == "Parameters" && len(head.Parameter) == 1 && head.Parameter[0].Name == "header" {
					patient = strings.TrimPrefix(head.Parameter[0].ValueReference.Reference, "Patient/")
					blocks++
					first, afterHeader = false, true
					return nil
				}
				if first {
					t.Fatalf("%s does not start with a header: %s", f.URL, line)
				}
				if afterHeader && (head.ResourceType != "Patient" || head.ID != patient) {
					t.Errorf("the block of Patient/%s starts with %s/%s, not the Patient", patient, head.ResourceType, head.ID)
				}
				afterHeader = false
				count++
				switch {
				case head.ResourceType == "Patient":
					if head.ID != patient {
						t.Errorf("Patient/%s in the block of %s", head.ID, patient)
					}
				case head.ResourceType == "Practitioner" || head.ResourceType == "Organization" || head.ResourceType == "Location":
				default:
					if !bytes.Contains(line, []byte(`"reference":"Patient/`+patient+`"`)) {
						t.Errorf("%s/%s in the block of %s does not reference it", head.ResourceType, head.ID, patient)
					}
				}
				if got[head.ResourceType] == nil {
					got[head.ResourceType] = map[string][]byte{}
				}
				got[head.ResourceType][head.ID] = bytes.Clone(line)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if f.Count != count {
				t.Errorf("%s: manifest count %d, %d resources", f.URL, f.Count, count)
			}
			resources += count
		}
		for _, d := range bulkclient.Diff(want, got, 10) {
			t.Errorf("%s: %s", level, d)
		}
		if blocks == 0 || resources == 0 {
			t.Fatalf("%s: %d blocks, %d resources", level, blocks, resources)
		}
	}
}

func TestAllowPartialManifests(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{
		TypeFaults: map[string]fhirtest.Faults{"Practitioner": {Latency: 1500 * time.Millisecond}},
	}, nil)
	types := []string{"Patient", "Condition", "Practitioner"}
	resp, b := e.do("GET", "/Group/all/$export?allowPartialManifests=true&_type="+strings.Join(types, ","), nil, "")
	if resp.StatusCode != 202 {
		t.Fatalf("kick-off: %d %s", resp.StatusCode, b)
	}
	status := resp.Header.Get("Content-Location")
	var first bulkclient.Manifest
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, b = e.do("GET", status, nil, "")
		if resp.StatusCode == 202 && resp.Header.Get("Content-Type") == "application/json" {
			if err := json.Unmarshal(b, &first); err != nil {
				t.Fatal(err)
			}
			break
		}
		if resp.StatusCode != 202 || time.Now().After(deadline) {
			t.Fatalf("no partial manifest while running: %d %s", resp.StatusCode, b)
		}
		time.Sleep(30 * time.Millisecond)
	}
	if len(first.Output) == 0 || len(first.Link) != 0 {
		t.Fatalf("first partial manifest: %+v", first)
	}
	for _, f := range first.Output {
		if f.Type == "Practitioner" {
			t.Fatalf("a file of an unfinished type is listed: %+v", f)
		}
	}
	// Listed files can be downloaded while the export runs.
	if resp, _ := e.do("GET", first.Output[0].URL, nil, ""); resp.StatusCode != 200 {
		t.Fatalf("download of a listed file while running: %d", resp.StatusCode)
	}
	final, err := e.client.Wait(context.Background(), status)
	if err != nil {
		t.Fatal(err)
	}
	// Page 0 never changes, except for the link to the next page.
	if len(final.Output) != len(first.Output) || final.Output[0] != first.Output[0] || len(final.Link) != 1 || final.Link[0].Relation != "next" {
		t.Fatalf("page 0 changed: %+v then %+v", first, *final)
	}
	e.verify(e.allPages(final), fhirtest.Query{GroupID: "all", Types: types})
}
