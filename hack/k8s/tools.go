//go:build tools

// Package tools pins the Kubernetes commands that scripts/stack.sh builds:
// kube-apiserver and kubectl always, kubelet, kube-scheduler and
// kube-controller-manager for `stack.sh up --cluster`.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
