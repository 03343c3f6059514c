package blobs_test

import (
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/blobs"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/blobs/blobstest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

func TestSuite(t *testing.T) {
	blobstest.Run(t, func(t *testing.T) exporter.Blobs {
		d, err := blobs.NewDir(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return d
	}, blobstest.Options{})
}
