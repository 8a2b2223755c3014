// Command kstatus prints the kstatus verdict (Current, InProgress, Failed, ...) of
// one Kubernetes object read as JSON from stdin, as Flux and `kubectl wait`
// (through cli-utils) judge it. Used by tests/e2e_health.rs, built on demand by
// scripts/kstatus.sh. Not part of the operator build.
//
// Output: the status on the first line, its message on the second.
package main

import (
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	// Numbers as int64 where they are integers, as unstructured objects hold them.
	var object map[string]interface{}
	if err := json.Unmarshal(data, &object); err != nil {
		fail("parsing the object: %v", err)
	}
	result, err := status.Compute(&unstructured.Unstructured{Object: object})
	if err != nil {
		fail("computing the status: %v", err)
	}
	fmt.Println(result.Status)
	fmt.Println(result.Message)
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "kstatus: "+format+"\n", args...)
	os.Exit(2)
}
