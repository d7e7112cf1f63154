// kstatus prints the status that the kstatus library (sigs.k8s.io/cli-utils/pkg/kstatus, what
// Flux, kpt and `kubectl wait` users rely on) computes for one Kubernetes object, read as JSON
// on stdin: one line of JSON, {"status": "Current" | "InProgress" | "Failed" | ..., "message":
// "..."}. The end-to-end tests run it on SmtpRelays read from the real node.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// maxObject bounds what is read: one object, as kubectl prints it.
const maxObject = 4 << 20

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(io.LimitReader(in, maxObject+1))
	if err != nil {
		return err
	}
	if len(data) > maxObject {
		return fmt.Errorf("more than %d bytes on stdin", maxObject)
	}
	var obj unstructured.Unstructured
	if err := obj.UnmarshalJSON(data); err != nil {
		return fmt.Errorf("reading the object: %w", err)
	}
	res, err := status.Compute(&obj)
	if err != nil {
		return fmt.Errorf("computing the status of %s %s: %w", obj.GetKind(), obj.GetName(), err)
	}
	return json.NewEncoder(out).Encode(map[string]string{
		"status":  res.Status.String(),
		"message": res.Message,
	})
}
